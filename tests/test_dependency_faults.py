"""When Redis (the limits) or the key database cannot be reached, callers get a 503 that names
it, with Retry-After — never a 500 — and ``limits.on_backend_error`` decides between refusing
and admitting uncounted; a settlement Redis missed lands once it is back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from gateway.limits.base import UNITS_PER_USD, budget_period
from tests.dependency_helpers import proxy_to, redis_prefix, serving, through
from tests.emulators.common import Fault
from tests.keys_helpers import (
    MASTER_KEY,
    TIGHT_REQUEST,
    TIGHT_RESERVATION,
    Admin,
    gateway_config,
    key_records,
)
from tests.ledger_helpers import TcpProxy, scratch_postgres
from tests.replica_helpers import forget_redis_keys
from tests.test_metrics import value

HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture
async def redis_proxy(redis_url: str) -> AsyncIterator[TcpProxy]:
    async with proxy_to(redis_url) as proxy:
        yield proxy


@pytest.fixture
def prefix(redis_url: str) -> Any:
    name = redis_prefix()
    yield name
    forget_redis_keys(redis_url, name)


def redis_limits_config(
    upstream: str, db: Path, redis_url: str, proxy: TcpProxy, prefix: str, **limits: Any
) -> dict[str, Any]:
    return gateway_config(
        upstream,
        db,
        redis={"url": through(redis_url, proxy), "key_prefix": prefix},
        limits={"backend": "redis", **limits},
    )


async def create_key(root: str, **body: Any) -> dict[str, Any]:
    admin = Admin(root + "/v1")
    try:
        return await asyncio.to_thread(admin.create_key, **body)
    finally:
        admin.client.close()


async def call(client: httpx.AsyncClient, key: str, **body: Any) -> httpx.Response:
    return await client.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o", "messages": HELLO, **body},
        headers={"authorization": f"Bearer {key}"},
    )


def assert_dependency_unavailable(response: httpx.Response, names: str) -> None:
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("service_unavailable", "dependency_unavailable")
    assert names in error["message"]
    assert int(response.headers["retry-after"]) >= 1


async def scrape(client: httpx.AsyncClient) -> list[tuple[str, dict[str, str], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    text = (await client.get("/metrics")).text
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


# -- limits with Redis unreachable -----------------------------------------------------------


async def test_a_budget_key_is_refused_with_503_naming_redis_and_the_call_is_recorded(
    openai_emu, tmp_path, redis_url, redis_proxy, prefix
):
    db = tmp_path / "ledger.db"
    config = redis_limits_config(openai_emu.url, db, redis_url, redis_proxy, prefix)
    async with serving(config) as root:
        key = await create_key(root, name="budgeted", budget_usd="1", max_parallel=1)
        async with httpx.AsyncClient(base_url=root, timeout=30) as client:
            await redis_proxy.down()
            refused = await call(client, key["key"])
            assert_dependency_unavailable(refused, "Redis")
            streamed = await call(client, key["key"], stream=True)
            assert_dependency_unavailable(streamed, "Redis")
            assert openai_emu.requests == []

            await redis_proxy.up()
            again = [await call(client, key["key"]) for _ in range(2)]
            assert [r.status_code for r in again] == [200, 200]  # no parallel slot held
            samples = await scrape(client)

    records = await key_records(db, key["id"], at_least=4)
    statuses = {r.request_id: r.status for r in records}
    assert statuses[refused.headers["x-request-id"]] == 503
    assert statuses[streamed.headers["x-request-id"]] == 503
    assert sorted(statuses.values()) == [200, 200, 503, 503]
    assert value(samples, "gateway_limits_backend_unavailable_total", action="refused") == 2


@pytest.mark.parametrize(
    ("mode", "limits", "status"),
    [
        (None, {"rpm": 100}, 200),  # default: only rate limits, admitted uncounted
        ("closed", {"rpm": 100}, 503),
        ("open", {"budget_usd": "1"}, 200),
    ],
)
async def test_on_backend_error_decides_between_refusing_and_admitting(
    openai_emu, tmp_path, redis_url, redis_proxy, prefix, mode, limits, status
):
    db = tmp_path / "ledger.db"
    options = {} if mode is None else {"on_backend_error": mode}
    config = redis_limits_config(openai_emu.url, db, redis_url, redis_proxy, prefix, **options)
    async with serving(config) as root:
        key = await create_key(root, name="k", **limits)
        async with httpx.AsyncClient(base_url=root, timeout=30) as client:
            await redis_proxy.down()
            response = await call(client, key["key"])
            samples = await scrape(client)
            await redis_proxy.up()
    if status == 503:
        assert_dependency_unavailable(response, "Redis")
    else:
        assert response.status_code == 200, response.text
        action = "admitted"
        assert value(samples, "gateway_limits_backend_unavailable_total", action=action) == 1
    records = await key_records(db, key["id"])
    assert [r.status for r in records] == [status]


# -- settling --------------------------------------------------------------------------------


async def spent_units(redis_url: str, prefix: str, key_id: str) -> int:
    period = budget_period("monthly", datetime.now(UTC))[0]
    client = aioredis.Redis.from_url(redis_url)
    try:
        raw = await client.get(f"{prefix}limits:spent:key:{key_id}:{period}")
    finally:
        await client.aclose()
    return int(raw or 0)


async def test_a_settlement_redis_missed_lands_when_it_is_back(
    openai_emu, tmp_path, redis_url, redis_proxy, prefix
):
    """Redis goes away while a stream is being answered: the call still ends (200), its
    settlement is retried and queued, and lands — the call's recorded cost added to the
    key's spend — once Redis is back. Before, it was dropped and the budget never saw it."""
    db = tmp_path / "ledger.db"
    config = redis_limits_config(openai_emu.url, db, redis_url, redis_proxy, prefix)
    async with serving(config) as root:
        key = await create_key(root, name="blip", budget_usd="1")
        async with httpx.AsyncClient(base_url=root, timeout=30) as client:
            assert (await call(client, key["key"])).status_code == 200
            records = await key_records(db, key["id"])
            first_cost = records[0].cost_usd
            assert first_cost
            assert await spent_units(redis_url, prefix, key["id"]) == first_cost * UNITS_PER_USD

            openai_emu.fail_next(Fault(status=200, stall_after=1, stall_seconds=0.5))
            async with client.stream(
                "POST",
                "/v1/chat/completions",
                json={"model": "gpt-4o", "messages": HELLO, "stream": True},
                headers={"authorization": f"Bearer {key['key']}"},
            ) as stream:
                lines = stream.aiter_lines()
                await anext(lines)  # admitted and answering
                await redis_proxy.down()
                rest = [line async for line in lines]
            assert stream.status_code == 200 and "data: [DONE]" in rest

            records = await key_records(db, key["id"], at_least=2)
            total = sum((r.cost_usd or Decimal(0) for r in records), Decimal(0))
            await asyncio.sleep(0.5)  # the settlement's quick retries are over: it is queued
            samples = await scrape(client)
            assert value(samples, "gateway_limits_settle_failures_total") >= 1
            assert value(samples, "gateway_limits_pending_settlements") == 1

            await redis_proxy.up()
            deadline = asyncio.get_running_loop().time() + 10
            while await spent_units(redis_url, prefix, key["id"]) != total * UNITS_PER_USD:
                assert asyncio.get_running_loop().time() < deadline, "the settlement never landed"
                await asyncio.sleep(0.05)
            samples = await scrape(client)
            assert value(samples, "gateway_limits_pending_settlements") == 0


# -- the key database unreachable ------------------------------------------------------------


async def test_a_key_lookup_with_the_key_database_unreachable_answers_503_naming_it(
    openai_emu, tmp_path
):
    with scratch_postgres() as database:
        async with proxy_to(database) as proxy:
            config = gateway_config(openai_emu.url, tmp_path / "unused.db")
            config["ledger"] = {"url": through(database, proxy), "flush_interval": 0.05}
            async with serving(config) as root:
                key = await create_key(root, name="fresh")  # never looked up yet
                async with httpx.AsyncClient(base_url=root, timeout=30) as client:
                    await proxy.down()
                    refused = await call(client, key["key"])
                    assert_dependency_unavailable(refused, "key database")
                    await proxy.up()
                    assert (await call(client, key["key"])).status_code == 200
                    master = {"authorization": f"Bearer {MASTER_KEY}"}
                    assert (await client.get("/health/ready", headers=master)).status_code == 200


# -- both away and back again, under load ----------------------------------------------------


async def test_ledger_database_and_redis_going_away_under_load_lose_no_record_and_no_budget(
    openai_emu, redis_url, prefix
):
    """150 calls from 10 callers against a budget of 40 reservations, while PostgreSQL (the
    ledger and key store) and Redis (the limits) are cut and brought back, apart and
    together. Afterwards every call answered has exactly one ledger record with its status,
    the key's recorded spend is within its budget, and Redis counts exactly that spend: no
    settlement was lost or counted twice. Reservations live 2 s here, so a settlement that
    never landed would let later calls past the budget."""
    budget = 40 * TIGHT_RESERVATION
    with scratch_postgres() as database:
        async with proxy_to(database) as pg, proxy_to(redis_url) as rd:
            config = gateway_config(
                openai_emu.url,
                Path("unused.db"),
                redis={"url": through(redis_url, rd), "key_prefix": prefix},
                limits={"backend": "redis", "reservation_ttl": 2},
                auth={"master_key": MASTER_KEY, "key_cache_seconds": 60},
            )
            config["ledger"] = {"url": through(database, pg), "flush_interval": 0.02}
            async with serving(config) as root:
                key = await create_key(root, name="load", budget_usd=str(budget))
                auth = {"authorization": f"Bearer {key['key']}"}
                answers: list[httpx.Response] = []
                async with httpx.AsyncClient(base_url=root, timeout=30) as client:
                    assert (await client.get("/v1/models", headers=auth)).status_code == 200

                    async def caller() -> None:
                        for _ in range(15):
                            answers.append(
                                await client.post(
                                    "/v1/chat/completions", json=TIGHT_REQUEST, headers=auth
                                )
                            )
                            await asyncio.sleep(0.1)

                    async def outages() -> None:
                        for proxies in ([rd], [pg], [rd, pg], [pg], [rd]):
                            await asyncio.sleep(0.1)
                            for proxy in proxies:
                                await proxy.down()
                            await asyncio.sleep(0.25)
                            for proxy in proxies:
                                await proxy.up()

                    await asyncio.gather(outages(), *(caller() for _ in range(10)))
                    assert len(answers) == 150

                    records = await key_records(database, key["id"], at_least=150, wait=20)
                    assert len(records) == len(answers)
                    spent = sum((r.cost_usd or Decimal(0) for r in records), Decimal(0))
                    deadline = asyncio.get_running_loop().time() + 10
                    while (counted := await spent_units(redis_url, prefix, key["id"])) != (
                        spent * UNITS_PER_USD
                    ):
                        assert asyncio.get_running_loop().time() < deadline, (
                            f"Redis counts {counted} units, the ledger {spent * UNITS_PER_USD}"
                        )
                        await asyncio.sleep(0.05)

    statuses = {r.headers["x-request-id"]: r.status_code for r in answers}
    assert {r.request_id: r.status for r in records} == statuses  # one record per answer
    codes = {r.json()["error"]["code"] for r in answers if r.status_code != 200}
    assert codes <= {"budget_exceeded", "dependency_unavailable"}
    assert "budget_exceeded" in codes  # the budget was reached
    assert "dependency_unavailable" in codes  # and Redis was away for some calls
    assert spent <= budget


# -- the queue at shutdown -------------------------------------------------------------------


@pytest.mark.parametrize("back_before_shutdown", [True, False])
async def test_shutdown_lands_queued_settlements_or_counts_them_lost(
    redis_url, redis_proxy, prefix, caplog, back_before_shutdown
):
    from gateway.limits import GuardedLimits, ScopeLimits
    from gateway.limits.redis import RedisLimits

    spent_seed = Decimal("0.5")

    async def seed(scope: str, period: str) -> Decimal:
        return spent_seed

    backend = RedisLimits.from_url(through(redis_url, redis_proxy), prefix=prefix, seed=seed)
    limits = GuardedLimits(backend, drain_seconds=0.5, retry_initial=0.01)
    scope = ScopeLimits("key:k1", budget_usd=Decimal("1"))
    admission = await limits.admit("req-1", (scope,), tokens=10, cost=Decimal("0.1"))
    await redis_proxy.down()
    await limits.settle(admission, tokens=8, cost=Decimal("0.05"))
    assert limits.pending == 1 and limits.stats.settle_failures == 3
    if back_before_shutdown:
        await redis_proxy.up()
    caplog.set_level(logging.ERROR, logger="gateway.limits")
    await limits.aclose()

    assert limits.pending == 0
    await redis_proxy.up()
    period = budget_period("monthly", datetime.now(UTC))[0]
    client = aioredis.Redis.from_url(redis_url)
    try:
        spent = int(await client.get(f"{prefix}spent:key:k1:{period}") or 0)
    finally:
        await client.aclose()
    if back_before_shutdown:
        assert spent == (spent_seed + Decimal("0.05")) * UNITS_PER_USD
        assert limits.stats.lost == 0
    else:
        assert spent == spent_seed * UNITS_PER_USD
        assert limits.stats.lost == 1
        assert "settlement of req-1 lost" in caplog.text


async def test_a_settlement_applied_twice_counts_once(redis_url, prefix):
    """A settle retried after its answer was lost in a cut connection reaches Redis twice."""
    from gateway.limits import ScopeLimits
    from gateway.limits.redis import RedisLimits

    limits = RedisLimits.from_url(redis_url, prefix=prefix)
    scope = ScopeLimits("key:k2", budget_usd=Decimal("1"))
    try:
        admission = await limits.admit("req-2", (scope,), tokens=10, cost=Decimal("0.1"))
        for _ in range(2):
            admission.done = False  # as after a failed try
            await limits.settle(admission, tokens=8, cost=Decimal("0.05"))
        assert await limits.spent(scope) == Decimal("0.05")
    finally:
        await limits.aclose()
