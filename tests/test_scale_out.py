"""Scale-out as deployed: two ``llm-gateway serve`` replicas on one PostgreSQL (keys and
ledger) and one Redis (limits, budgets, circuits). Traffic through both yields one ledger,
one set of limits and one circuit state; replicas starting together migrate the database
one after the other.

Skipped when PostgreSQL or Redis is absent (failed under GATEWAY_REQUIRE_SERVICES=1).
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from subprocess import STDOUT
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
import redis

from gateway.ledger.db import MIGRATION_LOCK
from gateway.ledger.migrate import current_revision, head_revision
from tests.emulators.common import Fault
from tests.emulators.openai_api import OpenAIEmulator
from tests.keys_helpers import Admin, gateway_config, key_records
from tests.ledger_helpers import scratch_postgres
from tests.replica_helpers import Replica, forget_redis_keys, serve_replicas

COOLDOWN = 60.0  # long enough that a circuit opened in a test stays open throughout
SERVER_ERROR = Fault(status=500, body=b'{"error":{"message":"boom","type":"server_error"}}')


@dataclass
class Cluster:
    a: Replica
    b: Replica
    ledger_url: str
    redis_url: str
    prefix: str

    def redis_key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with scratch_postgres() as url:
        yield url


@pytest.fixture
def cluster(
    redis_url: str, postgres_url: str, openai_emu: OpenAIEmulator, tmp_path: Path
) -> Iterator[Cluster]:
    """Two replicas of the deployed shape, on this test's own database and Redis prefix.
    (Redis is asked for first: without it no scratch database is created in vain.)"""
    prefix = f"llm-gateway-test:{uuid.uuid4().hex}:"
    config: dict[str, Any] = gateway_config(openai_emu.url, tmp_path / "unused.db")
    config["ledger"]["url"] = postgres_url
    config["redis"] = {"url": redis_url, "key_prefix": prefix}
    config["limits"] = {"backend": "redis"}
    config["routing"] = {
        "retries": {"attempts_per_deployment": 1, "initial_backoff": 0.01},
        "circuit": {"consecutive_failures": 2, "cooldown": COOLDOWN, "min_requests": 100},
    }
    # A model whose only deployment can be made to fail, falling back to gpt-4o-mini.
    config["models"]["flaky"] = {
        "deployments": [{"provider": "openai", "model": "flaky-primary"}],
        "fallbacks": ["gpt-4o-mini"],
    }
    try:
        with serve_replicas(config, tmp_path) as (a, b):
            yield Cluster(a, b, postgres_url, redis_url, prefix)
    finally:
        forget_redis_keys(redis_url, prefix)


async def spread(
    cluster: Cluster, key: str, calls: list[tuple[str, dict[str, Any]]]
) -> list[httpx.Response]:
    """The calls (path, body) at once, alternating between the two replicas."""
    async with httpx.AsyncClient(timeout=30) as client:
        return await asyncio.gather(
            *(
                client.post(
                    (cluster.a if i % 2 else cluster.b).url + path,
                    json=body,
                    headers={"authorization": f"Bearer {key}"},
                )
                for i, (path, body) in enumerate(calls)
            )
        )


def chat_body(i: int) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi " * (i % 7 + 1)}]}


def embedding_body(i: int) -> dict[str, Any]:
    return {"model": "text-embedding-3-small", "input": f"text number {i}"}


# -- one ledger ----------------------------------------------------------------------------
async def test_traffic_through_both_replicas_is_recorded_once_in_one_ledger(cluster):
    key = Admin(cluster.a.url).create_key(name="ledger")
    calls = [
        ("/embeddings", embedding_body(i)) if i % 4 == 3 else ("/chat/completions", chat_body(i))
        for i in range(40)
    ]
    responses = await spread(cluster, key["key"], calls)
    assert [r.status_code for r in responses] == [200] * len(calls)
    answered = {r.headers["x-request-id"]: Decimal(r.headers["x-gateway-cost"]) for r in responses}
    assert len(answered) == len(calls)

    records = await key_records(cluster.ledger_url, key["id"], at_least=len(calls))
    recorded = [r.request_id for r in records]
    assert sorted(recorded) == sorted(answered)  # every request, each exactly once
    assert sum((r.cost_usd or Decimal(0) for r in records), Decimal(0)) == sum(answered.values())
    assert all(r.cost_usd is not None and r.cost_usd > 0 for r in records)


# -- one set of limits ---------------------------------------------------------------------
async def test_a_keys_rpm_limit_holds_for_both_replicas_together(cluster):
    key = Admin(cluster.b.url).create_key(name="rpm", rpm=6)["key"]
    responses = await spread(cluster, key, [("/chat/completions", chat_body(i)) for i in range(24)])
    accepted = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert len(accepted) == 6  # a limit per replica would let up to 12 through
    assert {(r.status_code, r.json()["error"]["code"]) for r in refused} == {
        (429, "rate_limit_exceeded")
    }


# -- one circuit state ---------------------------------------------------------------------
def flaky(replica: Replica, caller: httpx.Client) -> httpx.Response:
    response = caller.post(
        replica.url + "/chat/completions",
        json={"model": "flaky", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 200, response.text
    return response


def primary_calls(emulator: OpenAIEmulator) -> int:
    return sum(
        1
        for r in emulator.requests
        if isinstance(r.body, dict) and r.body.get("model") == "flaky-primary"
    )


def test_failures_through_one_replica_open_the_circuit_for_the_other(cluster, openai_emu):
    key = Admin(cluster.a.url).create_key(name="circuit")["key"]
    with httpx.Client(headers={"authorization": f"Bearer {key}"}, timeout=10) as caller:
        for _ in range(2):  # the primary fails, gpt-4o-mini answers; twice opens A's circuit
            openai_emu.fail_next(SERVER_ERROR)  # taken by the next upstream call: the primary
            response = flaky(cluster.a, caller)
            assert response.headers["x-gateway-deployment"] == "openai/gpt-4o-mini"
        assert primary_calls(openai_emu) == 2
        wait_for_shared_open_circuit(cluster, "openai/flaky-primary")

        # B has seen no failure itself; it follows the shared state once its snapshot
        # refreshes (every 0.5 s, from its first request on). Until then its calls reach the
        # healthy-again primary, which is allowed; after, none may.
        deadline = time.monotonic() + 5
        while flaky(cluster.b, caller).headers["x-gateway-deployment"] != "openai/gpt-4o-mini":
            assert time.monotonic() < deadline, "replica B kept sending to the open deployment"
            time.sleep(0.1)
        before = primary_calls(openai_emu)
        for _ in range(5):
            response = flaky(cluster.b, caller)
            assert response.headers["x-gateway-deployment"] == "openai/gpt-4o-mini"
            assert response.headers["x-gateway-fallback-used"] == "true"
        assert primary_calls(openai_emu) == before


def wait_for_shared_open_circuit(cluster: Cluster, deployment_id: str) -> None:
    """Until the replica that opened the circuit has written it to Redis (in the background)."""
    shared = redis.Redis.from_url(cluster.redis_url)
    try:
        open_key = cluster.redis_key("circuit", "open", deployment_id)
        deadline = time.monotonic() + 5
        while not shared.exists(open_key):
            assert time.monotonic() < deadline, "the open circuit was not written to Redis"
            time.sleep(0.05)
    finally:
        shared.close()


# -- migrations --------------------------------------------------------------------------
MIGRATE = (
    "import asyncio, sys; from gateway.ledger.migrate import upgrade; "
    "asyncio.run(upgrade(sys.argv[1]))"
)


async def waiting_for_the_migration_lock(conn: Any) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
        "WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = current_database()"
    )
    return count


async def test_replicas_starting_together_migrate_one_after_the_other(postgres_url, tmp_path):
    """Two processes migrate an empty database at once. While this test holds the migration
    lock both must wait, having created nothing; released, they race for it, and both end
    with the schema at head and no error."""
    dsn = postgres_url.replace("postgresql+asyncpg://", "postgresql://")
    holder = await asyncpg.connect(dsn, timeout=5)
    migrators: list[asyncio.subprocess.Process] = []
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
        for i in range(2):
            with (tmp_path / f"migrate-{i}.log").open("wb") as out:
                migrators.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable, "-c", MIGRATE, postgres_url, stdout=out, stderr=STDOUT
                    )
                )
        deadline = time.monotonic() + 30
        while await waiting_for_the_migration_lock(holder) < 2:
            exited = [p.returncode for p in migrators if p.returncode is not None]
            assert not exited, f"a migrator did not wait for the lock (exit {exited})"
            assert time.monotonic() < deadline, "the migrators never waited for the lock"
            await asyncio.sleep(0.05)
        assert await holder.fetchval("SELECT to_regclass('alembic_version')") is None

        await holder.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
        for i, process in enumerate(migrators):
            returncode = await asyncio.wait_for(process.wait(), 60)
            log = (tmp_path / f"migrate-{i}.log").read_text()
            assert returncode == 0, log
    finally:
        for process in migrators:
            if process.returncode is None:
                process.kill()
                await process.wait()
        await holder.close()
    assert await current_revision(postgres_url) == head_revision()
