"""Plans: weighted order, fallback chains, capability filtering, and failover in practice."""

from __future__ import annotations

import random
from collections import Counter
from decimal import Decimal
from typing import Any

import httpx
import pytest

from gateway.config import load_config
from gateway.errors import InvalidRequestError, NotFoundError
from gateway.routing import Router
from providers.base import Capabilities
from tests.conftest import SINGLE_ATTEMPT, GatewayFactory
from tests.emulators.common import Fault
from tests.emulators.openai_api import API_KEY, OpenAIEmulator
from tests.harness import free_port

CONFIG: dict[str, Any] = {
    "providers": {"a": {"type": "mock"}, "b": {"type": "mock"}, "c": {"type": "mock"}},
    "models": {
        "big": {
            "deployments": [
                {"provider": "a", "model": "m", "weight": 3},
                {"provider": "b", "model": "m", "weight": 1},
            ],
            "fallbacks": ["small"],
        },
        "small": {"deployments": [{"provider": "c", "model": "s"}]},
        "other": {"deployments": [{"provider": "c", "model": "o"}]},
    },
}


def router(seed: int = 7) -> Router:
    return Router(load_config(CONFIG), rng=random.Random(seed))


def test_weighted_order_puts_heavier_deployment_first_in_proportion():
    r = router()
    firsts = Counter(r.plan("big").attempts[0].provider_name for _ in range(4000))
    share = firsts["a"] / 4000
    assert 0.70 < share < 0.80  # weight 3 of 4


def test_plan_tries_every_deployment_then_the_fallbacks():
    plan = router().plan("big")
    assert sorted(d.id for d in plan.attempts[:2]) == ["a/m", "b/m"]
    assert [d.id for d in plan.attempts[2:]] == ["c/s"]


def test_request_fallbacks_replace_the_configured_chain():
    assert [d.id for d in router().plan("big", ["other"]).attempts[2:]] == ["c/o"]


def test_empty_request_fallbacks_disable_fallback():
    assert len(router().plan("big", []).attempts) == 2


def test_unknown_fallback_is_rejected():
    with pytest.raises(InvalidRequestError, match="'nope'"):
        router().plan("big", ["nope"])


def test_unknown_model_lists_available_models():
    with pytest.raises(NotFoundError, match="big, other, small"):
        router().plan("gpt-9")


def test_deployments_lacking_a_needed_capability_are_skipped():
    r = router()
    r.providers["a"].capabilities = Capabilities(tools=False)
    ids = {d.id for d in r.plan("big", [], frozenset({"chat", "tools"})).attempts}
    assert ids == {"b/m"}


def test_request_no_deployment_can_serve_is_refused_with_reason():
    r = router()
    r.providers["c"].capabilities = Capabilities(tools=False)
    with pytest.raises(InvalidRequestError, match="c/o lacks tools"):
        r.plan("other", [], frozenset({"chat", "tools"}))


@pytest.fixture(scope="module")
def failover_gateway(openai_upstream: OpenAIEmulator, start_gateway: GatewayFactory) -> str:
    return start_gateway(
        {
            "routing": SINGLE_ATTEMPT,
            "providers": {
                "dead": {
                    "type": "openai",
                    "api_key": "x",
                    "base_url": f"http://127.0.0.1:{free_port()}/v1",
                },
                "openai": {
                    "type": "openai",
                    "api_key": API_KEY,
                    "base_url": openai_upstream.url + "/v1",
                },
            },
            "models": {
                "primary": {
                    "deployments": [{"provider": "dead", "model": "gpt-4o"}],
                    "fallbacks": ["backup"],
                },
                "backup": {"deployments": [{"provider": "openai", "model": "gpt-4o-mini"}]},
                "flaky": {
                    "deployments": [{"provider": "openai", "model": "gpt-4o"}],
                    "fallbacks": ["backup"],
                },
            },
        }
    )


def test_unreachable_deployment_fails_over_to_fallback_model(failover_gateway, openai_emu):
    resp = httpx.post(
        failover_gateway + "/chat/completions",
        json={"model": "primary", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-gateway-attempts"] == "2"
    assert resp.headers["x-gateway-deployment"] == "openai/gpt-4o-mini"
    assert resp.json()["model"].startswith("gpt-4o-mini")
    assert [r.body["model"] for r in openai_emu.requests] == ["gpt-4o-mini"]


def test_upstream_503_fails_over_but_400_does_not(failover_gateway, openai_emu):
    openai_emu.fail_next(Fault(status=503, body=b'{"error": {"message": "overloaded"}}'))
    ok = httpx.post(
        failover_gateway + "/chat/completions",
        json={"model": "flaky", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert ok.status_code == 200
    assert [r.body["model"] for r in openai_emu.requests] == ["gpt-4o", "gpt-4o-mini"]

    openai_emu.reset()
    openai_emu.fail_next(Fault(status=400, body=b'{"error": {"message": "bad"}}'))
    bad = httpx.post(
        failover_gateway + "/chat/completions",
        json={"model": "flaky", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert bad.status_code == 400
    assert len(openai_emu.requests) == 1


def test_request_can_disable_fallbacks(failover_gateway, openai_emu):
    resp = httpx.post(
        failover_gateway + "/chat/completions",
        json={"model": "primary", "messages": [{"role": "user", "content": "hi"}], "fallbacks": []},
    )
    assert resp.status_code == 502
    assert openai_emu.requests == []


def test_cost_strategy_puts_the_cheapest_priced_deployment_first():
    prices = {"a/m": Decimal("12.5"), "b/m": Decimal("0.75")}
    r = Router(
        load_config({**CONFIG, "routing": {"strategy": "cost"}}),
        rng=random.Random(3),
        price_of=lambda d: prices.get(d.id),
    )
    assert [d.id for d in r.plan("big", []).attempts] == ["b/m", "a/m"]


def test_cost_strategy_puts_unpriced_deployments_last():
    r = Router(
        load_config({**CONFIG, "routing": {"strategy": "cost"}}),
        rng=random.Random(3),
        price_of=lambda d: Decimal(1) if d.id == "a/m" else None,
    )
    assert [d.id for d in r.plan("big", []).attempts] == ["a/m", "b/m"]
