"""Two real gateway processes (``llm-gateway serve``) sharing one keys/ledger database and
the real Redis (``limits.backend: redis``): a key's RPM limit and budget hold across both,
and a key revoked through one replica stops working on the other within
``auth.key_cache_seconds``."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.emulators.openai_api import OpenAIEmulator
from tests.keys_helpers import (
    TIGHT_COST,
    TIGHT_REQUEST,
    TIGHT_RESERVATION,
    Admin,
    chat,
    gateway_config,
    key_records,
)
from tests.replica_helpers import Replica, forget_redis_keys, serve_replicas

KEY_CACHE_SECONDS = 1.0


@dataclass
class Pair:
    a: Replica
    b: Replica
    db: Path


@pytest.fixture
def replicas(redis_url: str, openai_emu: OpenAIEmulator, tmp_path: Path) -> Iterator[Pair]:
    """Two replicas of one gateway, with a Redis key prefix of this test's own."""
    prefix = f"llm-gateway-test:{uuid.uuid4().hex}:"
    db = tmp_path / "shared.db"
    config: dict[str, Any] = gateway_config(openai_emu.url, db)
    config["auth"]["key_cache_seconds"] = KEY_CACHE_SECONDS
    config["redis"] = {"url": redis_url, "key_prefix": prefix}
    config["limits"] = {"backend": "redis"}
    try:
        with serve_replicas(config, tmp_path) as (a, b):
            yield Pair(a, b, db)
    finally:
        forget_redis_keys(redis_url, prefix)


async def spread(pair: Pair, key: str, count: int, body: dict[str, Any]) -> list[httpx.Response]:
    """``count`` concurrent chat requests, alternating between the two replicas."""
    async with httpx.AsyncClient(timeout=30) as client:
        return await asyncio.gather(
            *(
                client.post(
                    (pair.a if i % 2 else pair.b).url + "/chat/completions",
                    json=body,
                    headers={"authorization": f"Bearer {key}"},
                )
                for i in range(count)
            )
        )


async def test_rpm_limit_holds_across_replicas(replicas: Pair) -> None:
    key = Admin(replicas.a.url).create_key(name="rpm", rpm=5)["key"]
    body: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    responses = await spread(replicas, key, 20, body)
    accepted = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert len(accepted) == 5  # with a limit per process, up to 10
    assert {(r.status_code, r.json()["error"]["code"]) for r in refused} == {
        (429, "rate_limit_exceeded")
    }


async def test_budget_holds_across_replicas(replicas: Pair) -> None:
    """A budget of 4 reservations of TIGHT_REQUEST (each costs 9% less than it reserves: see
    keys_helpers), so 4 is the most both replicas together may admit."""
    budget = 4 * TIGHT_RESERVATION
    created = Admin(replicas.a.url).create_key(
        name="budget", budget_usd=str(budget), budget_period="total"
    )
    responses = await spread(replicas, created["key"], 40, TIGHT_REQUEST)
    accepted = [r for r in responses if r.status_code == 200]
    assert len(accepted) == 4  # with a budget per process, up to 8
    assert {r.json()["error"]["code"] for r in responses if r.status_code != 200} == {
        "budget_exceeded"
    }
    records = await key_records(replicas.db, created["id"], at_least=40)
    spent = sum((r.cost_usd or Decimal(0) for r in records), Decimal(0))
    assert spent == len(accepted) * TIGHT_COST <= budget


def test_revocation_on_one_replica_reaches_the_other_within_the_key_cache_time(
    replicas: Pair,
) -> None:
    admin = Admin(replicas.a.url)
    created = admin.create_key(name="revoke-me")
    assert chat(replicas.b.url, created["key"]).status_code == 200  # B caches it as valid
    admin.revoke(created["id"])
    revoked = time.monotonic()
    assert chat(replicas.a.url, created["key"]).status_code == 401  # A at once
    while (status := chat(replicas.b.url, created["key"]).status_code) == 200:
        assert time.monotonic() - revoked < KEY_CACHE_SECONDS + 2.0, "B still accepts the key"
        time.sleep(0.05)
    assert status == 401
    assert time.monotonic() - revoked <= KEY_CACHE_SECONDS + 0.5
