"""Provider types: which adapter class serves each ``type:`` of a ``providers`` entry.

Built-in adapters and third-party ones (entry-point group ``llm_gateway.providers``, as
``name = "package.module:ProviderClass"``) are found the same way: by name, imported when a
configuration first uses them. So the configuration knows of adapters only through the little
it needs from them — their settings model and the price families they bill under — and never
imports an adapter module itself (``providers`` builds on this package, not the reverse).
"""

from __future__ import annotations

import importlib
from functools import cache
from importlib.metadata import entry_points
from typing import Protocol, cast

from gateway.config.schema import ProviderSettings

ENTRY_POINT_GROUP = "llm_gateway.providers"

BUILTIN: dict[str, str] = {
    "openai": "providers.openai:OpenAIProvider",
    "azure": "providers.azure:AzureProvider",
    "mistral": "providers.mistral:MistralProvider",
    "mock": "providers.mock:MockProvider",
}


class AdapterType(Protocol):
    """What the configuration needs of an adapter class (``providers.base.Provider``)."""

    type_name: str
    settings_model: type[ProviderSettings]

    def price_families(self) -> tuple[str, ...]:
        """Every price family the adapter's calls may be billed under."""
        ...


@cache
def _plugins() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def refresh_plugins() -> None:
    """Forget the entry points read so far (after installing or removing a plugin)."""
    _plugins.cache_clear()


def provider_types() -> list[str]:
    """Every adapter type name that config can use."""
    return sorted({*BUILTIN, *_plugins()})


def adapter_target(type_name: str) -> str:
    """Where the adapter for a config ``type:`` lives (``module:Class``); KeyError names the
    type when no adapter has it."""
    target = BUILTIN.get(type_name) or _plugins().get(type_name)
    if target is None:
        raise KeyError(type_name)
    return target


def load_target(target: str) -> object:
    """The object ``module:attribute`` names, importing its module (ImportError if it fails)."""
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def adapter_type(type_name: str) -> AdapterType:
    """The adapter class for a config ``type:``, as the configuration sees it."""
    target = adapter_target(type_name)
    cls = load_target(target)
    settings = getattr(cls, "settings_model", None)
    if not (isinstance(settings, type) and issubclass(settings, ProviderSettings)):
        raise TypeError(f"{target} is not a providers.base.Provider subclass")
    return cast(AdapterType, cls)


def price_families() -> list[str]:
    """Every family a config ``prices:`` section may name: each adapter's own."""
    families: set[str] = set()
    for type_name in provider_types():
        try:
            families.update(adapter_type(type_name).price_families())
        except (ImportError, TypeError):
            families.add(type_name)  # reported where the provider is configured
    return sorted(families)
