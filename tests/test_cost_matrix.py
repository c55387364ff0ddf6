"""Every price dimension through the proxy: an upstream reports a model, a usage and a service
tier; the gateway's ``x-gateway-cost`` must equal the hand-computed Decimal.

Prices used below (USD per 1M tokens, genai-prices 0.2.3 as shipped):
gpt-5.4 2.5 / cached 0.25 / out 15, above 272,000 prompt tokens 5 / 0.5 / 22.5, flex
1.25 / 0.13 / 7.5, priority 5 / 0.5 / 30; gpt-4o 2.5 / 1.25 / 10; gpt-4o-2024-05-13 5 / 15;
gpt-audio text 2.5 / 10, audio 32 / 64; gpt-5.6-cyber 12.5 / cached 1.25 / cache write
15.625 / out 75; o3-pro 20 / 80 (no priority price of its own: OpenAI's x2);
mistral-medium-3-5 (mistral-medium-2604) 1.5 / 7.5; mistral-medium-2505 0.4 / 2.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import SINGLE_ATTEMPT, GatewayFactory
from tests.emulators.billed import BilledEmulator
from tests.harness import ServerThread

M = Decimal(10) ** 6


@pytest.fixture(scope="module")
def upstream() -> Iterator[BilledEmulator]:
    emulator = BilledEmulator()
    with ServerThread(emulator.app) as server:
        emulator.url = server.url
        yield emulator


@pytest.fixture
def billed(upstream: BilledEmulator) -> BilledEmulator:
    upstream.reset()
    return upstream


@pytest.fixture(scope="module")
def gateway(upstream: BilledEmulator, start_gateway: GatewayFactory) -> str:
    url = upstream.url

    def one(provider: str, **deployment: Any) -> dict[str, Any]:
        return {"deployments": [{"provider": provider, **deployment}]}

    return start_gateway(
        {
            "routing": SINGLE_ATTEMPT,
            "providers": {
                "openai": {"type": "openai", "api_key": "sk-test", "base_url": url + "/v1"},
                "azure": {
                    "type": "azure",
                    "endpoint": url,
                    "api_key": "k",
                    "api_version": "2024-10-21",
                },
                "mistral": {"type": "mistral", "api_key": "k", "base_url": url + "/v1"},
            },
            "models": {
                "gpt-5.4": one("openai", model="gpt-5.4"),
                "gpt-audio": one("openai", model="gpt-audio"),
                "cyber": one("openai", model="gpt-5.6-cyber"),
                "o3-pro": one("openai", model="o3-pro"),
                "gpt-4o": one("openai", model="gpt-4o"),
                "gpt-4o-eu": one("openai", model="gpt-4o", residency="eu"),
                "gpt-4o-uplift": one("openai", model="gpt-4o", price_uplift="0.05"),
                "gpt-4o-deal": one("openai", model="gpt-4o", price={"input": "2.25"}),
                "gpt-4o-deal-cached": one(
                    "openai", model="gpt-4o", price={"input": "2.25", "cached_input": "0.5"}
                ),
                "azure-4o": one("azure", deployment="prod", base_model="gpt-4o-2024-05-13"),
                "azure-dz": one(
                    "azure", deployment="dz", base_model="gpt-4o", residency="data_zone"
                ),
                "medium": one("mistral", model="mistral-medium-latest"),
                "medium-deal": one("mistral", model="mistral-medium-2604", price={"input": 1}),
            },
        }
    )


def usage(
    prompt: int,
    completion: int,
    *,
    cached: int = 0,
    written: int = 0,
    audio_in: int = 0,
    reasoning: int = 0,
    audio_out: int = 0,
) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {
            "cached_tokens": cached,
            "cache_write_tokens": written,
            "audio_tokens": audio_in,
        },
        "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": audio_out},
    }


def cost(gateway: str, model: str, **body: Any) -> str:
    answer = httpx.post(
        gateway + "/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], **body},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    return answer.headers["x-gateway-cost"]


def usd(*parts: tuple[int, str]) -> Decimal:
    """Sum of tokens x price per 1M, by hand."""
    return sum((Decimal(n) * Decimal(p) / M for n, p in parts), Decimal(0))


# --- tokens of each kind ------------------------------------------------------------------------


def test_cached_and_reasoning_tokens_are_billed_once_at_their_own_prices(billed, gateway):
    billed.answer("gpt-5.4-2026-03-05", usage(1000, 500, cached=200, reasoning=300))
    expected = usd((800, "2.5"), (200, "0.25"), (200, "15"), (300, "15"))
    assert expected == Decimal("0.00955")
    assert Decimal(cost(gateway, "gpt-5.4")) == expected


def test_a_prompt_over_the_long_context_threshold_bills_every_token_at_the_tier_price(
    billed, gateway
):
    billed.answer("gpt-5.4", usage(300_000, 1000, cached=100_000))
    expected = usd((200_000, "5"), (100_000, "0.5"), (1000, "22.5"))
    assert expected == Decimal("1.0725")
    assert Decimal(cost(gateway, "gpt-5.4")) == expected


def test_a_prompt_at_the_threshold_is_still_billed_at_the_base_price(billed, gateway):
    billed.answer("gpt-5.4", usage(272_000, 0))
    assert Decimal(cost(gateway, "gpt-5.4")) == usd((272_000, "2.5")) == Decimal("0.68")


def test_audio_tokens_are_billed_at_the_audio_prices(billed, gateway):
    billed.answer("gpt-audio", usage(1000, 500, audio_in=600, audio_out=400))
    expected = usd((400, "2.5"), (600, "32"), (100, "10"), (400, "64"))
    assert expected == Decimal("0.0468")
    assert Decimal(cost(gateway, "gpt-audio")) == expected


def test_audio_tokens_without_an_audio_price_make_the_cost_unknown(billed, gateway):
    billed.answer("gpt-4o", usage(1000, 10, audio_in=500))
    assert cost(gateway, "gpt-4o") == "unknown"


def test_cache_write_tokens_are_billed_at_the_cache_write_price(billed, gateway):
    billed.answer("gpt-5.6-cyber", usage(10_000, 100, cached=2000, written=3000))
    expected = usd((5000, "12.5"), (2000, "1.25"), (3000, "15.625"), (100, "75"))
    assert expected == Decimal("0.119375")
    assert Decimal(cost(gateway, "cyber")) == expected


# --- service tiers ------------------------------------------------------------------------------


def test_the_responses_flex_tier_is_billed_at_the_datasets_flex_price(billed, gateway):
    billed.answer("gpt-5.4", usage(1000, 1000, cached=0), service_tier="flex")
    assert Decimal(cost(gateway, "gpt-5.4", service_tier="flex")) == usd(
        (1000, "1.25"), (1000, "7.5")
    )


def test_the_responses_priority_tier_is_billed_at_the_datasets_priority_price(billed, gateway):
    billed.answer("gpt-5.4", usage(1000, 1000), service_tier="priority")
    assert Decimal(cost(gateway, "gpt-5.4")) == usd((1000, "5"), (1000, "30")) == Decimal("0.035")


def test_the_response_tier_wins_over_the_requested_one(billed, gateway):
    billed.answer("gpt-5.4", usage(1000, 1000), service_tier="default")
    assert Decimal(cost(gateway, "gpt-5.4", service_tier="priority")) == usd(
        (1000, "2.5"), (1000, "15")
    )


def test_the_requested_tier_applies_when_the_response_names_none(billed, gateway):
    billed.answer("gpt-5.4", usage(1000, 1000))
    assert Decimal(cost(gateway, "gpt-5.4", service_tier="priority")) == Decimal("0.035")


def test_a_tier_the_dataset_does_not_price_uses_the_familys_multiplier(billed, gateway):
    billed.answer("o3-pro-2025-06-10", usage(1000, 1000), service_tier="priority")
    assert Decimal(cost(gateway, "o3-pro")) == 2 * usd((1000, "20"), (1000, "80"))


def test_a_streamed_answer_is_billed_at_the_tier_its_chunks_name(billed, gateway):
    billed.answer("gpt-5.4", usage(1000, 1000), service_tier="flex")
    with httpx.stream(
        "POST",
        gateway + "/chat/completions",
        json={
            "model": "gpt-5.4",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        timeout=10,
    ) as answer:
        chunks = [
            orjson.loads(line[6:]) for line in answer.iter_lines() if line.startswith("data: {")
        ]
    costs = [c["usage"]["cost"] for c in chunks if c.get("usage")]
    assert [Decimal(c) for c in costs] == [usd((1000, "1.25"), (1000, "7.5"))]


# --- the model that answered --------------------------------------------------------------------


def test_a_mistral_alias_is_priced_as_the_snapshot_that_answered(billed, gateway):
    billed.answer("mistral-medium-2604", usage(1000, 1000))
    assert Decimal(cost(gateway, "medium")) == usd((1000, "1.5"), (1000, "7.5"))
    billed.answer("mistral-medium-2505", usage(1000, 1000))
    assert Decimal(cost(gateway, "medium")) == usd((1000, "0.4"), (1000, "2")) == Decimal("0.0024")


def test_an_unlisted_new_snapshot_is_priced_as_the_configured_alias(billed, gateway):
    # not as "mistral-medium" (Medium 3.1, 0.4 / 2): the alias's current price, 1.5 / 7.5
    billed.answer("mistral-medium-2612", usage(1000, 1000))
    assert Decimal(cost(gateway, "medium")) == Decimal("0.009")


def test_an_auto_upgraded_azure_deployment_is_priced_by_the_version_that_answered(billed, gateway):
    billed.answer("gpt-4o-2024-11-20", usage(1000, 1000))
    assert Decimal(cost(gateway, "azure-4o")) == usd((1000, "2.5"), (1000, "10"))
    billed.answer("gpt-4o-2024-05-13", usage(1000, 1000))
    assert Decimal(cost(gateway, "azure-4o")) == usd((1000, "5"), (1000, "15")) == Decimal("0.02")


# --- the deployment's residency and deals -------------------------------------------------------


def test_an_azure_data_zone_deployment_costs_ten_percent_more(billed, gateway):
    billed.answer("gpt-4o-2024-08-06", usage(1000, 1000))
    expected = usd((1000, "2.5"), (1000, "10")) * Decimal("1.1")
    assert expected == Decimal("0.01375")
    assert Decimal(cost(gateway, "azure-dz")) == expected


def test_an_openai_eu_residency_deployment_costs_ten_percent_more(billed, gateway):
    billed.answer("gpt-4o-2024-08-06", usage(1000, 1000))
    assert Decimal(cost(gateway, "gpt-4o-eu")) == Decimal("0.01375")


def test_a_deployments_price_uplift_scales_every_part(billed, gateway):
    billed.answer("gpt-4o-2024-08-06", usage(1000, 1000, cached=400))
    expected = usd((600, "2.5"), (400, "1.25"), (1000, "10")) * Decimal("1.05")
    assert Decimal(cost(gateway, "gpt-4o-uplift")) == expected


def test_a_partial_input_override_keeps_the_catalogs_cache_discount_not_its_cached_price(
    billed, gateway
):
    billed.answer("gpt-4o-2024-08-06", usage(1000, 100, cached=400))
    # gpt-4o caches at half its input price: 2.25 -> 1.125 (never the catalog's 1.25)
    expected = usd((600, "2.25"), (400, "1.125"), (100, "10"))
    assert expected == Decimal("0.0028")
    assert Decimal(cost(gateway, "gpt-4o-deal")) == expected
    assert Decimal(cost(gateway, "gpt-4o-deal-cached")) == usd(
        (600, "2.25"), (400, "0.5"), (100, "10")
    )


def test_a_partial_override_of_a_mistral_snapshot_keeps_its_ten_percent_cache(billed, gateway):
    billed.answer("mistral-medium-2604", usage(1000, 100, cached=500))
    # input 1 (the deal), cached 1 x 0.15 / 1.5 = 0.1, output the catalog's 7.5
    expected = usd((500, "1"), (500, "0.1"), (100, "7.5"))
    assert Decimal(cost(gateway, "medium-deal")) == expected


# --- the library prices the same way ------------------------------------------------------------


def test_the_library_prices_the_answered_snapshot_on_its_tier(billed):
    from gateway import Gateway

    url = billed.url
    config = {
        "routing": SINGLE_ATTEMPT,
        "providers": {
            "openai": {"type": "openai", "api_key": "sk-test", "base_url": url + "/v1"},
            "mistral": {"type": "mistral", "api_key": "k", "base_url": url + "/v1"},
        },
        "models": {
            "gpt-5.4": {"deployments": [{"provider": "openai", "model": "gpt-5.4"}]},
            "medium": {"deployments": [{"provider": "mistral", "model": "mistral-medium-latest"}]},
        },
        "ledger": {"enabled": False},
    }
    messages = [{"role": "user", "content": "hi"}]
    with Gateway(config) as gw:
        billed.answer("gpt-5.4", usage(300_000, 1000), service_tier="priority")
        priority = gw.chat.completions.create(model="gpt-5.4", messages=messages).facts
        billed.answer("mistral-medium-2505", usage(1000, 1000))
        snapshot = gw.chat.completions.create(model="medium", messages=messages).facts
    # priority has no long-context tier of its own: every token at 5 / 30
    assert priority.cost == usd((300_000, "5"), (1000, "30")) == Decimal("1.53")
    assert snapshot.cost == Decimal("0.0024")
