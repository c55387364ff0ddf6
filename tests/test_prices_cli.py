"""``llm-gateway prices``: what each configured deployment costs, run as a user would run it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_cli import run_cli

CONFIG = """\
providers:
  openai: {type: openai, api_key: sk-test}
  azure-eu: {type: azure, endpoint: https://contoso.openai.azure.com, api_key: k, api_version: "2024-10-21"}
  mistral: {type: mistral, api_key: k}
  vllm: {type: openai, base_url: http://127.0.0.1:8000/v1}
  mock: {type: mock}
models:
  gpt-4o:
    deployments:
      - {provider: azure-eu, deployment: prod-1, base_model: gpt-4o-2024-08-06}
      - {provider: openai, model: gpt-4o, price: {input: "2.25", output: 9}}
  large:
    deployments: [{provider: mistral, model: mistral-large-latest}]
  medium:
    deployments: [{provider: mistral, model: mistral-medium-latest}]
  llama:
    deployments: [{provider: vllm, model: llama-3.1-8b}, {provider: vllm, model: qwen-7b}]
  echo:
    deployments: [{provider: mock, model: mock-echo}]
prices:
  openai:
    qwen-7b: {input: "0.05", output: "0.1", source: our GPU bill}
"""  # noqa: E501


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG)
    return path


def row(output: str, *cells: str) -> str:
    """The one table line that has every one of ``cells`` among its cells."""
    found = [line for line in output.splitlines() if all(c in line.split() for c in cells)]
    assert len(found) == 1, f"expected one row with {cells}, got {found}"
    return found[0]


def test_prices_lists_each_deployment_with_its_effective_price(config_file: Path) -> None:
    result = run_cli("prices", "--config", str(config_file))

    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.splitlines()[0].split() == [
        "MODEL",
        "PROVIDER",
        "DEPLOYMENT",
        "PRICED",
        "AS",
        "INPUT",
        "CACHED",
        "OUTPUT",
        "REASONING",
        "EMBED",
        "SOURCE",
        "EFFECTIVE",
        "NOTE",
    ]
    azure = row(out, "gpt-4o", "prod-1")
    assert azure.split()[4:9] == ["gpt-4o", "2.5", "1.25", "10", "10"]
    assert "https://developers.openai.com/api/docs/pricing" in azure  # OpenAI's list price
    override = row(out, "gpt-4o", "openai")
    # the input override keeps gpt-4o's cache discount (half): 2.25 -> 1.125
    assert override.split()[4:9] == ["gpt-4o", "2.25", "1.125", "9", "9"]
    assert override.split()[-1] == "override"
    mistral = row(out, "large", "mistral-large-latest")
    assert mistral.split()[4:9] == ["mistral-large", "2", "0.2", "6", "6"]
    medium = row(out, "medium", "mistral-medium-latest")
    # the alias's dated price: Mistral Medium 3.5's since 2026-06-16
    assert medium.split()[4:9] == ["mistral-medium-latest", "1.5", "0.15", "7.5", "7.5"]
    assert medium.split()[-2:] == ["2026-06-16", "-"]
    assert "https://mistral.ai/pricing/api" in medium
    assert "from genai-prices 0.2.3 (prices dated up to 2026-10-29)" in out
    assert row(out, "llama", "qwen-7b").split()[-1] == "config"
    assert "our GPU bill" in row(out, "llama", "qwen-7b")
    assert "free" not in out
    assert row(out, "echo", "mock-echo").split()[4:10] == [
        "(any",
        "mock",
        "model)",
        "0",
        "0",
        "0",
    ]


def test_prices_marks_and_explains_deployments_without_a_price(config_file: Path) -> None:
    result = run_cli("prices", "--config", str(config_file))

    unknown = row(result.stdout, "llama", "llama-3.1-8b")
    assert "UNKNOWN" in unknown.split()
    assert (
        "warning: models.llama.deployments[0] (vllm/llama-3.1-8b): no price is known for "
        "openai model 'llama-3.1-8b'; give the deployment a `price:` or add "
        "`prices.openai.<model>` to the config; until then its calls are recorded with an "
        "unknown cost"
    ) in result.stdout
    assert result.stdout.count("warning:") == 1


def test_prices_all_prints_the_whole_catalog_with_sources(config_file: Path) -> None:
    result = run_cli("prices", "--all", "--config", str(config_file))

    assert result.returncode == 0, result.stderr
    out = result.stdout
    for heading in ("[openai]", "[azure]", "[mistral]", "[azure-ai]", "[mock]"):
        assert heading in out
    openai_page = "https://developers.openai.com/api/docs/pricing"
    openai = out.split("[openai]")[1].split("\n\n[")[0]
    nano = row(openai, "gpt-4.1-nano", openai_page)
    assert nano.split()[2:5] == ["0.1", "0.025", "0.4"]
    assert row(openai, "text-embedding-3-large", openai_page).split()[6] == "0.13"
    long_context = row(openai, "gpt-5.4", openai_page)
    assert "tiers>272000" in long_context
    assert "service:flex/priority/fast" in long_context
    assert "https://mistral.ai/pricing/api" in out
    assert "basis" not in out.lower() and "knowledge" not in out
    assert "qwen-7b (config)" in out
    assert "provisioned (PTU)" in out  # the Azure note on deployment types priced otherwise


def test_prices_reports_a_broken_config_like_every_command(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "providers: {m: {type: mock}}\n"
        "models: {x: {deployments: [{provider: m, model: a, price: {input: -1}}]}}\n"
    )
    result = run_cli("prices", "--config", str(path))

    assert result.returncode == 2
    assert "models.x.deployments[0].price.input: Input should be greater than or equal to 0" in (
        result.stderr
    )


def test_prices_diff_finds_nothing_when_the_installed_dataset_made_the_shipped_file() -> None:
    result = run_cli("prices", "diff")

    assert result.returncode == 0, result.stderr
    assert "shipped: genai-prices 0.2.3; installed: genai-prices 0.2.3" in result.stdout
    assert "no price differs" in result.stdout


def test_prices_diff_lists_changed_added_and_removed_prices(tmp_path: Path) -> None:
    from gateway.costs.catalog import generated_text

    older = generated_text().replace("version: 0.2.3", "version: 0.2.2", 1)
    # An older dataset: gpt-4.1-nano cost more, gpt-5.4 did not exist, and it listed a model
    # the installed one no longer has.
    start = older.index("      gpt-4.1-nano:\n")
    older = older[:start] + older[start:].replace("input: 0.1\n", "input: 0.2\n", 1)
    start = older.index("      gpt-5.4:\n")
    end = older.index("      gpt-5.4-image-2:\n")
    older = older[:start] + older[end:]
    older = older.replace(
        "    models:\n", "    models:\n      gpt-retired:\n        input: 1.0\n", 1
    )
    path = tmp_path / "older.yaml"
    path.write_text(older)

    result = run_cli("prices", "diff", "--shipped", str(path))

    assert result.returncode == 1, result.stderr
    out = result.stdout
    assert "shipped: genai-prices 0.2.2; installed: genai-prices 0.2.3" in out
    assert "changed  openai/gpt-4.1-nano  input: 0.2 -> 0.1" in out
    assert "added    openai/gpt-5.4  input=2.5 cached_input=0.25 output=15.0" in out
    assert any(line.startswith("removed  ") and "/gpt-retired" in line for line in out.splitlines())


def test_prices_shows_the_uplift_of_a_data_zone_deployment(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "providers:\n"
        "  az: {type: azure, endpoint: https://c.openai.azure.com, api_key: k,"
        " api_version: '2024-10-21'}\n"
        "models:\n"
        "  dz: {deployments: [{provider: az, deployment: d, base_model: gpt-4o,"
        " residency: data_zone}]}\n"
        "  odd: {deployments: [{provider: az, deployment: e, base_model: gpt-4o,"
        " residency: eu}]}\n"
    )
    result = run_cli("prices", "--config", str(path))

    assert result.returncode == 0, result.stderr
    assert "x1.1" in row(result.stdout, "dz", "d")
    assert "residency 'eu' has no documented uplift in price family 'azure'" in result.stdout
