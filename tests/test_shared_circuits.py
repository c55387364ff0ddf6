"""Two gateway replicas sharing circuit state through a real Redis: one replica's open
circuit is honoured by the other, and across both only one probe reaches a recovering
deployment."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway import AsyncGateway
from tests.emulators.faulty import FaultyUpstream

COOLDOWN = 1.5


@pytest.fixture(scope="module")
def upstream() -> Iterator[FaultyUpstream]:
    with FaultyUpstream() as up:
        yield up


@pytest.fixture
async def replicas(
    upstream: FaultyUpstream, redis_url: str
) -> AsyncIterator[tuple[AsyncGateway, AsyncGateway, str]]:
    upstream.reset()
    prefix = f"llm-gateway-test:{uuid.uuid4().hex}:"
    tag = uuid.uuid4().hex[:8]
    config: dict[str, Any] = {
        "redis": {"url": redis_url, "key_prefix": prefix},
        "routing": {
            "retries": {"attempts_per_deployment": 1, "initial_backoff": 0.01},
            "circuit": {"consecutive_failures": 2, "cooldown": COOLDOWN, "min_requests": 100},
        },
        "providers": {"up": {"type": "openai", "api_key": "x", "base_url": upstream.url + "/v1"}},
        "models": {
            "m": {
                "deployments": [{"provider": "up", "model": f"down:{tag}"}],
                "fallbacks": ["backup"],
            },
            "backup": {"deployments": [{"provider": "up", "model": f"ok#{tag}"}]},
        },
    }
    a, b = AsyncGateway(config), AsyncGateway(config)
    yield a, b, f"down:{tag}"
    await a.aclose()
    await b.aclose()
    client = aioredis.Redis.from_url(redis_url)
    keys = [k async for k in client.scan_iter(match=prefix + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def ask(gw: AsyncGateway) -> str:
    reply = await gw.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}]
    )
    assert reply.gateway is not None
    assert gw.engine.shared_circuits is not None
    await gw.engine.shared_circuits.flush()  # the decision it published is in Redis now
    return reply.gateway.deployment or ""


async def refreshed(*gws: AsyncGateway) -> None:
    for gw in gws:
        assert gw.engine.shared_circuits is not None
        await gw.engine.shared_circuits.refresh()


async def test_circuit_opened_by_one_replica_is_honoured_by_the_other(replicas, upstream):
    a, b, primary = replicas
    upstream.set_down(primary.split(":")[1])
    assert "ok#" in await ask(a)  # both requests fail over to the backup …
    assert "ok#" in await ask(a)
    assert len(upstream.attempts_for(primary)) == 2  # … and open A's circuit
    await refreshed(b)
    deployment = await ask(b)
    assert "ok#" in deployment  # B went straight to the fallback
    assert len(upstream.attempts_for(primary)) == 2


async def test_only_one_probe_across_replicas_after_cooldown(replicas, upstream):
    a, b, primary = replicas
    upstream.set_down(primary.split(":")[1])
    await ask(a)
    await ask(a)
    await refreshed(a, b)
    await asyncio.sleep(COOLDOWN + 0.1)
    await refreshed(a, b)
    await asyncio.gather(*(ask(gw) for gw in (a, b, a, b, a, b)))
    assert len(upstream.attempts_for(primary)) == 3  # two failures, then a single probe


async def test_successful_probe_closes_the_circuit_for_every_replica(replicas, upstream):
    a, b, primary = replicas
    name = primary.split(":")[1]
    upstream.set_down(name)
    await ask(a)
    await ask(a)
    upstream.set_down(name, False)
    await asyncio.sleep(COOLDOWN + 0.1)
    await refreshed(a, b)
    assert await ask(a) == f"up/{primary}"  # the probe, now successful
    await refreshed(b)
    assert await ask(b) == f"up/{primary}"
