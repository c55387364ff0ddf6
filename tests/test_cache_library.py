"""The response cache in-process (``AsyncGateway``), with a clock of the test's own for
expiry, and FIM answers cached through the proxy's Mistral route."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway import AsyncGateway
from gateway.cache import MemoryStore
from gateway.config import GatewayConfig
from gateway.setup import Setup
from tests.conftest import SINGLE_ATTEMPT, GatewayFactory
from tests.emulators import mistral_api
from tests.emulators.mistral_api import MistralEmulator
from tests.emulators.openai_api import API_KEY, OpenAIEmulator
from tests.harness import ServerThread, free_port

QUESTION = [{"role": "user", "content": "one two three"}]


def library_config(emu: OpenAIEmulator, **cache: Any) -> dict[str, Any]:
    return {
        "routing": SINGLE_ATTEMPT,
        "ledger": {"enabled": False},
        "cache": {"enabled": True, **cache},
        "providers": {
            "openai": {"type": "openai", "api_key": API_KEY, "base_url": emu.url + "/v1"}
        },
        "models": {"gpt-4o": {"deployments": [{"provider": "openai", "model": "gpt-4o"}]}},
    }


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_library_calls_hit_the_cache_and_say_so(openai_emu: OpenAIEmulator) -> None:
    async with AsyncGateway(library_config(openai_emu)) as gw:
        first = await gw.chat.completions.create(model="gpt-4o", messages=QUESTION, temperature=0)
        second = await gw.chat.completions.create(model="gpt-4o", messages=QUESTION, temperature=0)
        stream = await gw.chat.completions.create(
            model="gpt-4o", messages=QUESTION, temperature=0, stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert (first.facts.cache, second.facts.cache) == ("miss", "hit")
    assert second.facts.cost == 0 and first.facts.cost
    assert second.choices[0].message.content == first.choices[0].message.content == text
    assert len(openai_emu.requests) == 1


async def test_an_answer_expires_after_its_ttl_by_the_cache_clock(
    openai_emu: OpenAIEmulator,
) -> None:
    clock = Clock()
    async with AsyncGateway(library_config(openai_emu, ttl_seconds=60)) as gw:
        cache = gw.engine.cache
        assert cache is not None and isinstance(cache.store, MemoryStore)
        cache.store.clock = clock

        async def status() -> str | None:
            answer = await gw.chat.completions.create(
                model="gpt-4o", messages=QUESTION, temperature=0
            )
            return answer.facts.cache

        assert await status() == "miss"
        clock.now += 59
        assert await status() == "hit"
        clock.now += 2
        assert await status() == "miss"
    assert len(openai_emu.requests) == 2


async def test_the_memory_store_drops_the_least_recently_used_beyond_its_bytes() -> None:
    store = MemoryStore(max_bytes=250)
    for name in ("a", "b", "c"):
        await store.put(name, b"x" * 100, ttl=60)
    assert await store.get("a") is None  # 300 bytes > 250: the oldest went
    assert await store.get("b") is not None  # now the most recently used
    await store.put("d", b"x" * 100, ttl=60)
    assert await store.get("c") is None and await store.get("b") is not None
    assert store.bytes == 200 and len(store) == 2


@pytest.fixture(scope="module")
def mistral_upstream() -> Iterator[MistralEmulator]:
    emulator = MistralEmulator()
    with ServerThread(emulator.app) as server:
        emulator.url = server.url
        yield emulator


def test_fim_answers_are_cached(
    start_gateway: GatewayFactory, mistral_upstream: MistralEmulator
) -> None:
    mistral_upstream.reset()
    base = start_gateway(
        {
            "routing": SINGLE_ATTEMPT,
            "ledger": {"enabled": False},
            "cache": {"enabled": True},
            "providers": {
                "mistral": {
                    "type": "mistral",
                    "api_key": mistral_api.API_KEY,
                    "base_url": mistral_upstream.url + "/v1",
                }
            },
            "models": {
                "codestral": {"deployments": [{"provider": "mistral", "model": "codestral-latest"}]}
            },
        }
    )

    def fim(**extra: Any) -> httpx.Response:
        body = {"model": "codestral", "prompt": "def add(a, b):", "temperature": 0, **extra}
        response = httpx.post(base + "/fim/completions", json=body, timeout=10)
        assert response.status_code == 200, response.text
        return response

    first, second = fim(), fim(suffix="")
    assert [first.headers["x-gateway-cache"], second.headers["x-gateway-cache"]] == [
        "miss",
        "hit",
    ]
    assert second.json()["choices"] == first.json()["choices"]
    assert fim(suffix="return a + b").headers["x-gateway-cache"] == "miss"
    assert len(mistral_upstream.requests) == 2


async def test_an_unreachable_redis_cache_is_a_miss_not_a_failure(
    openai_emu: OpenAIEmulator,
) -> None:
    config = library_config(openai_emu, backend="redis")
    config["redis"] = {"url": f"redis://127.0.0.1:{free_port()}/15"}  # nothing listens there
    async with AsyncGateway(config) as gw:
        answers = [
            await gw.chat.completions.create(model="gpt-4o", messages=QUESTION, temperature=0)
            for _ in range(2)
        ]
    assert [a.facts.cache for a in answers] == ["miss", "miss"]
    assert len(openai_emu.requests) == 2


async def test_a_reload_keeps_the_cache_or_turns_it_off(openai_emu: OpenAIEmulator) -> None:
    config = library_config(openai_emu)
    async with AsyncGateway(config) as gw:
        engine = gw.engine

        async def status() -> str | None:
            answer = await gw.chat.completions.create(
                model="gpt-4o", messages=QUESTION, temperature=0
            )
            return answer.facts.cache

        assert await status() == "miss"
        longer = GatewayConfig.model_validate(
            {**config, "cache": {"enabled": True, "ttl_seconds": 9}}
        )
        engine.swap(Setup.build(longer, engine.health, engine.ledger))
        assert await status() == "hit"  # the same store, the new settings
        assert engine.cache is not None and engine.cache.settings.ttl_seconds == 9
        off = GatewayConfig.model_validate({**config, "cache": {"enabled": False}})
        engine.swap(Setup.build(off, engine.health, engine.ledger))
        assert engine.cache is None
        assert await status() is None
