"""``llm-gateway serve --model openai/gpt-4o-mini``: a config for one real provider, with its
key taken from the provider's usual environment variable (never written anywhere)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from gateway.errors import ConfigError

# Per provider: its entry in the config, with ${VAR} references that the config loader fills
# in from the environment (so the file written for worker processes holds no secret).
PROVIDERS: dict[str, dict[str, str]] = {
    "openai": {
        "type": "openai",
        "api_key": "${OPENAI_API_KEY}",
        "base_url": "${OPENAI_BASE_URL:-https://api.openai.com/v1}",
    },
    "mistral": {
        "type": "mistral",
        "api_key": "${MISTRAL_API_KEY}",
        "base_url": "${MISTRAL_BASE_URL:-https://api.mistral.ai/v1}",
    },
    "azure": {
        "type": "azure",
        "api_key": "${AZURE_OPENAI_API_KEY}",
        "endpoint": "${AZURE_OPENAI_ENDPOINT}",
        "api_version": "${OPENAI_API_VERSION:-2024-10-21}",
    },
}
KEY_VARIABLES = {
    "openai": "OPENAI_API_KEY",
    "mistral": "MISTRAL_API_KEY",
    "azure": "AZURE_OPENAI_API_KEY",
}


def quick_config(models: list[str]) -> dict[str, Any]:
    """The config serving ``provider/model`` names (``azure/<deployment>``) under the name
    after the slash, with the gateway's defaults for everything else."""
    providers: dict[str, Any] = {}
    served: dict[str, Any] = {}
    for name in models:
        provider, _, model = name.partition("/")
        if provider not in PROVIDERS or not model:
            raise ConfigError(
                f"--model {name!r}: expected provider/model with provider one of "
                f"{', '.join(PROVIDERS)} (e.g. openai/gpt-4o-mini, mistral/mistral-small-latest, "
                "azure/<deployment>)"
            )
        variable = KEY_VARIABLES[provider]
        if not os.environ.get(variable):
            raise ConfigError(f"--model {name}: set {variable} to the provider's API key")
        providers[provider] = dict(PROVIDERS[provider])
        target = {"deployment": model} if provider == "azure" else {"model": model}
        served[model] = {"deployments": [{"provider": provider, **target}]}
    return {
        "auth": {"master_key": "${GATEWAY_MASTER_KEY:-}"},
        "providers": providers,
        "models": served,
    }


def write_quick_config(models: list[str]) -> Path:
    """``quick_config(models)`` as a YAML file that worker processes can read (removed by the
    caller); it holds ``${VAR}`` references, not keys."""
    config = quick_config(models)
    handle, name = tempfile.mkstemp(prefix="llm-gateway-", suffix=".yaml")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        yaml.safe_dump(config, out, sort_keys=False)
    return Path(name)
