"""Costs: the price catalog, effective prices per deployment, and exact cost arithmetic.

Every expected figure is computed by hand from the catalog's list prices (USD per 1M tokens)
and written out as a literal, so a wrong price or a wrong formula cannot agree with itself.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from gateway.config import GatewayConfig, load_config
from gateway.costs.catalog import Price, PriceCatalog
from gateway.costs.compute import Cost, compute_cost, total_usd
from gateway.costs.pricing import PriceBook, price_family
from gateway.costs.report import unpriced_deployments
from gateway.errors import ConfigError
from gateway.facts import usd_str
from gateway.routing import Router

CATALOG = PriceCatalog.shipped()

PROVIDERS: dict[str, Any] = {
    "openai": {"type": "openai", "api_key": "sk-test"},
    "azure-eu": {
        "type": "azure",
        "endpoint": "https://contoso.openai.azure.com",
        "api_key": "k",
        "api_version": "2024-10-21",
    },
    "mistral": {"type": "mistral", "api_key": "k"},
    "mistral-azure": {
        "type": "mistral",
        "api_key": "k",
        "platform": "azure_serverless",
        "base_url": "https://large.westeurope.inference.ai.azure.com",
    },
    "vllm": {"type": "openai", "base_url": "http://127.0.0.1:8000/v1"},
    "mock": {"type": "mock"},
}


def config(models: dict[str, Any], **extra: Any) -> GatewayConfig:
    return load_config({"providers": PROVIDERS, "models": models, **extra})


def one(deployment: dict[str, Any], **extra: Any) -> GatewayConfig:
    return config({"m": {"deployments": [deployment]}}, **extra)


def price_of(
    cfg: GatewayConfig, answered: str | None = None, model: str = "m", index: int = 0
) -> Price | None:
    deployment = Router(cfg).deployments[model][index]
    return PriceBook(cfg).price(deployment, answered)


def usage(
    prompt: int, completion: int = 0, *, cached: int | None = None, reasoning: int | None = None
) -> dict[str, Any]:
    u: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached is not None:
        u["prompt_tokens_details"] = {"cached_tokens": cached}
    if reasoning is not None:
        u["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return u


# --- the catalog: names, snapshots and the traps ----------------------------------------------


@pytest.mark.parametrize(
    ("family", "answered", "entry"),
    [
        ("openai", "gpt-4o", "gpt-4o"),
        ("openai", "gpt-4o-2024-08-06", "gpt-4o"),
        ("openai", "gpt-4o-2024-11-20", "gpt-4o"),
        ("openai", "gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("openai", "gpt-4.1-2025-04-14", "gpt-4.1"),
        ("openai", "gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
        ("openai", "gpt-4.1-nano-2025-04-14", "gpt-4.1-nano"),
        ("openai", "o3-2025-04-16", "o3"),
        ("openai", "o4-mini-2025-04-16", "o4-mini"),
        ("openai", "gpt-5-2025-08-07", "gpt-5"),
        ("openai", "gpt-5-mini-2025-08-07", "gpt-5-mini"),
        ("openai", "gpt-5-nano-2025-08-07", "gpt-5-nano"),
        ("openai", "GPT-4o", "gpt-4o"),
        ("azure", "gpt-4o", "gpt-4o"),
        ("azure", "gpt-4.1-mini", "gpt-4.1-mini"),
        ("mistral", "mistral-large-latest", "mistral-large"),
        ("mistral", "mistral-large-2411", "mistral-large"),
        ("mistral", "mistral-small-latest", "mistral-small-latest"),
        ("mistral", "mistral-small-2503", "mistral-small-2503"),
        ("mistral", "codestral-latest", "codestral"),
        ("mistral", "ministral-8b-latest", "ministral-8b-latest"),
        ("mistral", "ministral-3b-2410", "ministral-3b"),
        ("mistral", "mistral-medium-latest", "mistral-medium-latest"),
        ("mistral", "mistral-medium-2604", "mistral-medium-3-5"),
        ("azure-ai", "Mistral-Large-2411", "mistral-large-2411"),
    ],
)
def test_dated_and_aliased_names_resolve_to_their_family_entry(
    family: str, answered: str, entry: str
) -> None:
    price = CATALOG.lookup(family, answered)
    assert price is not None
    assert price.model == entry


def test_a_mini_snapshot_is_never_priced_as_the_bigger_model() -> None:
    mini = CATALOG.lookup("openai", "gpt-4o-mini-2024-07-18")
    assert mini is not None
    assert (mini.input, mini.output) == (Decimal("0.15"), Decimal("0.60"))
    four_one_mini = CATALOG.lookup("openai", "gpt-4.1-mini")
    assert four_one_mini is not None
    assert four_one_mini.input == Decimal("0.40")
    nano = CATALOG.lookup("openai", "gpt-5-nano")
    assert nano is not None
    assert nano.input == Decimal("0.05")


def test_a_snapshot_with_its_own_price_is_not_priced_as_its_family() -> None:
    first = CATALOG.lookup("openai", "gpt-4o-2024-05-13")
    assert first is not None
    assert (first.input, first.output, first.cached_input) == (
        Decimal("5.00"),
        Decimal("15.00"),
        None,
    )


@pytest.mark.parametrize(
    ("family", "model"),
    [
        ("openai", "ft:gpt-4o-mini-2024-07-18:acme::abc123"),  # fine-tunes cost more
        ("openai", "llama-3.1-8b"),
        ("openai", "gpt-4.1-turbo"),
        ("mistral", "mistral-small-2409"),  # an older snapshot, priced differently
        ("mistral", "gpt-4o"),
        ("nope", "gpt-4o"),
    ],
)
def test_names_the_catalog_does_not_know_have_no_price(family: str, model: str) -> None:
    assert CATALOG.lookup(family, model) is None


def test_the_catalog_covers_the_required_models_with_source_and_date() -> None:
    required = {
        "openai": [
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-4.1",
            "gpt-4.1-mini",
            "gpt-4.1-nano",
            "o3",
            "o4-mini",
            "gpt-5",
            "gpt-5-mini",
            "gpt-5-nano",
            "text-embedding-3-small",
            "text-embedding-3-large",
        ],
        "mistral": [
            "mistral-large-latest",
            "mistral-medium-latest",
            "mistral-small-latest",
            "codestral-latest",
            "ministral-8b-latest",
            "mistral-embed",
        ],
        "azure-ai": ["mistral-large-2411", "mistral-small-2503"],
    }
    required["azure"] = required["openai"]
    for family, models in required.items():
        for model in models:
            price = CATALOG.lookup(family, model)
            assert price is not None, (family, model)
            assert price.source and price.source.startswith("https://"), (family, model)
            assert CATALOG.dataset is not None or price.checked, (family, model)


def test_openai_list_prices_are_the_documented_ones() -> None:
    def rates(model: str) -> tuple[Decimal | None, ...]:
        p = CATALOG.lookup("openai", model)
        assert p is not None
        return (p.input, p.cached_input, p.output)

    assert rates("gpt-4o") == (Decimal("2.50"), Decimal("1.25"), Decimal("10.00"))
    assert rates("gpt-4.1") == (Decimal("2.00"), Decimal("0.50"), Decimal("8.00"))
    assert rates("o3") == (Decimal("2.00"), Decimal("0.50"), Decimal("8.00"))
    assert rates("gpt-5") == (Decimal("1.25"), Decimal("0.125"), Decimal("10.00"))


def test_catalog_numbers_are_read_from_their_text_not_through_floats() -> None:
    o4 = CATALOG.lookup("openai", "o4-mini")
    assert o4 is not None
    assert o4.cached_input == Decimal("0.275")
    assert str(o4.cached_input) == "0.275"


def test_mistral_on_azure_ai_is_its_own_price_family() -> None:
    cfg = config({"m": {"deployments": [{"provider": "mistral-azure", "model": "x"}]}})
    assert price_family(cfg.providers["mistral-azure"]) == "azure-ai"
    assert price_family(cfg.providers["mistral"]) == "mistral"
    assert price_family(cfg.providers["azure-eu"]) == "azure"


# --- the cost matrix ------------------------------------------------------------------------


def test_gpt4o_one_thousand_prompt_five_hundred_completion() -> None:
    # 1,000 x 2.50 / 1M = 0.0025; 500 x 10 / 1M = 0.005
    cost = compute_cost(usage(1000, 500), CATALOG.lookup("openai", "gpt-4o"))
    assert cost.total == Decimal("0.0075")
    assert (cost.input, cost.output, cost.cached_input, cost.reasoning) == (
        Decimal("0.0025"),
        Decimal("0.005"),
        Decimal(0),
        Decimal(0),
    )
    assert not cost.estimated
    assert cost.usd_str() == "0.0075"


def test_gpt4o_cached_prompt_tokens_are_billed_once_at_the_cached_price() -> None:
    # 500 uncached x 2.50 = 0.00125; 1,500 cached x 1.25 = 0.001875; 100 x 10 = 0.001
    cost = compute_cost(usage(2000, 100, cached=1500), CATALOG.lookup("openai", "gpt-4o"))
    assert cost.input == Decimal("0.00125")
    assert cost.cached_input == Decimal("0.001875")
    assert cost.output == Decimal("0.001")
    assert cost.total == Decimal("0.004125")


def test_o3_reasoning_tokens_are_part_of_completion_and_not_counted_twice() -> None:
    # 1,200 x 2 = 0.0024; 500 visible x 8 = 0.004; 2,500 reasoning x 8 = 0.02
    cost = compute_cost(usage(1200, 3000, reasoning=2500), CATALOG.lookup("openai", "o3"))
    assert cost.output == Decimal("0.004")
    assert cost.reasoning == Decimal("0.02")
    assert cost.total == Decimal("0.0264")


def test_reasoning_tokens_at_their_own_price_when_one_is_set() -> None:
    cfg = one(
        {
            "provider": "vllm",
            "model": "thinker",
            "price": {"input": 1, "output": 2, "reasoning": "0.5"},
        }
    )
    # 1,000 x 1 = 0.001; 1,000 visible x 2 = 0.002; 2,000 reasoning x 0.5 = 0.001
    cost = compute_cost(usage(1000, 3000, reasoning=2000), price_of(cfg))
    assert cost.total == Decimal("0.004")
    assert cost.reasoning == Decimal("0.001")


def test_text_embedding_3_small_prompt_tokens_at_the_embedding_price() -> None:
    # 12,345 x 0.02 / 1M = 0.0002469
    price = CATALOG.lookup("openai", "text-embedding-3-small")
    cost = compute_cost({"prompt_tokens": 12345, "total_tokens": 12345}, price, embedding=True)
    assert cost.total == Decimal("0.0002469")
    assert cost.usd_str() == "0.0002469"


def test_azure_deployment_is_priced_by_its_base_model_not_its_name() -> None:
    cfg = one({"provider": "azure-eu", "deployment": "prod-1", "base_model": "gpt-4o-2024-08-06"})
    price = price_of(cfg)
    assert price is not None
    assert (price.family, price.model) == ("azure", "gpt-4o")
    assert compute_cost(usage(1000, 500), price).total == Decimal("0.0075")


def test_azure_without_base_model_is_priced_by_the_model_azure_answers_with() -> None:
    cfg = one({"provider": "azure-eu", "deployment": "prod-1"})
    price = price_of(cfg, answered="gpt-4o-mini-2024-07-18")
    # 1,000 x 0.15 = 0.00015; 500 x 0.60 = 0.0003
    assert compute_cost(usage(1000, 500), price).total == Decimal("0.00045")


def test_an_azure_deployment_name_is_never_taken_for_a_model_name() -> None:
    cfg = one({"provider": "azure-eu", "deployment": "gpt-4o"})  # might run anything
    assert price_of(cfg) is None


def test_mistral_large_cached_prompt_tokens_cost_ten_percent_of_input() -> None:
    cfg = one({"provider": "mistral", "model": "mistral-large-latest"})
    price = price_of(cfg, answered="mistral-large-2411")
    # 6,000 x 2 = 0.012; 4,000 x 0.20 = 0.0008; 1,000 x 6 = 0.006
    cost = compute_cost(usage(10000, 1000, cached=4000), price)
    assert cost.cached_input == Decimal("0.0008")
    assert cost.total == Decimal("0.0188")


def test_mistral_model_on_azure_ai_is_priced_by_azure() -> None:
    cfg = one({"provider": "mistral-azure", "model": "Mistral-Large-2411"})
    price = price_of(cfg)
    assert price is not None
    assert price.family == "azure-ai"
    # no cache discount is known on Azure: 10,000 x 2 = 0.02; 1,000 x 6 = 0.006
    assert compute_cost(usage(10000, 1000, cached=4000), price).total == Decimal("0.026")


def test_unknown_model_has_an_unknown_cost_never_zero() -> None:
    cfg = one({"provider": "vllm", "model": "llama-3.1-8b"})
    price = price_of(cfg)
    cost = compute_cost(usage(1000, 500), price)
    assert price is None
    assert cost.unknown
    assert cost.total is None
    assert cost.usd_str() == "unknown"
    assert cost.reason == "no price is known for this model"


def test_unknown_cost_stays_unknown_when_added_or_summed() -> None:
    known = compute_cost(usage(1000, 500), CATALOG.lookup("openai", "gpt-4o"))
    unknown = compute_cost(usage(1000, 500), None)
    assert (known + unknown).total is None
    assert total_usd([known, unknown, known]) is None
    assert total_usd([known, known]) == Decimal("0.015")


def test_a_price_without_an_output_figure_makes_completions_unknown() -> None:
    cfg = one({"provider": "vllm", "model": "half", "price": {"input": 1}})
    price = price_of(cfg)
    assert compute_cost(usage(1000, 0), price).total == Decimal("0.001")
    cost = compute_cost(usage(1000, 10), price)
    assert cost.unknown
    assert cost.reason == "openai model 'half' has no output price"


def test_mock_models_are_free_on_purpose() -> None:
    cfg = one({"provider": "mock", "model": "mock-chat"})
    cost = compute_cost(usage(1000, 500), price_of(cfg))
    assert not cost.unknown
    assert cost.total == Decimal(0)
    assert cost.usd_str() == "0"


def test_deployment_price_override_wins_over_the_catalog() -> None:
    cfg = one(
        {"provider": "openai", "model": "gpt-4o", "price": {"input": "3", "output": 12}},
    )
    price = price_of(cfg, answered="gpt-4o-2024-08-06")
    assert price is not None
    assert price.origin == "deployment"
    # 1,000 x 3 = 0.003; 500 x 12 = 0.006
    assert compute_cost(usage(1000, 500), price).total == Decimal("0.009")
    # an input override keeps the catalog's cache discount (1.25 / 2.50), not its old
    # cached figure: cached 1,000 x 1.50 = 0.0015
    assert compute_cost(usage(1000, 0, cached=1000), price).total == Decimal("0.0015")


def test_override_for_an_uncatalogued_mistral_model_keeps_the_ten_percent_cache_rule() -> None:
    cfg = one({"provider": "mistral", "model": "my-finetune", "price": {"input": 1, "output": 3}})
    # 1,000 uncached x 1 = 0.001; 1,000 cached x 0.1 = 0.0001
    assert compute_cost(usage(2000, 0, cached=1000), price_of(cfg)).total == Decimal("0.0011")


def test_config_prices_section_adds_a_model_to_the_catalog() -> None:
    cfg = one(
        {"provider": "vllm", "model": "llama-3.1-8b"},
        prices={"openai": {"llama-3.1-8b": {"input": "0.1", "output": "0.2"}}},
    )
    price = price_of(cfg)
    assert price is not None
    assert price.origin == "config"
    # 1,000 x 0.1 = 0.0001; 500 x 0.2 = 0.0001
    assert compute_cost(usage(1000, 500), price).total == Decimal("0.0002")


def test_config_prices_section_overrides_a_catalog_price_field_by_field() -> None:
    cfg = one(
        {"provider": "openai", "model": "gpt-4o"},
        prices={"openai": {"gpt-4o": {"output": 9}}},
    )
    price = price_of(cfg, answered="gpt-4o-2024-11-20")
    assert price is not None
    assert (price.input, price.output, price.origin) == (Decimal("2.50"), Decimal(9), "config")


def test_duplicate_deployments_keep_their_own_prices() -> None:
    cfg = config(
        {
            "m": {
                "deployments": [
                    {"provider": "openai", "model": "gpt-4o"},
                    {"provider": "openai", "model": "gpt-4o", "price": {"input": 1, "output": 1}},
                ]
            }
        }
    )
    first, second = (price_of(cfg, index=i) for i in (0, 1))
    assert first is not None and second is not None
    assert (first.input, second.input) == (Decimal("2.50"), Decimal(1))


def test_estimated_usage_makes_an_estimated_cost() -> None:
    u = usage(1000, 500) | {"estimated_by": "o200k_base"}
    cost = compute_cost(u, CATALOG.lookup("openai", "gpt-4o"))
    assert cost.estimated
    assert cost.total == Decimal("0.0075")


def test_odd_usage_values_count_as_zero_and_cached_never_exceeds_prompt() -> None:
    price = CATALOG.lookup("openai", "gpt-4o")
    odd = {
        "prompt_tokens": 100,
        "completion_tokens": None,
        "prompt_tokens_details": {"cached_tokens": 500},
    }
    # all 100 prompt tokens cached: 100 x 1.25 = 0.000125
    assert compute_cost(odd, price).total == Decimal("0.000125")
    assert compute_cost({"prompt_tokens": -5, "completion_tokens": True}, price).total == 0


# --- exact decimals -------------------------------------------------------------------------


def test_a_million_tiny_costs_add_up_exactly() -> None:
    price = CATALOG.lookup("openai", "gpt-5-nano")
    one_token = compute_cost(usage(1, 0), price)  # 1 x 0.05 / 1M
    assert one_token.total == Decimal("0.00000005")
    total = total_usd([one_token] * 1_000_000)
    assert total == Decimal("0.05")
    assert usd_str(total) == "0.05"
    as_floats = sum([0.05 / 1_000_000] * 1_000_000)
    assert as_floats != 0.05  # what the float version would have recorded


def test_usd_str_is_plain_decimal_without_exponent() -> None:
    assert usd_str(Decimal("1.2345E-4")) == "0.00012345"
    assert usd_str(Decimal("0.00000001")) == "0.00000001"
    assert usd_str(Decimal("0E-8")) == "0"
    assert usd_str(Decimal("1.5E+3")) == "1500"
    assert usd_str(Decimal("12.3400")) == "12.34"


def test_cost_addition_keeps_the_breakdown() -> None:
    price = CATALOG.lookup("openai", "gpt-4o")
    a = compute_cost(usage(1000, 500), price)
    b = compute_cost(usage(2000, 100, cached=1500), price)
    both: Cost = a + b
    assert both.total == Decimal("0.011625")
    assert both.input == Decimal("0.00375")
    assert both.cached_input == Decimal("0.001875")
    assert both.output == Decimal("0.006")


# --- config validation ----------------------------------------------------------------------


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(data)
    return [line.removeprefix("  - ") for line in str(info.value).splitlines()[1:]]


def test_price_figures_must_be_non_negative_numbers() -> None:
    lines = problems(
        {
            "providers": PROVIDERS,
            "models": {
                "m": {
                    "deployments": [
                        {"provider": "openai", "model": "x", "price": {"input": -1, "output": "a"}}
                    ]
                }
            },
        }
    )
    assert any(line.startswith("models.m.deployments[0].price.input: ") for line in lines)
    assert any(line.startswith("models.m.deployments[0].price.output: ") for line in lines)


def test_price_keys_are_checked() -> None:
    lines = problems(
        {
            "providers": PROVIDERS,
            "models": {
                "m": {"deployments": [{"provider": "openai", "model": "x", "price": {"inptu": 1}}]}
            },
        }
    )
    assert (
        "models.m.deployments[0].price.inptu: unknown key (check its spelling and indentation)"
        in lines
    )


def test_an_empty_price_is_refused() -> None:
    lines = problems(
        {
            "providers": PROVIDERS,
            "models": {"m": {"deployments": [{"provider": "openai", "model": "x", "price": {}}]}},
        }
    )
    assert any(
        line.startswith("models.m.deployments[0].price: ") and "at least one of" in line
        for line in lines
    )


def test_prices_section_must_name_a_known_provider_type() -> None:
    lines = problems(
        {
            "providers": PROVIDERS,
            "models": {"m": {"deployments": [{"provider": "openai", "model": "x"}]}},
            "prices": {"opneai": {"x": {"input": 1}}},
        }
    )
    assert any(
        line.startswith("prices.opneai: unknown provider type 'opneai'; expected one of ")
        and "azure-ai" in line
        for line in lines
    )


def test_price_numbers_are_exact_decimals_from_strings_or_numbers() -> None:
    cfg = one({"provider": "vllm", "model": "x", "price": {"input": 0.1, "output": "0.3"}})
    price = cfg.models["m"].deployments[0].price
    assert price is not None
    assert (price.input, price.output) == (Decimal("0.1"), Decimal("0.3"))


# --- start-up warnings ----------------------------------------------------------------------


def test_unpriced_deployments_names_each_deployment_without_a_price() -> None:
    cfg = config(
        {
            "chat": {
                "deployments": [
                    {"provider": "openai", "model": "gpt-4o"},
                    {"provider": "vllm", "model": "llama-3.1-8b"},
                    {"provider": "azure-eu", "deployment": "prod-7"},
                    {"provider": "mock", "model": "mock-chat"},
                ]
            }
        }
    )
    found = unpriced_deployments(cfg, CATALOG)
    assert [row.path for row in found] == [
        "models.chat.deployments[1]",
        "models.chat.deployments[2]",
    ]
    assert found[0].message.startswith(
        "models.chat.deployments[1] (vllm/llama-3.1-8b): no price is known for openai model "
        "'llama-3.1-8b'; give the deployment a `price:` or add `prices.openai.<model>`"
    )
    assert "set base_model" in found[1].message


# --- prices at the time of the call -------------------------------------------------------------


def test_a_call_is_priced_at_the_price_in_effect_on_its_date() -> None:
    medium = CATALOG.lookup("mistral", "mistral-medium-latest")
    assert medium is not None
    # genai-prices: 0.4 / 2 until 2026-06-15, 1.5 / 7.5 from 2026-06-16
    before = compute_cost(usage(1000, 1000), medium, at=date(2026, 6, 15))
    after = compute_cost(usage(1000, 1000), medium, at=datetime(2026, 6, 16, 0, 1, tzinfo=UTC))
    assert (before.total, after.total) == (Decimal("0.0024"), Decimal("0.009"))
    assert (before.price and before.price.effective, after.price and after.price.effective) == (
        None,
        "2026-06-16",
    )


def test_o3_is_priced_at_its_launch_price_before_the_june_2025_cut() -> None:
    o3 = CATALOG.lookup("openai", "o3")
    assert o3 is not None
    assert compute_cost(usage(1000, 1000), o3, at=date(2025, 6, 9)).total == Decimal("0.05")
    assert compute_cost(usage(1000, 1000), o3, at=date(2025, 6, 10)).total == Decimal("0.01")


def test_a_service_tier_price_applies_only_from_its_own_date() -> None:
    gpt54 = CATALOG.lookup("openai", "gpt-5.4")
    assert gpt54 is not None
    # the dataset dates its flex price 2026-10-12; before that, OpenAI's documented half
    early = compute_cost(
        usage(1000, 0, cached=1000), gpt54, at=date(2026, 10, 1), service_tier="flex"
    )
    late = compute_cost(
        usage(1000, 0, cached=1000), gpt54, at=date(2026, 10, 12), service_tier="flex"
    )
    assert (early.total, late.total) == (Decimal("0.000125"), Decimal("0.00013"))


def test_the_shipped_catalog_is_what_the_pinned_genai_prices_generates() -> None:
    from gateway.costs.build_catalog import OUTPUT, build, generated_on, render

    shipped = OUTPUT.read_text(encoding="utf-8")
    assert shipped == render(build(generated_on(shipped)))


def test_the_reserve_rate_covers_long_context_the_asked_tier_and_the_uplift() -> None:
    cfg = one({"provider": "openai", "model": "gpt-5.4", "residency": "eu"})
    price = price_of(cfg)
    assert price is not None
    # output: 15 standard, 22.5 above 272k; input: 2.5, 5 above 272k; x 1.1 for EU residency
    assert price.reserve_rate("output") == Decimal("22.5") * Decimal("1.1")
    assert price.reserve_rate("input") == Decimal("5") * Decimal("1.1")
    # a request asking for priority reserves at least priority's standard output price (30)
    priority = price.reserve_rate("output", "priority")
    assert priority is not None and priority >= Decimal("30") * Decimal("1.1")


def test_a_deployments_own_price_already_includes_its_residency() -> None:
    deal: dict[str, Any] = {"provider": "azure-eu", "deployment": "d", "base_model": "gpt-4o"}
    deal |= {"residency": "data_zone", "price": {"input": "2.75", "output": 11}}
    own = price_of(one(deal))
    assert own is not None and own.multiplier == 1
    # 1,000 x 2.75 + 1,000 x 11, not x 1.1 again
    assert compute_cost(usage(1000, 1000), own).total == Decimal("0.01375")
    stated = price_of(one({**deal, "price_uplift": "0.1"}))
    assert stated is not None and stated.multiplier == Decimal("1.1")
