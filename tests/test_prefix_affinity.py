"""Prompt-prefix affinity routing: requests sharing a prompt prefix (or a prompt_cache_key)
stay on one healthy deployment, so the provider's prompt cache can serve them; when that
deployment dies they fail over like any other request."""

from __future__ import annotations

from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from gateway.routing.affinity import affinity_key, rendezvous_order
from gateway.types import ChatCompletionRequest
from providers.base import Deployment
from tests.conftest import SINGLE_ATTEMPT, GatewayFactory
from tests.emulators.openai_api import API_KEY, OpenAIEmulator
from tests.harness import ServerThread

SYSTEM = {"role": "system", "content": "You are a terse assistant. " * 40}


def two_deployment_config(east: str, west: str, **routing: Any) -> dict[str, Any]:
    return {
        "routing": {**SINGLE_ATTEMPT, **routing},
        "ledger": {"enabled": False},
        "providers": {
            name: {"type": "openai", "api_key": API_KEY, "base_url": url + "/v1"}
            for name, url in (("east", east), ("west", west))
        },
        "models": {
            "gpt-4o": {
                "strategy": "prefix-affinity",
                "deployments": [
                    {"provider": "east", "model": "gpt-4o"},
                    {"provider": "west", "model": "gpt-4o"},
                ],
            }
        },
    }


def ask(base: str, **body: Any) -> httpx.Response:
    response = httpx.post(base + "/chat/completions", json={"model": "gpt-4o", **body}, timeout=10)
    assert response.status_code == 200, response.text
    return response


def test_a_shared_prefix_stays_on_one_deployment_and_fails_over_when_it_dies(
    start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    with ExitStack() as stack:
        servers = {}
        for name in ("east", "west"):
            emu = OpenAIEmulator()
            servers[name] = stack.enter_context(ServerThread(emu.app))
        base = start_gateway(two_deployment_config(servers["east"].url, servers["west"].url))
        served = Counter(
            ask(base, messages=[SYSTEM, {"role": "user", "content": f"question {i}"}]).headers[
                "x-gateway-deployment"
            ]
            for i in range(12)
        )
        assert len(served) == 1, served
        (chosen,) = served
        # Other prefixes (here: named by prompt_cache_key) spread over both deployments.
        spread = {
            ask(
                base, messages=[{"role": "user", "content": "hi"}], prompt_cache_key=f"k{i}"
            ).headers["x-gateway-deployment"]
            for i in range(24)
        }
        assert spread == {"east/gpt-4o", "west/gpt-4o"}
        # The chosen deployment dies: the prefix moves to the other one, and stays there.
        servers[chosen.split("/")[0]].__exit__(None, None, None)
        after = Counter(
            ask(base, messages=[SYSTEM, {"role": "user", "content": f"again {i}"}]).headers[
                "x-gateway-deployment"
            ]
            for i in range(4)
        )
        assert set(after) == {"east/gpt-4o", "west/gpt-4o"} - {chosen}


def test_the_key_is_the_prompt_cache_key_else_the_system_prompt_and_tools() -> None:
    def request(**body: Any) -> ChatCompletionRequest:
        return ChatCompletionRequest.model_validate({"model": "m", **body})

    one = request(messages=[SYSTEM, {"role": "user", "content": "a"}])
    two = request(messages=[SYSTEM, {"role": "user", "content": "b"}], temperature=1)
    assert affinity_key(one) == affinity_key(two)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    assert affinity_key(request(messages=one.messages, tools=tools)) != affinity_key(one)
    named = request(messages=[{"role": "user", "content": "x"}], prompt_cache_key="tenant-7")
    assert affinity_key(named) == "key:tenant-7"


def test_removing_a_deployment_moves_only_the_keys_it_won() -> None:
    def dep(name: str) -> Deployment:
        return Deployment(id=name, public_model="m", provider=None, model=name)  # type: ignore[arg-type]

    deps = [dep(n) for n in ("a", "b", "c", "d")]
    keys = [f"prefix-{i}" for i in range(400)]
    before = {k: rendezvous_order(k, deps)[0].id for k in keys}
    assert set(Counter(before.values())) == {"a", "b", "c", "d"}
    after = {k: rendezvous_order(k, deps[:3])[0].id for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert moved and all(before[k] == "d" for k in moved)
