"""Third-party adapters: a provider installed as its own distribution, found by entry point."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import providers
from gateway import AsyncGateway
from gateway.config import load_config
from gateway.errors import ConfigError
from tests.emulators.openai_api import API_KEY, OpenAIEmulator

# An adapter for an OpenAI-compatible service that also needs a tenant header. It lives in its
# own module and distribution, outside this package, as a third party would ship it.
ACME_MODULE = '''\
"""Acme LLM: OpenAI's wire format plus a tenant header."""

from typing import ClassVar

from providers.base import ProviderSettings
from providers.openai import OpenAIProvider, OpenAISettings


class AcmeSettings(OpenAISettings):
    tenant: str


class AcmeProvider(OpenAIProvider):
    type_name: ClassVar[str] = "acme"
    settings_model: ClassVar[type[ProviderSettings]] = AcmeSettings

    def __init__(self, name: str, settings: ProviderSettings) -> None:
        super().__init__(name, settings)
        assert isinstance(settings, AcmeSettings)
        self.headers["x-acme-tenant"] = settings.tenant
'''

METADATA = "Metadata-Version: 2.1\nName: acme-llm\nVersion: 0.1\n"
ENTRY_POINTS = "[llm_gateway.providers]\nacme = acme_llm:AcmeProvider\n"


@pytest.fixture
def acme_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The acme-llm distribution installed on sys.path for one test, and forgotten after."""
    (tmp_path / "acme_llm.py").write_text(ACME_MODULE)
    dist_info = tmp_path / "acme_llm-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(METADATA)
    (dist_info / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    providers.refresh_plugins()
    try:
        yield
    finally:
        providers.refresh_plugins()
        sys.modules.pop("acme_llm", None)


def acme_config(base_url: str = "http://127.0.0.1:9/v1", **settings: Any) -> dict[str, Any]:
    entry = {"type": "acme", "tenant": "t-42", "api_key": API_KEY, "base_url": base_url}
    entry.update(settings)
    return {
        "providers": {"acme": entry},
        "models": {"acme-chat": {"deployments": [{"provider": "acme", "model": "acme-1"}]}},
    }


def test_plugin_type_is_unknown_without_its_distribution() -> None:
    providers.refresh_plugins()
    assert "acme" not in providers.provider_types()


def test_plugin_type_is_listed_by_provider_types(acme_plugin: None) -> None:
    assert "acme" in providers.provider_types()


def test_plugin_type_resolves_to_the_plugin_class(acme_plugin: None) -> None:
    cls = providers.provider_class("acme")
    assert (cls.__module__, cls.__name__) == ("acme_llm", "AcmeProvider")
    assert issubclass(cls, providers.Provider)


def test_config_with_plugin_type_keeps_the_plugins_own_settings(acme_plugin: None) -> None:
    settings = load_config(acme_config()).providers["acme"]
    assert type(settings).__name__ == "AcmeSettings"
    assert settings.model_dump()["tenant"] == "t-42"


def test_missing_plugin_setting_is_reported_with_its_key_path(acme_plugin: None) -> None:
    config = acme_config()
    del config["providers"]["acme"]["tenant"]
    with pytest.raises(ConfigError, match=r"providers\.acme\.tenant: required key is missing"):
        load_config(config)


def test_unknown_key_in_a_plugin_entry_is_reported(acme_plugin: None) -> None:
    with pytest.raises(ConfigError, match=r"providers\.acme\.tenantt: unknown key"):
        load_config(acme_config(tenantt="t-43"))


def test_unknown_type_error_lists_the_plugin_type(acme_plugin: None) -> None:
    with pytest.raises(ConfigError, match=r"expected one of .*\bacme\b"):
        load_config(acme_config(type="acm"))


async def test_chat_request_reaches_the_plugin_adapter(
    acme_plugin: None, openai_emu: OpenAIEmulator
) -> None:
    async with AsyncGateway(acme_config(base_url=openai_emu.url + "/v1")) as gw:
        completion = await gw.chat.completions.create(
            model="acme-chat", messages=[{"role": "user", "content": "hi acme"}]
        )
    assert completion.choices[0].message.content == "echo: hi acme"
    sent = openai_emu.requests[-1]
    assert sent.headers["x-acme-tenant"] == "t-42"
    assert sent.body["model"] == "acme-1"
