"""Every upstream attempt is a record of its own (``spend_attempts``), linked to its request:
a deployment's failures stay its own when another deployment answers, on SQLite and
PostgreSQL, through the real proxy; ``GET /v1/spend/records`` filters and shows them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.ledger.db import create_ledger_engine
from gateway.ledger.series import deployment_errors
from tests.conftest import GatewayFactory
from tests.emulators.common import Fault
from tests.emulators.openai_api import API_KEY, OpenAIEmulator
from tests.ledger_helpers import scratch_postgres

MASTER = "sk-master-for-attempt-tests"
HELLO = [{"role": "user", "content": "hello"}]
OVERLOADED = Fault(status=503, body=b'{"error": {"message": "overloaded"}}')


def config(upstream: OpenAIEmulator, ledger_url: str) -> dict[str, Any]:
    provider = {"type": "openai", "api_key": API_KEY, "base_url": upstream.url + "/v1"}
    return {
        "auth": {"master_key": MASTER},
        "routing": {"retries": {"attempts_per_deployment": 1}, "circuit": {"enabled": False}},
        "ledger": {"url": ledger_url, "flush_interval": 2.0},
        "providers": {"primary": provider, "backup": provider},
        "models": {
            "gpt-4o": {
                "deployments": [{"provider": "primary", "model": "gpt-4o"}],
                "fallbacks": ["gpt-4o-backup"],
            },
            "gpt-4o-backup": {"deployments": [{"provider": "backup", "model": "gpt-4o"}]},
        },
    }


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
        return
    with scratch_postgres() as url:
        yield url


def records(url: str, **params: str) -> list[dict[str, Any]]:
    answer = httpx.get(
        url + "/spend/records",
        params=params,
        headers={"authorization": f"Bearer {MASTER}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    data: list[dict[str, Any]] = answer.json()["data"]
    return data


def chat(url: str, model: str = "gpt-4o") -> httpx.Response:
    return httpx.post(
        url + "/chat/completions",
        json={"model": model, "messages": HELLO},
        headers={"authorization": f"Bearer {MASTER}"},
        timeout=10,
    )


def test_a_failed_attempt_is_recorded_under_its_own_deployment(
    openai_emu: OpenAIEmulator, start_gateway: GatewayFactory, ledger_url: str
) -> None:
    url = start_gateway(config(openai_emu, ledger_url))
    openai_emu.fail_next(OVERLOADED)
    answered = chat(url)
    assert answered.status_code == 200
    assert answered.headers["x-gateway-deployment"] == "backup/gpt-4o"
    request_id = answered.headers["x-request-id"]
    assert chat(url, "gpt-4o-backup").status_code == 200

    (record,) = records(url, deployment="primary/gpt-4o")
    assert record["request_id"] == request_id
    assert record["deployment"] == "backup/gpt-4o"  # filed under the one that answered
    first, second = record["attempt_log"]
    assert (first["deployment"], first["provider"], first["status"]) == (
        "primary/gpt-4o",
        "primary",
        503,
    )
    assert first["error_type"] and first["billed"] is False
    assert (second["deployment"], second["status"], second["billed"]) == (
        "backup/gpt-4o",
        200,
        True,
    )
    assert second["latency_ms"] > 0

    async def seen() -> dict[str, Any]:
        engine = create_ledger_engine(ledger_url)
        try:
            now = datetime.now(UTC)
            return await deployment_errors(engine, now - timedelta(hours=1), now)
        finally:
            await engine.dispose()

    by_deployment = asyncio.run(seen())
    primary, backup = by_deployment["primary/gpt-4o"], by_deployment["backup/gpt-4o"]
    assert (primary.requests, primary.errors) == (1, 1)
    assert sum(primary.types.values()) == 1
    assert (backup.requests, backup.errors) == (2, 0)


def test_records_filter_by_team_model_status_and_cost(
    openai_emu: OpenAIEmulator, start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    url = start_gateway(config(openai_emu, f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"))
    assert chat(url).status_code == 200
    assert chat(url, "gpt-4o-backup").status_code == 200
    openai_emu.fail_next(Fault(status=400, body=b'{"error": {"message": "bad"}}'))
    refused = chat(url, "gpt-4o-backup")
    assert refused.status_code == 400

    assert [r["model"] for r in records(url, model="gpt-4o")] == ["gpt-4o"]
    (error,) = records(url, status="error")
    assert error["request_id"] == refused.headers["x-request-id"]
    assert [r["status"] for r in records(url, status="400")] == [400]
    assert len(records(url, status="ok")) == 2
    costly = records(url, cost_above="0")
    assert len(costly) == 2 and all(float(r["cost_usd"]) > 0 for r in costly)
    assert records(url, cost_above="1000") == []
    assert records(url, team="nobody") == []

    bad = httpx.get(
        url + "/spend/records",
        params={"status": "sideways"},
        headers={"authorization": f"Bearer {MASTER}"},
        timeout=10,
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "status"
