"""The gateway's configuration: one YAML file format, validated with clear messages.

Strings may use ``${VAR}`` (required) and ``${VAR:-default}``; interpolation happens on parsed
values, never on YAML text, so an environment value cannot change the file's structure.
Every mistake is reported with its key path and what was expected, all at once.
"""

from __future__ import annotations

import os
import re
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.errors import ConfigError
from providers import provider_class, provider_types
from providers.base import ProviderSettings

# A placeholder that is a whole unquoted value (``key: ${VAR}``, also inside ``{…}`` flow
# mappings, where YAML would otherwise read its braces as structure): quoted before parsing.
_BARE_VALUE = re.compile(
    r"(:[ \t]+)(\$\{[A-Za-z_][A-Za-z0-9_]*(?::-[^}\s,\"']*)?\})(?=[ \t]*(?:[,}\]\n#]|$))"
)
# A database or Redis URL may carry a password, so its value is never echoed either.
_SECRETISH = re.compile(r"key|token|secret|password|credential|(?:^|\.)url$", re.IGNORECASE)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


_M = TypeVar("_M", bound=_Strict)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=4000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    shutdown_timeout: int = Field(
        default=25,
        ge=1,
        description="On SIGTERM, seconds requests in flight may take to finish; those still "
        "running then are cut and recorded as errors (499).",
    )
    drain_delay: float = Field(
        default=0.0,
        ge=0,
        le=300,
        description="On SIGTERM, seconds /health/ready answers 503 while requests are still "
        "served, so load balancers stop sending before the listener closes.",
    )


class AuthConfig(_Strict):
    master_key: SecretStr | None = None
    key_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        le=300,
        description="How long a virtual key lookup is reused; revocations and limit changes "
        "take effect within this time on every replica.",
    )


class LimitsConfig(_Strict):
    """Where rate limits, parallel caps and budgets are counted."""

    backend: Literal["memory", "redis"] = Field(
        default="memory", description="redis: one limit across replicas (needs redis.url)"
    )
    reservation_ttl: float = Field(
        default=900.0,
        gt=0,
        description="Seconds a reservation lives if its request never settles (a dead replica).",
    )
    default_max_output_tokens: int = Field(
        default=4096,
        ge=1,
        description="Output tokens reserved when neither the request nor the catalog caps them.",
    )


PRICE_FIELDS = frozenset({"input", "cached_input", "output", "reasoning", "embedding"})


class PriceConfig(_Strict):
    """USD per 1M tokens, for a deployment with a negotiated price or a model the catalog
    lacks. Numbers or strings, read as exact decimals; an unset field keeps the catalog's."""

    input: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False)
    cached_input: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False)
    output: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False)
    reasoning: Decimal | None = Field(
        default=None, ge=0, allow_inf_nan=False, description="Default: the output price."
    )
    embedding: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _sets_a_price(self) -> PriceConfig:
        if all(getattr(self, name) is None for name in PRICE_FIELDS):
            raise ValueError(f"set at least one of {', '.join(sorted(PRICE_FIELDS))}")
        return self


class PriceEntryConfig(PriceConfig):
    """A price list entry (``prices.<provider type>.<model>``, and the shipped catalog)."""

    aliases: list[str] = Field(default_factory=list, description="Other names it answers to.")
    context_window: int | None = Field(default=None, ge=1)
    max_output_tokens: int | None = Field(default=None, ge=1)
    source: str | None = Field(default=None, description="Where the price was published.")
    checked: str | None = Field(default=None, description="When the price was taken.")
    note: str | None = None

    @field_validator("checked", mode="before")
    @classmethod
    def _date_as_text(cls, value: Any) -> Any:
        # YAML reads an unquoted 2025-08-07 as a date.
        return value.isoformat() if isinstance(value, date) else value


class DeploymentConfig(_Strict):
    provider: str
    model: str | None = None
    deployment: str | None = None  # Azure: deployment name, which is not the model name
    base_model: str | None = None
    weight: float = Field(default=1.0, gt=0)
    region: str | None = None
    rpm: int | None = Field(default=None, ge=1, description="Requests per minute quota.")
    tpm: int | None = Field(default=None, ge=1, description="Tokens per minute quota.")
    price: PriceConfig | None = Field(
        default=None, description="This deployment's own price, e.g. a negotiated one."
    )

    @model_validator(mode="after")
    def _needs_a_name(self) -> DeploymentConfig:
        if not (self.model or self.deployment):
            raise ValueError("a deployment needs 'model' (or 'deployment' for Azure)")
        return self

    @property
    def upstream_name(self) -> str:
        return self.deployment or self.model or ""


Strategy = Literal["weighted", "round-robin", "least-busy", "latency", "cost"]


class RetryConfig(_Strict):
    """How often to try again, and how long to wait in between."""

    attempts_per_deployment: int = Field(default=2, ge=1, le=10)
    attempts_per_request: int = Field(default=5, ge=1, le=30)
    initial_backoff: float = Field(default=0.25, ge=0, description="Seconds; doubles per retry.")
    max_backoff: float = Field(default=8.0, ge=0)
    max_retry_after: float = Field(
        default=10.0,
        ge=0,
        description="An upstream Retry-After longer than this fails over instead of waiting.",
    )


class TimeoutConfig(_Strict):
    """Seconds; connect, first_token and idle default to each provider's own timeouts."""

    connect: float | None = Field(default=None, gt=0)
    first_token: float | None = Field(default=None, gt=0)
    idle: float | None = Field(default=None, gt=0)
    total: float = Field(default=600.0, gt=0, description="All attempts of one request.")


class CircuitConfig(_Strict):
    """When a deployment is taken out of rotation, and when it is tried again."""

    enabled: bool = True
    consecutive_failures: int = Field(default=5, ge=1)
    error_ratio: float = Field(default=0.5, gt=0, le=1)
    min_requests: int = Field(default=20, ge=1, description="Before error_ratio applies.")
    window: float = Field(default=30.0, gt=0, description="Seconds of history for the ratio.")
    cooldown: float = Field(default=30.0, gt=0, description="Seconds open before a probe.")


class RoutingConfig(_Strict):
    """Defaults for every model; a model may override strategy, retries and timeouts."""

    strategy: Strategy = "weighted"
    retries: RetryConfig = Field(default_factory=RetryConfig)
    timeouts: TimeoutConfig = Field(default_factory=TimeoutConfig)
    circuit: CircuitConfig = Field(default_factory=CircuitConfig)
    fallback_on_content_filter: bool = False
    continue_streams: bool = Field(
        default=True,
        description="Continue a cut stream on a fallback that supports assistant prefill.",
    )


class ModelConfig(_Strict):
    deployments: list[DeploymentConfig] = Field(min_length=1)
    fallbacks: list[str] = Field(default_factory=list)
    context_window_fallbacks: list[str] = Field(
        default_factory=list,
        description="Larger-context models tried at once on context_length_exceeded.",
    )
    strategy: Strategy | None = None
    retries: RetryConfig | None = None
    timeouts: TimeoutConfig | None = None


class RedisConfig(_Strict):
    """Shared state for several gateway replicas (circuit breakers; later limits)."""

    url: str = Field(description="e.g. redis://127.0.0.1:6379/0")
    key_prefix: str = "llm-gateway:"


_LEDGER_URL = re.compile(r"^(sqlite(\+aiosqlite)?|postgres|postgresql(\+asyncpg)?)://")


class LedgerConfig(_Strict):
    """The spend ledger: one record per request, written in batches off the request path."""

    enabled: bool = True
    url: str = Field(
        default="sqlite+aiosqlite:///./llm-gateway.db",
        description="sqlite+aiosqlite:///PATH (default: ./llm-gateway.db) or "
        "postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DATABASE",
    )
    batch_size: int = Field(default=100, ge=1, le=10_000, description="Records per write.")
    flush_interval: float = Field(
        default=0.2, gt=0, le=60, description="Seconds a partial batch waits for more records."
    )
    queue_size: int = Field(default=10_000, ge=1, description="Records held before spilling.")
    overflow_size: int = Field(
        default=10_000, ge=0, description="Spill buffer; past it, records are dropped (logged)."
    )
    shutdown_timeout: float = Field(
        default=10.0, gt=0, description="Seconds to write what is held when stopping."
    )
    migrate: bool = Field(default=True, description="Bring the schema up to date at start-up.")

    @field_validator("url")
    @classmethod
    def _supported_database(cls, url: str) -> str:
        if not _LEDGER_URL.match(url):
            raise ValueError(
                "expected sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DATABASE "
                "(sqlite://, postgresql:// and postgres:// are accepted too)"
            )
        return url


class MetricsConfig(_Strict):
    """Prometheus metrics at ``GET /metrics`` (see docs/operations.md)."""

    enabled: bool = True
    require_auth: bool = Field(
        default=False,
        description="Only the master key or an admin key may read /metrics; off by default, "
        "as scrapers usually sit inside the network.",
    )
    per_key: bool = Field(
        default=True,
        description="Label tokens, spend and limit refusals by key and team id; switch off "
        "with very many keys (each adds series per model).",
    )


class LoggingConfig(_Strict):
    """The gateway's own log lines, and its access log (one line per request)."""

    format: Literal["json", "text"] = Field(
        default="json", description="json: one JSON object per line; text: for people."
    )
    level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = Field(
        default=True,
        description="One line per request on the gateway.access logger: who, which model, "
        "status, latency, cost; prompts and answers only for keys with log_content.",
    )


class TracingConfig(_Strict):
    """OpenTelemetry traces with GenAI attributes (needs the ``otel`` extra)."""

    enabled: bool = False
    exporter: Literal["otlp", "console"] = "otlp"
    endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP traces URL (default: $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, "
        "else http://localhost:4318/v1/traces).",
    )
    headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="Sent with each export, e.g. a collector's API key."
    )
    service_name: str = "llm-gateway"
    sample_ratio: float = Field(default=1.0, ge=0, le=1, description="Share of requests traced.")


class AzureSurfaceConfig(_Strict):
    """How Azure OpenAI clients' deployment names map to the gateway's models."""

    deployments: dict[str, str] = Field(
        default_factory=dict,
        description="Azure deployment name (in /openai/deployments/{name}/… or the v1 body's "
        "model) → gateway model; a name not listed means the model of the same name.",
    )


class SurfacesConfig(_Strict):
    """Provider-native APIs served beside the OpenAI one (see gateway/server/native.py)."""

    azure: AzureSurfaceConfig = Field(default_factory=AzureSurfaceConfig)


class UIConfig(_Strict):
    """The web dashboard at ``/ui`` (master key or admin keys only)."""

    enabled: bool = True
    session_hours: float = Field(
        default=12.0, gt=0, le=24 * 30, description="How long a dashboard login lasts."
    )


class GatewayConfig(_Strict):
    """The whole configuration file."""

    server: ServerConfig = Field(default_factory=ServerConfig)
    redis: RedisConfig | None = None
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    ui: UIConfig = Field(default_factory=UIConfig)
    providers: dict[str, ProviderSettings] = Field(default_factory=dict)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    surfaces: SurfacesConfig = Field(default_factory=SurfacesConfig)

    prices: dict[str, dict[str, PriceEntryConfig]] = Field(
        default_factory=dict,
        description="Price list entries by provider type and model, over the shipped catalog.",
    )

    @model_validator(mode="after")
    def _redis_for_shared_limits(self) -> GatewayConfig:
        if self.limits.backend == "redis" and self.redis is None:
            raise ValueError("limits.backend is redis but no redis.url is configured")
        return self


DEFAULT_CONFIG: dict[str, Any] = {
    "auth": {"master_key": "${GATEWAY_MASTER_KEY:-}"},
    "providers": {"mock": {"type": "mock"}},
    "models": {
        "mock-echo": {"deployments": [{"provider": "mock", "model": "mock-echo"}]},
        "mock-chat": {"deployments": [{"provider": "mock", "model": "mock-chat"}]},
        "mock-embed": {"deployments": [{"provider": "mock", "model": "mock-embed"}]},
    },
}


def interpolate(value: Any, path: str, errors: list[str]) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string; collect unset variables."""
    if isinstance(value, dict):
        return {
            k: interpolate(v, f"{path}.{k}" if path else str(k), errors) for k, v in value.items()
        }
    if isinstance(value, list):
        return [interpolate(v, f"{path}[{i}]", errors) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def sub(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        errors.append(
            f"{path}: environment variable {name} is not set "
            f"(set it, or write ${{{name}:-}} to make it optional)"
        )
        return ""

    result = _VAR.sub(sub, value)
    return result if result != "" else None


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _format(exc: ValidationError, prefix: str) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = _path(err["loc"])
        path = ".".join(p for p in (prefix, loc) if p)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling and indentation)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        got = err.get("input")
        shown = (
            ""
            if err["type"] in ("missing", "extra_forbidden") or isinstance(got, dict)
            else (f" (got {got!r})" if not isinstance(got, str) or len(got) < 60 else "")
        )
        if _SECRETISH.search(path):
            shown = ""  # never echo what may be a secret, whatever its type
        lines.append(f"{path or '<root>'}: {msg}{shown}")
    return lines


def load_config(data: dict[str, Any] | None) -> GatewayConfig:
    """Validate a parsed config mapping; raise ConfigError listing every problem."""
    unset: list[str] = []
    raw = interpolate(data if data is not None else {}, "", unset)
    errors: list[str] = []
    if not isinstance(raw, dict):
        raise ConfigError(
            "<root>: expected a mapping of sections (server, auth, providers, models)"
        )

    providers: dict[str, ProviderSettings] = {}
    raw_providers = raw.get("providers") or {}
    if not isinstance(raw_providers, dict):
        errors.append("providers: expected a mapping of provider name to settings")
        raw_providers = {}
    for name, entry in raw_providers.items():
        path = f"providers.{name}"
        if not isinstance(entry, dict) or "type" not in entry:
            errors.append(f"{path}.type: required; one of {', '.join(provider_types())}")
            continue
        try:
            cls = provider_class(str(entry["type"]))
        except ImportError as exc:
            errors.append(
                f"{path}.type: the adapter for {entry['type']!r} cannot be loaded "
                f"({exc}); reinstall llm-gateway or the plugin that provides it"
            )
            continue
        except KeyError:
            errors.append(
                f"{path}.type: unknown provider type {entry['type']!r}; "
                f"expected one of {', '.join(provider_types())}"
            )
            continue
        try:
            providers[name] = cls.settings_model.model_validate(entry)
        except ValidationError as exc:
            errors.extend(_format(exc, path))

    rest = {k: v for k, v in raw.items() if k != "providers"}
    config: GatewayConfig | None = None
    try:
        config = GatewayConfig.model_validate(rest)
    except ValidationError as exc:
        errors.extend(_format(exc, ""))

    errors.extend(_reference_problems(raw, raw_providers))
    errors.extend(_price_list_problems(raw))
    if config is not None:
        config.providers = providers
    # An unset variable also makes its value invalid; report only the cause.
    unset_paths = {line.partition(": ")[0] for line in unset}
    errors = unset + [e for e in errors if e.partition(": ")[0] not in unset_paths]
    if errors:
        raise ConfigError("invalid configuration:\n" + "\n".join(f"  - {e}" for e in errors))
    assert config is not None
    return config


def overridden(base: _M, override: _M | None) -> _M:
    """``base`` with the fields that ``override`` sets explicitly."""
    if override is None:
        return base
    return base.model_copy(update=override.model_dump(include=override.model_fields_set))


def _reference_problems(raw: dict[str, Any], providers: dict[str, Any]) -> list[str]:
    """Deployments naming undefined providers and fallbacks naming undefined models.

    Checked on the raw mapping so they are reported even when other parts are invalid.
    """
    problems: list[str] = []
    models = raw.get("models")
    if not isinstance(models, dict):
        return problems
    for model, mcfg in models.items():
        if not isinstance(mcfg, dict):
            continue
        deployments = mcfg.get("deployments")
        for i, dep in enumerate(deployments if isinstance(deployments, list) else []):
            name = dep.get("provider") if isinstance(dep, dict) else None
            if isinstance(name, str) and name not in providers:
                problems.append(
                    f"models.{model}.deployments[{i}].provider: no provider named {name!r}; "
                    f"defined: {', '.join(providers) or 'none'}"
                )
        for key in ("fallbacks", "context_window_fallbacks"):
            chain = mcfg.get(key)
            for fb in chain if isinstance(chain, list) else []:
                if fb == model:
                    problems.append(f"models.{model}.{key}: a model cannot fall back to itself")
                elif isinstance(fb, str) and fb not in models:
                    problems.append(f"models.{model}.{key}: {fb!r} is not a model in 'models'")
    surfaces = raw.get("surfaces")
    azure = surfaces.get("azure") if isinstance(surfaces, dict) else None
    mapping = azure.get("deployments") if isinstance(azure, dict) else None
    for name, target in mapping.items() if isinstance(mapping, dict) else ():
        if isinstance(target, str) and target not in models:
            problems.append(
                f"surfaces.azure.deployments.{name}: {target!r} is not a model in 'models'"
            )
    return problems


def _price_list_problems(raw: dict[str, Any]) -> list[str]:
    """``prices`` sections must name a provider type (or a price family such as azure-ai)."""
    prices = raw.get("prices")
    if not isinstance(prices, dict) or not prices:
        return []
    from gateway.costs.pricing import price_families  # costs builds on this module

    known = price_families()
    return [
        f"prices.{family}: unknown provider type {family!r}; expected one of {', '.join(known)}"
        for family in prices
        if family not in known
    ]


def load_config_file(path: str | Path) -> GatewayConfig:
    """Read and validate a YAML config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(_BARE_VALUE.sub(r'\1"\2"', text))
    except yaml.YAMLError as exc:
        # Only the position and the problem: PyYAML's snippet could show a secret.
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ConfigError(f"{p} is not valid YAML{where}: {problem}") from None
    return load_config(data)


def resolve_config(source: str | Path | dict[str, Any] | GatewayConfig | None) -> GatewayConfig:
    """A config from a path, a mapping, a ready object, $GATEWAY_CONFIG, or the defaults."""
    if isinstance(source, GatewayConfig):
        return source
    if isinstance(source, dict):
        return load_config(source)
    if source is not None:
        return load_config_file(source)
    env_path = os.environ.get("GATEWAY_CONFIG")
    if env_path:
        return load_config_file(env_path)
    return load_config(DEFAULT_CONFIG)
