"""The configuration's shape: every section of the YAML file as a pydantic model.

``load`` reads a file into these; each stage reads its own section. Provider entries are
``ProviderSettings`` (or an adapter's subclass of it, with its own keys), defined here so that
adapters build on the schema without the schema knowing any adapter.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import date
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TimeoutSettings(BaseModel):
    """Seconds to connect and to wait for each next byte from this provider."""

    model_config = ConfigDict(extra="forbid")
    connect: float = Field(default=10.0, gt=0)
    read: float = Field(default=120.0, gt=0)


class CapabilitySettings(BaseModel):
    """What a provider (or one deployment) can do beyond what its adapter type assumes."""

    model_config = ConfigDict(extra="forbid")
    assistant_prefill: bool | None = Field(
        default=None,
        description="Continues a final assistant message (Mistral's prefix, vLLM's "
        "continue_final_message); a cut stream may then be finished here. Default: the "
        "adapter's own (Mistral yes, OpenAI-compatible and Azure no).",
    )
    batch: bool | None = Field(
        default=None,
        description="Runs batch jobs (files + batches API) at batch prices. Default: the "
        "adapter's own (OpenAI and Mistral on La Plateforme yes; Azure no: set it on a "
        "Global Batch deployment).",
    )
    completions: bool | None = Field(
        default=None,
        description="Serves OpenAI's legacy /completions route itself (vLLM, Ollama, "
        "gpt-3.5-turbo-instruct), so /v1/completions is sent there unchanged. Default: the "
        "adapter's own (OpenAI and Azure for gpt-3.5-turbo-instruct, davinci-002 and "
        "babbage-002); elsewhere the gateway translates it (FIM on Mistral's codestral, chat "
        "otherwise).",
    )


class ProviderSettings(BaseModel):
    """Config common to every provider entry; adapters extend it with their own fields."""

    model_config = ConfigDict(extra="forbid")

    type: str
    api_key: SecretStr | None = None
    base_url: str | None = None
    region: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeouts: TimeoutSettings = Field(default_factory=TimeoutSettings)
    drop_unsupported_params: bool = True
    capabilities: CapabilitySettings = Field(default_factory=CapabilitySettings)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=4000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    max_json_depth: int = Field(
        default=128,
        ge=8,
        le=200,
        description="Request bodies nested deeper (objects and arrays) get 400: what the "
        "gateway decodes it must also be able to send upstream and store (at most 254 levels).",
    )
    shutdown_timeout: int = Field(
        default=25,
        ge=1,
        description="On SIGTERM, seconds requests in flight may take to finish; those still "
        "running then are cut: answered 503 (shutting_down) if nothing was sent yet, and "
        "recorded as such; a stream already under way is recorded as cut (499).",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses or CIDR ranges of the proxies (load balancers) in front of the "
        "gateway whose X-Forwarded-For and X-Forwarded-Proto are believed; the client's "
        "address is the nearest one they did not add. Empty: the peer's address, headers "
        "ignored.",
    )

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_addresses(cls, proxies: list[str]) -> list[str]:
        for proxy in proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(
                    f"{proxy!r} is not an IP address or CIDR range (e.g. 10.0.0.0/8)"
                ) from None
        return proxies

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
    failed_lookups_per_minute: int = Field(
        default=30,
        ge=1,
        description="Lookups of unknown API keys one client address may cause a minute (per "
        "process); past that, keys not seen valid are refused with 429 without a database "
        "query.",
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
    min_output_tokens: int = Field(
        default=16,
        ge=1,
        description="When a request's worst case does not fit a budget's remainder, its output "
        "cap is lowered to what the remainder pays for; below this many tokens it is refused.",
    )
    unpriced: Literal["deny"] | UnpricedMeteringConfig = Field(
        default="deny",
        description="Calls by a key or team with a budget to a model without a price: deny "
        "(403), or `{price: {input, output}}` to meter them at that price.",
    )
    on_backend_error: Literal["closed", "open", "closed_for_budgets"] = Field(
        default="closed_for_budgets",
        description="When the limits backend (Redis) cannot be reached: closed refuses calls "
        "(503), open admits them uncounted (logged), closed_for_budgets refuses calls of keys "
        "or teams with a budget and admits those with only rate or parallel limits.",
    )


PRICE_FIELDS = frozenset(
    {
        "input",
        "cached_input",
        "cache_write",
        "output",
        "reasoning",
        "embedding",
        "input_audio",
        "output_audio",
    }
)


class PriceConfig(_Strict):
    """USD per 1M tokens, for a deployment with a negotiated price or a model the catalog
    lacks. Numbers or strings, read as exact decimals; an unset field keeps the catalog's."""

    input: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False)
    cached_input: Decimal | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="Default: the catalog's cache discount applied to this input price.",
    )
    cache_write: Decimal | None = Field(
        default=None, ge=0, allow_inf_nan=False, description="Default: the input price."
    )
    output: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False)
    reasoning: Decimal | None = Field(
        default=None, ge=0, allow_inf_nan=False, description="Default: the output price."
    )
    embedding: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False)
    input_audio: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False)
    output_audio: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _sets_a_price(self) -> PriceConfig:
        if all(getattr(self, name) is None for name in PRICE_FIELDS):
            raise ValueError(f"set at least one of {', '.join(sorted(PRICE_FIELDS))}")
        return self


class UnpricedMeteringConfig(_Strict):
    """How to meter calls to models without a price (``limits.unpriced``): budgets reserve
    and the ledger records them at ``price``."""

    price: PriceConfig

    @model_validator(mode="after")
    def _prices_input_and_output(self) -> UnpricedMeteringConfig:
        if self.price.input is None or self.price.output is None:
            raise ValueError("limits.unpriced.price needs both input and output")
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


Residency = Literal["global", "data_zone", "regional", "eu", "us"]


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
    context_window: int | None = Field(
        default=None,
        ge=1,
        description="Tokens this deployment's model takes in (default: the price catalog's).",
    )
    capabilities: CapabilitySettings | None = Field(
        default=None, description="Over its provider's capabilities, for this deployment."
    )
    residency: Residency | None = Field(
        default=None,
        description="Where the deployment processes data; its price family's documented "
        "uplift applies (e.g. Azure data_zone / regional: +10%).",
    )
    price_uplift: Decimal | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="A fraction added to every price of this deployment (0.10: +10%); "
        "replaces the residency's uplift.",
    )

    @model_validator(mode="after")
    def _needs_a_name(self) -> DeploymentConfig:
        if not (self.model or self.deployment):
            raise ValueError("a deployment needs 'model' (or 'deployment' for Azure)")
        return self

    @property
    def upstream_name(self) -> str:
        return self.deployment or self.model or ""


Strategy = Literal["weighted", "round-robin", "least-busy", "latency", "cost", "prefix-affinity"]

# The transient failures a deployment may be retried on (see docs/resilience.md).
ErrorClass = Literal["rate_limit", "server_error", "connection", "timeout"]


def _retried_by_default() -> list[ErrorClass]:
    # Not a timeout: a route that accepted a request and said nothing is likely to do it
    # again, and a retry there multiplies the caller's wait.
    return ["rate_limit", "server_error", "connection"]


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
    retry_on: list[ErrorClass] = Field(
        default_factory=_retried_by_default,
        description="Failures retried on the same deployment; any other transient failure "
        "(by default a timeout: a silent route) fails over at once.",
    )


class TimeoutConfig(_Strict):
    """Seconds; connect and idle default to each provider's own timeouts."""

    connect: float | None = Field(default=None, gt=0)
    first_token: float | None = Field(
        default=None,
        gt=0,
        description="Stream: from sending the request to the first output, headers included "
        "(default: 10 s while the Plan has another deployment to try, else idle). "
        "Non-stream: the longest wait for the answer (default: the provider's timeouts.read).",
    )
    idle: float | None = Field(
        default=None, gt=0, description="The longest silence inside a stream, headers included."
    )
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


class ModelCacheConfig(_Strict):
    """A model's own cache settings (over ``cache``); unset fields keep the global ones."""

    enabled: bool | None = None
    ttl_seconds: float | None = Field(default=None, gt=0)
    sampled: bool | None = Field(
        default=None, description="Cache answers sampled at a temperature above 0."
    )


class PiiConfig(_Strict):
    """PII redaction settings beyond the built-in patterns (docs/governance.md)."""

    names_detector: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="'package.module:function' of a function giving the (start, end) spans of "
        "person names in a text (e.g. a Presidio wrapper); names are not detected without it.",
    )

    @field_validator("names_detector")
    @classmethod
    def _importable(cls, path: str | None) -> str | None:
        if path is None:
            return None
        import importlib.util

        module = path.partition(":")[0]
        try:
            found = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            found = None
        if found is None:
            raise ValueError(f"module {module!r} cannot be imported")
        return path


class CacheConfig(_Strict):
    """The exact response cache (docs/caching.md). Off by default."""

    enabled: bool = False
    backend: Literal["memory", "redis"] = Field(
        default="memory", description="redis: shared by every replica (needs redis.url)."
    )
    ttl_seconds: float = Field(default=3600.0, gt=0, description="How long an answer is kept.")
    scope: Literal["team", "key", "global"] = Field(
        default="team",
        description="Who shares answers: a team (a key without a team is its own), a key, "
        "or every caller.",
    )
    per_user: bool = Field(
        default=False, description="Also keep each end user's answers apart (the user field)."
    )
    max_entry_bytes: int = Field(
        default=1024 * 1024, ge=1, description="Answers larger than this are not kept."
    )
    memory_max_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1, description="Memory backend: bytes held (LRU)."
    )
    sampled: bool = Field(
        default=False,
        description="Cache answers sampled at a temperature above 0 (or the provider's default).",
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
    cache: ModelCacheConfig | None = None
    regions: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Data residency: requests for this model go only to deployments in these "
        "regions, its fallbacks included; none there: 403 region_not_allowed.",
    )
    redact_pii: bool = Field(
        default=False,
        description="Replace personal data in prompts (e-mail, phone, IBAN, card, EU national "
        "ids) with placeholders before they leave, and put it back in the answer.",
    )


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
    stuck_after: float = Field(
        default=30.0,
        gt=0,
        description="Seconds the writer may hold records without writing any before "
        "/health/ready fails (the database is refusing or not answering writes).",
    )
    migrate: bool = Field(default=True, description="Bring the schema up to date at start-up.")
    responses_retention_days: float = Field(
        default=30.0,
        gt=0,
        description="Days a stored Responses API answer (POST /v1/responses with store: true) "
        "is kept for GET /v1/responses/{id} and previous_response_id; then it is deleted.",
    )
    retention_days: int | None = Field(
        default=None,
        ge=1,
        description="Delete per-request spend records of whole UTC days older than this; the "
        "daily roll-ups stay, so reports over old periods stay right (default: keep).",
    )
    audit_retention_days: int | None = Field(
        default=None, ge=1, description="Delete audit entries older than this (default: keep)."
    )
    retention_interval: float = Field(
        default=3600.0, gt=0, description="Seconds between retention rounds (in the background)."
    )
    retention_batch: int = Field(
        default=5000, ge=1, le=100_000, description="Rows deleted per transaction."
    )

    @field_validator("url")
    @classmethod
    def _supported_database(cls, url: str) -> str:
        if not _LEDGER_URL.match(url):
            raise ValueError(
                "expected sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DATABASE "
                "(sqlite://, postgresql:// and postgres:// are accepted too)"
            )
        return url


class BatchConfig(_Strict):
    """Batch jobs (``/v1/files``, ``/v1/batches``): their state lives in the ledger's database,
    and one poller across all replicas follows them upstream."""

    enabled: bool = True
    poll_interval: float = Field(
        default=30.0, gt=0, description="Seconds between looks at a job that is running."
    )
    max_poll_interval: float = Field(
        default=600.0, gt=0, description="The longest wait between looks (backoff on errors)."
    )
    max_file_bytes: int = Field(
        default=100 * 1024 * 1024, ge=1, description="The largest input file accepted."
    )
    price_multiplier: Decimal = Field(
        default=Decimal("0.5"),
        gt=0,
        allow_inf_nan=False,
        description="Batch price over the standard price where the price catalog has no batch "
        "price of its own (OpenAI, Azure and Mistral bill batch jobs at half price).",
    )


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
    region: str | None = Field(
        default=None,
        description="Where the trace endpoint keeps data; calls restricted to other regions "
        "(key, team, model or request) are not exported. Unset: exported only for calls "
        "without a region restriction.",
    )
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


class BudgetAlertsConfig(_Strict):
    """Soft budget thresholds: a webhook told once per budget period when a key or team with
    a budget passes each share of it (the hard stop stays with the budget itself)."""

    webhook_url: str | None = Field(
        default=None, description="Where alerts are POSTed as JSON; none: no alerts are sent."
    )
    secret: SecretStr | None = Field(
        default=None,
        description="Signs each body: X-Gateway-Signature: sha256=<HMAC-SHA256 of the body>.",
    )
    thresholds: list[Annotated[float, Field(gt=0, le=10)]] = Field(
        default_factory=lambda: [0.5, 0.8, 1.0],
        description="Shares of the budget that trigger an alert (0.8: 80 %).",
    )
    check_interval: float = Field(default=30.0, gt=0, description="Seconds between checks.")
    timeout: float = Field(default=5.0, gt=0, description="Seconds per delivery attempt.")
    attempts: int = Field(default=4, ge=1, le=20, description="Delivery attempts per alert.")


class GatewayConfig(_Strict):
    """The whole configuration file."""

    server: ServerConfig = Field(default_factory=ServerConfig)
    redis: RedisConfig | None = None
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    batches: BatchConfig = Field(default_factory=BatchConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    alerts: BudgetAlertsConfig = Field(default_factory=BudgetAlertsConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    ui: UIConfig = Field(default_factory=UIConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    pii: PiiConfig = Field(default_factory=PiiConfig)
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
        if self.cache.backend == "redis" and self.redis is None:
            raise ValueError("cache.backend is redis but no redis.url is configured")
        return self


_M = TypeVar("_M", bound=_Strict)


def overridden(base: _M, override: _M | None) -> _M:
    """``base`` with the fields that ``override`` sets explicitly."""
    if override is None:
        return base
    return base.model_copy(update=override.model_dump(include=override.model_fields_set))
