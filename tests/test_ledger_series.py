"""The ledger over time (gateway.ledger.series): spend per hour or day, per-minute traffic
and errors per deployment, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

import gateway.keys  # noqa: F401  (its tables join the ledger's metadata)
from gateway.ledger.db import create_ledger_engine
from gateway.ledger.migrate import upgrade
from gateway.ledger.records import AttemptEntry, SpendRecord
from gateway.ledger.reports import spend_report
from gateway.ledger.series import deployment_errors, spend_series, traffic
from gateway.ledger.store import write_batch
from tests.ledger_helpers import scratch_postgres

MINUTE = datetime(2026, 3, 4, 10, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
        return
    with scratch_postgres() as url:
        yield url


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    await upgrade(db_url)
    engine = create_ledger_engine(db_url)
    yield engine
    await engine.dispose()


def rec(at: datetime, **fields: Any) -> SpendRecord:
    values: dict[str, Any] = {
        "request_id": uuid.uuid4().hex,
        "started_at": at,
        "finished_at": at + timedelta(seconds=1),
        "model": "gpt-4o",
        "status": 200,
        "attempts": 1,
        "provider": "openai",
        "deployment": "openai/gpt-4o",
        "cost_usd": Decimal("0.001"),
        **fields,
    }
    return SpendRecord(**values)


async def test_traffic_counts_each_minute_with_latency_percentiles(engine: AsyncEngine) -> None:
    busy = MINUTE + timedelta(minutes=7)
    records = [
        rec(busy + timedelta(seconds=i), latency_ms=100.0 * i, ttft_ms=10.0 * i)
        for i in range(1, 11)
    ]
    records += [
        rec(busy, status=503, error_type="upstream_unavailable", latency_ms=5.0),
        rec(busy, attempts=3, fallback_used=True, latency_ms=500.0),
        rec(MINUTE + timedelta(minutes=61)),  # outside the hour
    ]
    await write_batch(engine, records)

    minutes = await traffic(engine, MINUTE, MINUTE + timedelta(hours=1))

    assert len(minutes) == 60 and minutes[0].minute == "2026-03-04T10:00"
    seen = {m.minute: m for m in minutes if m.requests}
    assert list(seen) == ["2026-03-04T10:07"]
    m = seen["2026-03-04T10:07"]
    assert (m.requests, m.errors, m.retries, m.fallbacks) == (12, 1, 2, 1)
    # 11 successes: 100…1000 ms and one at 500; the failure's 5 ms is left out.
    assert m.latency_p50_ms == pytest.approx(500, rel=0.2)
    assert m.latency_p95_ms == pytest.approx(1000, rel=0.2)
    assert m.ttft_p50_ms == pytest.approx(55, rel=0.25)


async def test_spend_per_day_adds_up_to_the_report_and_narrows_to_a_team(
    engine: AsyncEngine,
) -> None:
    start = datetime(2026, 3, 1, 15, 0, tzinfo=UTC)  # a partial day, two whole days, a partial
    records = [
        rec(
            start + timedelta(hours=7 * i),
            model="gpt-4o" if i % 3 else "gpt-4o-mini",
            team="research" if i % 2 else "support",
            cost_usd=Decimal("0.0125") * (i + 1),
        )
        for i in range(12)
    ]
    await write_batch(engine, records)
    until = start + timedelta(days=3, hours=6)

    points = await spend_series(engine, "model", start, until, "day")
    report = {r.group: r for r in await spend_report(engine, "model", start, until)}
    assert {p.bucket for p in points} <= {"2026-03-01", "2026-03-02", "2026-03-03", "2026-03-04"}
    for model, row in report.items():
        assert sum(p.cost_usd for p in points if p.group == model) == row.cost_usd
        assert sum(p.requests for p in points if p.group == model) == row.requests

    team = await spend_series(engine, "model", start, until, "day", team="research")
    expected = sum((r.cost_usd or Decimal(0) for r in records if r.team == "research"), Decimal(0))
    assert sum(p.cost_usd for p in team) == expected
    by_team = await spend_report(engine, "model", start, until, team="research")
    assert sum(r.cost_usd for r in by_team) == expected


async def test_spend_per_hour_labels_each_hour(engine: AsyncEngine) -> None:
    await write_batch(
        engine,
        [
            rec(MINUTE + timedelta(minutes=5), cost_usd=Decimal("0.5")),
            rec(MINUTE + timedelta(minutes=55), cost_usd=Decimal("0.25")),
            rec(MINUTE + timedelta(hours=2, minutes=1), cost_usd=Decimal("1")),
        ],
    )
    points = await spend_series(engine, "provider", MINUTE, MINUTE + timedelta(hours=3), "hour")
    assert [(p.bucket, p.group, p.requests, p.cost_usd) for p in points] == [
        ("2026-03-04T10:00", "openai", 2, Decimal("0.75")),
        ("2026-03-04T12:00", "openai", 1, Decimal("1")),
    ]


async def test_errors_per_deployment_name_their_types(engine: AsyncEngine) -> None:
    def attempt(deployment: str, status: int | None, error: str | None = None) -> AttemptEntry:
        return AttemptEntry(deployment, MINUTE, 5.0, status=status, error_type=error)

    await write_batch(
        engine,
        [
            rec(MINUTE, attempt_log=(attempt("openai/gpt-4o", 200),)),
            rec(
                MINUTE,
                status=429,
                error_type="rate_limit_exceeded",
                attempt_log=(attempt("openai/gpt-4o", 429, "rate_limit_exceeded"),),
            ),
            rec(
                MINUTE,
                status=429,
                error_type="rate_limit_exceeded",
                attempt_log=(attempt("openai/gpt-4o", 429, "rate_limit_exceeded"),),
            ),
            rec(
                MINUTE,
                status=502,
                error_type="upstream_error",
                deployment="azure/gpt-4o",
                attempt_log=(attempt("azure/gpt-4o", 502, "upstream_error"),),
            ),
        ],
    )
    seen = await deployment_errors(engine, MINUTE, MINUTE + timedelta(minutes=1))
    assert seen["openai/gpt-4o"].requests == 3 and seen["openai/gpt-4o"].errors == 2
    assert seen["openai/gpt-4o"].types == {"rate_limit_exceeded": 2}
    assert seen["azure/gpt-4o"].types == {"upstream_error": 1}


async def test_a_deployment_that_failed_before_another_answered_keeps_its_failures(
    engine: AsyncEngine,
) -> None:
    """One request: two attempts on azure fail, openai answers. The record is filed under
    openai; azure's failures are still azure's."""
    failures = tuple(
        AttemptEntry("azure/gpt-4o", MINUTE, 30.0, provider="azure", status=None, error_type=e)
        for e in ("upstream_timeout", "upstream_unreachable")
    )
    answer = AttemptEntry("openai/gpt-4o", MINUTE, 80.0, provider="openai", status=200, billed=True)
    await write_batch(
        engine,
        [rec(MINUTE, deployment="openai/gpt-4o", attempts=3, attempt_log=(*failures, answer))],
    )
    seen = await deployment_errors(engine, MINUTE, MINUTE + timedelta(minutes=1))
    assert (seen["azure/gpt-4o"].requests, seen["azure/gpt-4o"].errors) == (2, 2)
    assert seen["azure/gpt-4o"].types == {"upstream_timeout": 1, "upstream_unreachable": 1}
    assert (seen["openai/gpt-4o"].requests, seen["openai/gpt-4o"].errors) == (1, 0)
