"""Reading a configuration: YAML, ``${ENV}`` values, validation, and every mistake at once.

Strings may use ``${VAR}`` (required) and ``${VAR:-default}``; interpolation happens on parsed
values, never on YAML text, so an environment value cannot change the file's structure.
Every mistake is reported with its key path and what was expected, all at once.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, SecretStr, ValidationError

from gateway.config.registry import adapter_type, price_families, provider_types
from gateway.config.schema import GatewayConfig, ProviderSettings
from gateway.errors import ConfigError

# A placeholder that is a whole unquoted value (``key: ${VAR}``, also inside ``{…}`` flow
# mappings, where YAML would otherwise read its braces as structure): quoted before parsing.
_BARE_VALUE = re.compile(
    r"(:[ \t]+)(\$\{[A-Za-z_][A-Za-z0-9_]*(?::-[^}\s,\"']*)?\})(?=[ \t]*(?:[,}\]\n#]|$))"
)
# A database or Redis URL may carry a password, so its value is never echoed either.
_SECRETISH = re.compile(r"key|token|secret|password|credential|(?:^|\.)url$", re.IGNORECASE)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


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
            adapter = adapter_type(str(entry["type"]))
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
            providers[name] = adapter.settings_model.model_validate(entry)
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
    """``prices`` sections must name a price family: a provider type, or a family an adapter
    bills under (Mistral on Azure AI: ``azure-ai``)."""
    prices = raw.get("prices")
    if not isinstance(prices, dict) or not prices:
        return []
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


def secrets_of(config: BaseModel) -> set[str]:
    """Every secret value in ``config``: each ``SecretStr`` field, at any depth, and each
    provider's extra ``headers`` whose name says it carries a credential."""
    found: set[str] = set()

    def walk(value: object) -> None:
        if isinstance(value, SecretStr):
            found.add(value.get_secret_value())
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
            walk(value.model_extra or {})
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            for item in value:
                walk(item)

    walk(config)
    for settings in getattr(config, "providers", {}).values():
        found.update(
            value
            for name, value in settings.headers.items()
            if any(word in name.lower() for word in CREDENTIAL_HEADER_WORDS)
        )
    return found


CREDENTIAL_HEADER_WORDS = ("auth", "key", "token", "secret")
