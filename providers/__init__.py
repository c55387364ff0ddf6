"""Provider registry: built-in adapters plus third-party ones from the entry-point group
``llm_gateway.providers`` (``name = "package.module:ProviderClass"``)."""

from __future__ import annotations

import importlib
from functools import cache
from importlib.metadata import entry_points

from providers.base import Capabilities, Deployment, Provider, ProviderSettings, StreamTranslator

ENTRY_POINT_GROUP = "llm_gateway.providers"

_BUILTIN: dict[str, str] = {
    "openai": "providers.openai:OpenAIProvider",
    "azure": "providers.azure:AzureProvider",
    "mistral": "providers.mistral:MistralProvider",
    "mock": "providers.mock:MockProvider",
}


def _load(target: str) -> type[Provider]:
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise TypeError(f"{target} is not a providers.base.Provider subclass")
    return cls


@cache
def _plugins() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def provider_types() -> list[str]:
    """Every adapter type name that config can use."""
    return sorted({*_BUILTIN, *_plugins()})


def provider_class(type_name: str) -> type[Provider]:
    """The adapter class for a config ``type:``; KeyError names the known types."""
    target = _BUILTIN.get(type_name) or _plugins().get(type_name)
    if target is None:
        raise KeyError(type_name)
    return _load(target)


__all__ = [
    "ENTRY_POINT_GROUP",
    "Capabilities",
    "Deployment",
    "Provider",
    "ProviderSettings",
    "StreamTranslator",
    "provider_class",
    "provider_types",
]
