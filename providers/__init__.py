"""Provider adapters: one module each (openai, azure, mistral, mock) behind ``base.Provider``.

Config ``type:`` names are looked up in ``gateway.config.registry``: the built-in adapters
and third-party ones from the entry-point group ``llm_gateway.providers``
(``name = "package.module:ProviderClass"``), found the same way.
"""

from __future__ import annotations

from gateway.config.registry import (
    ENTRY_POINT_GROUP,
    adapter_target,
    load_target,
    provider_types,
    refresh_plugins,
)
from providers.base import Capabilities, Deployment, Provider, ProviderSettings, StreamTranslator


def provider_class(type_name: str) -> type[Provider]:
    """The adapter class for a config ``type:``; KeyError names the known types."""
    target = adapter_target(type_name)
    cls = load_target(target)
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise TypeError(f"{target} is not a providers.base.Provider subclass")
    return cls


__all__ = [
    "ENTRY_POINT_GROUP",
    "Capabilities",
    "Deployment",
    "Provider",
    "ProviderSettings",
    "StreamTranslator",
    "provider_class",
    "provider_types",
    "refresh_plugins",
]
