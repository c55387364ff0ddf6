"""Config loading: the documented YAML shape, ${VAR} interpolation, and errors that say where."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gateway import AsyncGateway
from gateway.config import GatewayConfig, load_config, load_config_file, resolve_config
from gateway.errors import ConfigError

README_EXAMPLE = """\
server: {host: 127.0.0.1, port: 4000}
auth: {master_key: ${GATEWAY_MASTER_KEY}}
providers:
  openai:            {type: openai, api_key: ${OPENAI_API_KEY}, base_url: https://api.openai.com/v1}
  azure-westeurope:  {type: azure, endpoint: https://contoso.openai.azure.com, api_key: ${AZURE_OPENAI_API_KEY}, api_version: "2024-10-21", region: eu}
  mistral:           {type: mistral, api_key: ${MISTRAL_API_KEY}, base_url: https://api.mistral.ai/v1, region: eu}
models:
  gpt-4o:
    deployments:
      - {provider: azure-westeurope, deployment: gpt-4o-prod, base_model: gpt-4o-2024-08-06, weight: 3}
      - {provider: openai, model: gpt-4o, weight: 1}
    fallbacks: [mistral-large]
  mistral-large:
    deployments: [{provider: mistral, model: mistral-large-latest}]
  embed-small:
    deployments: [{provider: openai, model: text-embedding-3-small}]
"""  # noqa: E501

README_ENV = {
    "GATEWAY_MASTER_KEY": "sk-gw-master-0001",
    "OPENAI_API_KEY": "sk-openai-0002",
    "AZURE_OPENAI_API_KEY": "azure-key-0003",
    "MISTRAL_API_KEY": "mistral-key-0004",
}

# The same example with each ${VAR} quoted, which YAML flow mappings ({...}) require.
README_EXAMPLE_QUOTED = re.sub(r"(\$\{[A-Z_]+\})", r'"\1"', README_EXAMPLE)

SECRET = "sk-live-DO-NOT-PRINT-7f3a9c"


def mock_config(**extra: Any) -> dict[str, Any]:
    """A small valid config; keyword arguments replace or add top-level sections."""
    config: dict[str, Any] = {
        "providers": {"mock": {"type": "mock"}},
        "models": {"chat": {"deployments": [{"provider": "mock", "model": "mock-chat"}]}},
    }
    config.update(extra)
    return config


def problems(data: Any) -> list[str]:
    """The problem lines of the ConfigError that loading ``data`` raises."""
    with pytest.raises(ConfigError) as info:
        load_config(data)
    return [line.removeprefix("  - ") for line in str(info.value).splitlines()[1:]]


def problem_at(lines: list[str], path: str) -> str:
    """The one problem reported at ``path``."""
    found = [line for line in lines if line.startswith(f"{path}: ")]
    assert len(found) == 1, f"expected one problem at {path!r}, got: {lines}"
    return found[0]


def write_one_model_config(path: Path, model: str) -> None:
    path.write_text(
        "providers: {m: {type: mock}}\n"
        f"models: {{{model}: {{deployments: [{{provider: m, model: mock-chat}}]}}}}\n"
    )


@pytest.fixture
def readme_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name, value in README_ENV.items():
        monkeypatch.setenv(name, value)
    return README_ENV


@pytest.fixture
def no_config_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEWAY_CONFIG", raising=False)
    monkeypatch.delenv("GATEWAY_MASTER_KEY", raising=False)


# --- the documented shape -------------------------------------------------------------------


def test_readme_example_loads_as_written(tmp_path: Path, readme_env: dict[str, str]) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(README_EXAMPLE)
    assert list(load_config_file(path).models) == ["gpt-4o", "mistral-large", "embed-small"]


def test_readme_example_with_quoted_variables_loads_every_section(
    tmp_path: Path, readme_env: dict[str, str]
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(README_EXAMPLE_QUOTED)

    config = load_config_file(path)

    assert (config.server.host, config.server.port) == ("127.0.0.1", 4000)
    assert list(config.providers) == ["openai", "azure-westeurope", "mistral"]
    assert [p.type for p in config.providers.values()] == ["openai", "azure", "mistral"]
    assert list(config.models) == ["gpt-4o", "mistral-large", "embed-small"]
    gpt4o = config.models["gpt-4o"]
    assert [(d.provider, d.upstream_name, d.weight) for d in gpt4o.deployments] == [
        ("azure-westeurope", "gpt-4o-prod", 3.0),
        ("openai", "gpt-4o", 1.0),
    ]
    assert gpt4o.deployments[0].base_model == "gpt-4o-2024-08-06"
    assert gpt4o.fallbacks == ["mistral-large"]


def test_readme_example_azure_entry_keeps_its_own_settings(
    tmp_path: Path, readme_env: dict[str, str]
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(README_EXAMPLE_QUOTED)

    azure = load_config_file(path).providers["azure-westeurope"].model_dump()

    assert azure["endpoint"] == "https://contoso.openai.azure.com"
    assert azure["api_version"] == "2024-10-21"
    assert azure["region"] == "eu"


def test_readme_example_secrets_come_from_the_environment(
    tmp_path: Path, readme_env: dict[str, str]
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(README_EXAMPLE_QUOTED)

    config = load_config_file(path)

    assert config.auth.master_key is not None
    assert config.auth.master_key.get_secret_value() == readme_env["GATEWAY_MASTER_KEY"]
    keys = {
        name: p.api_key.get_secret_value()
        for name, p in config.providers.items()
        if p.api_key is not None
    }
    assert keys == {
        "openai": readme_env["OPENAI_API_KEY"],
        "azure-westeurope": readme_env["AZURE_OPENAI_API_KEY"],
        "mistral": readme_env["MISTRAL_API_KEY"],
    }
    assert readme_env["OPENAI_API_KEY"] not in repr(config)


async def test_readme_example_builds_a_gateway_serving_its_models(
    tmp_path: Path, readme_env: dict[str, str]
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(README_EXAMPLE_QUOTED)
    async with AsyncGateway(path) as gw:
        models = await gw.models.list()
    assert [m.id for m in models] == ["gpt-4o", "mistral-large", "embed-small"]


# --- ${VAR} interpolation ----------------------------------------------------------------------


def test_variable_is_replaced_by_its_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_UPSTREAM_KEY", "sk-from-env")
    config = load_config(
        mock_config(providers={"mock": {"type": "mock", "api_key": "${TEST_UPSTREAM_KEY}"}})
    )
    api_key = config.providers["mock"].api_key
    assert api_key is not None and api_key.get_secret_value() == "sk-from-env"


def test_variable_inside_a_longer_string_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_UPSTREAM_HOST", "10.0.0.7")
    config = load_config(
        mock_config(
            providers={"mock": {"type": "mock", "base_url": "http://${TEST_UPSTREAM_HOST}:8000/v1"}}
        )
    )
    assert config.providers["mock"].base_url == "http://10.0.0.7:8000/v1"


def test_default_is_used_when_variable_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_UPSTREAM_HOST", raising=False)
    config = load_config(mock_config(server={"host": "${TEST_UPSTREAM_HOST:-0.0.0.0}"}))
    assert config.server.host == "0.0.0.0"


def test_variable_value_wins_over_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_UPSTREAM_HOST", "10.0.0.7")
    config = load_config(mock_config(server={"host": "${TEST_UPSTREAM_HOST:-0.0.0.0}"}))
    assert config.server.host == "10.0.0.7"


def test_empty_default_makes_an_optional_value_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_MASTER_KEY", raising=False)
    config = load_config(mock_config(auth={"master_key": "${TEST_MASTER_KEY:-}"}))
    assert config.auth.master_key is None


def test_interpolated_number_is_read_as_a_number(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_PORT", "4123")
    config = load_config(mock_config(server={"port": "${TEST_PORT}"}))
    assert config.server.port == 4123


def test_variable_value_cannot_change_the_file_structure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_UPSTREAM_KEY", "x\n  region: injected")
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "providers:\n  mock:\n    type: mock\n    api_key: ${TEST_UPSTREAM_KEY}\n"
        "models:\n  chat: {deployments: [{provider: mock, model: mock-chat}]}\n"
    )
    settings = load_config_file(path).providers["mock"]
    assert settings.region is None
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() == "x\n  region: injected"


def test_unset_variable_error_names_key_path_and_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_MISSING_KEY", raising=False)
    lines = problems(
        mock_config(providers={"mock": {"type": "mock", "api_key": "${TEST_MISSING_KEY}"}})
    )
    assert "TEST_MISSING_KEY" in problem_at(lines, "providers.mock.api_key")


def test_unset_variable_in_a_list_names_its_index(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_FALLBACK", raising=False)
    config = mock_config()
    config["models"]["chat"]["fallbacks"] = ["${TEST_FALLBACK}"]
    assert "TEST_FALLBACK" in problem_at(problems(config), "models.chat.fallbacks[0]")


def test_unset_variable_error_tells_how_to_make_it_optional(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TEST_MISSING_KEY", raising=False)
    lines = problems(mock_config(auth={"master_key": "${TEST_MISSING_KEY}"}))
    assert "${TEST_MISSING_KEY:-}" in problem_at(lines, "auth.master_key")


# --- errors with key paths ---------------------------------------------------------------------


def test_unknown_provider_type_lists_the_known_types() -> None:
    line = problem_at(
        problems(mock_config(providers={"mock": {"type": "mokc"}})), "providers.mock.type"
    )
    assert "'mokc'" in line
    for known in ("azure", "mistral", "mock", "openai"):
        assert known in line


def test_provider_entry_without_type_says_type_is_required() -> None:
    line = problem_at(
        problems(mock_config(providers={"mock": {"base_url": "http://x"}})), "providers.mock.type"
    )
    assert "openai" in line


def test_unknown_key_in_a_provider_entry_names_its_path() -> None:
    lines = problems(mock_config(providers={"mock": {"type": "mock", "latency": 5}}))
    assert "unknown key" in problem_at(lines, "providers.mock.latency")


def test_unknown_top_level_section_names_it() -> None:
    lines = problems({**mock_config(), "model": {}})
    assert "unknown key" in problem_at(lines, "model")


def test_deployment_naming_an_undefined_provider_lists_the_defined_ones() -> None:
    config = mock_config()
    config["models"]["chat"]["deployments"].append({"provider": "opneai", "model": "gpt-4o"})
    line = problem_at(problems(config), "models.chat.deployments[1].provider")
    assert "'opneai'" in line
    assert "mock" in line


def test_fallback_naming_an_undefined_model_names_it() -> None:
    config = mock_config()
    config["models"]["chat"]["fallbacks"] = ["gpt-5"]
    assert "'gpt-5'" in problem_at(problems(config), "models.chat.fallbacks")


def test_model_cannot_fall_back_to_itself() -> None:
    config = mock_config()
    config["models"]["chat"]["fallbacks"] = ["chat"]
    assert "itself" in problem_at(problems(config), "models.chat.fallbacks")


def test_wrong_value_type_names_the_key_and_the_value() -> None:
    line = problem_at(problems(mock_config(server={"port": "abc"})), "server.port")
    assert "integer" in line
    assert "'abc'" in line


def test_out_of_range_value_names_the_key() -> None:
    line = problem_at(problems(mock_config(server={"port": 70000})), "server.port")
    assert "65535" in line


def test_wrong_value_type_inside_a_provider_entry_names_the_key() -> None:
    lines = problems(
        mock_config(providers={"mock": {"type": "mock", "timeouts": {"connect": "soon"}}})
    )
    assert "'soon'" in problem_at(lines, "providers.mock.timeouts.connect")


def test_model_without_deployments_names_the_key() -> None:
    lines = problems(mock_config(models={"chat": {"fallbacks": []}}))
    assert "missing" in problem_at(lines, "models.chat.deployments")


def test_deployment_without_a_model_name_is_reported_at_its_list_index() -> None:
    lines = problems(mock_config(models={"chat": {"deployments": [{"provider": "mock"}]}}))
    assert "'model'" in problem_at(lines, "models.chat.deployments[0]")


def test_top_level_that_is_not_a_mapping_is_an_error() -> None:
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(["providers"])  # type: ignore[arg-type]


def test_every_problem_in_providers_and_references_is_reported_at_once() -> None:
    lines = problems(
        {
            "providers": {
                "mock": {"type": "mock", "latency": 5},
                "other": {"type": "nope"},
            },
            "models": {
                "chat": {
                    "deployments": [{"provider": "ghost", "model": "x"}],
                    "fallbacks": ["gpt-5"],
                }
            },
        }
    )
    assert len(lines) == 4
    problem_at(lines, "providers.mock.latency")
    problem_at(lines, "providers.other.type")
    problem_at(lines, "models.chat.deployments[0].provider")
    problem_at(lines, "models.chat.fallbacks")


def test_reference_problems_are_reported_alongside_schema_problems() -> None:
    lines = problems(
        {
            "server": {"port": "abc"},
            "providers": {"mock": {"type": "mock"}},
            "models": {
                "chat": {
                    "deployments": [{"provider": "ghost", "model": "x"}],
                    "fallbacks": ["gpt-5"],
                }
            },
        }
    )
    problem_at(lines, "server.port")
    problem_at(lines, "models.chat.deployments[0].provider")
    problem_at(lines, "models.chat.fallbacks")


def test_reference_problems_of_one_model_are_reported_alongside_another_models_schema_problem() -> (
    None
):
    lines = problems(
        {
            "providers": {"mock": {"type": "mock"}},
            "models": {
                "broken": {"deployments": [{"provider": "mock"}]},
                "chat": {"deployments": [{"provider": "ghost", "model": "x"}]},
            },
        }
    )
    problem_at(lines, "models.chat.deployments[0].provider")


# --- secrets never appear in errors --------------------------------------------------------------


def test_api_key_of_the_wrong_type_is_not_echoed() -> None:
    message = "\n".join(
        problems(mock_config(providers={"mock": {"type": "mock", "api_key": [SECRET]}}))
    )
    assert "providers.mock.api_key" in message
    assert SECRET not in message


def test_master_key_of_the_wrong_type_is_not_echoed() -> None:
    message = "\n".join(problems(mock_config(auth={"master_key": [SECRET]})))
    assert "auth.master_key" in message
    assert SECRET not in message


def test_api_key_is_not_echoed_when_its_provider_type_is_unknown() -> None:
    message = "\n".join(
        problems(mock_config(providers={"mock": {"type": "nope", "api_key": SECRET}}))
    )
    assert SECRET not in message


def test_misspelled_api_key_field_is_reported_without_its_value() -> None:
    lines = problems(mock_config(providers={"mock": {"type": "mock", "apikey": SECRET}}))
    problem_at(lines, "providers.mock.apikey")
    assert SECRET not in "\n".join(lines)


def test_api_key_from_the_environment_is_not_echoed_by_other_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_UPSTREAM_KEY", SECRET)
    message = "\n".join(
        problems(
            mock_config(
                server={"port": "abc"},
                providers={"mock": {"type": "mock", "api_key": "${TEST_UPSTREAM_KEY}", "x": 1}},
            )
        )
    )
    assert SECRET not in message


def test_adapter_specific_secret_of_the_wrong_type_is_not_echoed() -> None:
    entry = {"type": "azure", "endpoint": "https://x.openai.azure.com", "api_version": "2024-10-21"}
    lines = problems(mock_config(providers={"az": {**entry, "azure_ad_token": [SECRET]}}))
    problem_at(lines, "providers.az.azure_ad_token")
    assert SECRET not in "\n".join(lines)


def test_yaml_syntax_error_does_not_echo_the_line_with_a_secret(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(f"providers:\n  openai:\n    type: openai\n    api_key: {SECRET}: x\n")
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    assert "line 4" in str(info.value)
    assert SECRET not in str(info.value)


# --- files and sources -------------------------------------------------------------------------


def test_missing_file_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="cannot read config file") as info:
        load_config_file(path)
    assert str(path) in str(info.value)


def test_invalid_yaml_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("models:\n  chat: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config_file(path)
    assert str(path) in str(info.value)
    assert "line 3" in str(info.value)


def test_no_config_gives_the_builtin_mock_models(no_config_env: None) -> None:
    config = resolve_config(None)
    assert list(config.models) == ["mock-echo", "mock-chat", "mock-embed"]
    assert {p.type for p in config.providers.values()} == {"mock"}
    assert config.auth.master_key is None


def test_builtin_default_takes_the_master_key_from_the_environment(
    no_config_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_MASTER_KEY", "sk-gw-from-env")
    master_key = resolve_config(None).auth.master_key
    assert master_key is not None and master_key.get_secret_value() == "sk-gw-from-env"


def test_gateway_config_variable_names_the_file_to_load(
    tmp_path: Path, no_config_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "gateway.yaml"
    write_one_model_config(path, "only")
    monkeypatch.setenv("GATEWAY_CONFIG", str(path))
    assert list(resolve_config(None).models) == ["only"]


def test_explicit_path_wins_over_gateway_config_variable(
    tmp_path: Path, no_config_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    explicit = tmp_path / "explicit.yaml"
    write_one_model_config(explicit, "mine")
    monkeypatch.setenv("GATEWAY_CONFIG", str(tmp_path / "does-not-exist.yaml"))
    assert list(resolve_config(explicit).models) == ["mine"]


def test_resolve_config_accepts_a_mapping_and_a_ready_config() -> None:
    config = resolve_config(mock_config())
    assert isinstance(config, GatewayConfig)
    assert resolve_config(config) is config


def test_redis_limits_without_a_redis_url_is_reported() -> None:
    with pytest.raises(ConfigError, match=r"limits\.backend is redis but no redis\.url"):
        load_config({"limits": {"backend": "redis"}})
