"""``llm-gateway reprice``: records priced from a wrong figure, or not priced at all, are
corrected by adjustment rows at the current prices — never edited — and reports add them up,
on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from gateway.cli import app
from gateway.cli.repricing import reprice_ledger
from gateway.config import GatewayConfig
from gateway.costs import PriceCatalog
from gateway.ledger.db import create_ledger_engine
from gateway.ledger.migrate import upgrade
from gateway.ledger.records import SpendRecord
from gateway.ledger.reports import spend_records, spend_report
from gateway.ledger.series import spend_series, traffic
from gateway.ledger.store import rebuild_daily, write_batch
from tests.ledger_helpers import scratch_postgres

DAY = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
M = Decimal(10**6)
LLAMA_PRICE = {"input": "1.00", "output": "2.00"}


def config(url: str, llama_price: bool) -> dict[str, Any]:
    prices = {"openai": {"my-own-llama": LLAMA_PRICE}} if llama_price else {}
    return {
        "ledger": {"url": url},
        "providers": {
            "openai": {"type": "openai", "api_key": "x", "base_url": "http://127.0.0.1:9/v1"}
        },
        "prices": prices,
        "models": {
            "gpt-4o": {"deployments": [{"provider": "openai", "model": "gpt-4o"}]},
            "llama": {"deployments": [{"provider": "openai", "model": "my-own-llama"}]},
        },
    }


def record(
    request_id: str, model: str, upstream: str, prompt: int, completion: int, cost: str | None
) -> SpendRecord:
    return SpendRecord(
        request_id=request_id,
        started_at=DAY,
        finished_at=DAY + timedelta(seconds=1),
        model=model,
        status=200,
        key_id="key-1",
        provider="openai",
        deployment=f"openai/{upstream}",
        upstream_model=upstream,
        attempts=1,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost_usd=None if cost is None else Decimal(cost),
    )


RECORDS = [
    record("wrong", "gpt-4o", "gpt-4o", 1000, 100, "1.00"),  # priced from a wrong figure
    record("unpriced", "llama", "my-own-llama", 1000, 500, None),  # no price then
    record("no-usage", "llama", "my-own-llama", 0, 0, None),  # nothing to price: stays unknown
]


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
    await write_batch(engine, RECORDS)
    yield engine
    await engine.dispose()


def gpt_4o_cost() -> Decimal:
    """1000 prompt and 100 completion tokens at the shipped catalog's gpt-4o price."""
    price = PriceCatalog.shipped().lookup("openai", "gpt-4o")
    assert price is not None and price.input is not None and price.output is not None
    return (1000 * price.input + 100 * price.output) / M


async def all_rows(engine: AsyncEngine) -> dict[str, SpendRecord]:
    page = await spend_records(engine, DAY - timedelta(days=1), DAY + timedelta(days=1), limit=100)
    return {r.request_id: r for r in page.records}


async def test_reprice_writes_adjustments_and_never_edits_records(engine, db_url):
    cfg = GatewayConfig.model_validate(config(db_url, llama_price=True))
    outcome = await reprice_ledger(cfg, DAY - timedelta(hours=1), DAY + timedelta(hours=1), None)
    assert (outcome.examined, outcome.adjusted, outcome.now_known, outcome.still_unknown) == (
        3,
        2,
        1,
        1,
    )
    llama = (1000 * Decimal("1.00") + 500 * Decimal("2.00")) / M  # $0.002
    assert outcome.change == (gpt_4o_cost() - Decimal("1.00")) + llama

    rows = await all_rows(engine)
    for original in RECORDS:  # history is untouched
        assert rows[original.request_id].cost_usd == original.cost_usd
        assert rows[original.request_id].kind == "call"
    adjustments = {r.adjusts: r for r in rows.values() if r.kind == "adjustment"}
    assert set(adjustments) == {"wrong", "unpriced"}
    fixed = adjustments["wrong"]
    assert fixed.cost_usd == gpt_4o_cost() - Decimal("1.00")
    assert fixed.adjusted_cost_usd == Decimal("1.00")
    assert (fixed.prompt_tokens, fixed.completion_tokens, fixed.started_at) == (0, 0, DAY)
    priced = adjustments["unpriced"]
    assert priced.cost_usd == llama and priced.adjusted_cost_usd is None
    assert (priced.price_family, priced.price_model) == ("openai", "my-own-llama")

    again = await reprice_ledger(cfg, DAY - timedelta(hours=1), DAY + timedelta(hours=1), None)
    assert again.adjusted == 0  # the costs in force are right now


@pytest.mark.parametrize("span", ["whole days", "part of a day"])
async def test_reports_sum_records_and_adjustments(engine, db_url, span):
    """Whole days are read from the roll-up, part of a day from the records: both count the
    adjustments' costs, no extra requests, and a cost that became known as known."""
    cfg = GatewayConfig.model_validate(config(db_url, llama_price=True))
    await reprice_ledger(cfg, DAY - timedelta(hours=1), DAY + timedelta(hours=1), "llama")
    await reprice_ledger(cfg, DAY - timedelta(hours=1), DAY + timedelta(hours=1), "gpt-4o")
    if span == "whole days":
        since, until = DAY.replace(hour=0), DAY.replace(hour=0) + timedelta(days=1)
    else:
        since, until = DAY - timedelta(hours=1), DAY + timedelta(hours=1)
    rows = {r.group: r for r in await spend_report(engine, "model", since, until)}
    assert rows["gpt-4o"].cost_usd == gpt_4o_cost() and rows["gpt-4o"].requests == 1
    assert rows["llama"].cost_usd == Decimal("0.002")
    assert (rows["llama"].requests, rows["llama"].unknown_cost_requests) == (2, 1)
    assert rows["llama"].cost == Decimal("0.002")  # one of two known: a lower bound


async def test_reprice_of_one_model_leaves_the_others(engine, db_url):
    cfg = GatewayConfig.model_validate(config(db_url, llama_price=True))
    outcome = await reprice_ledger(
        cfg, DAY - timedelta(hours=1), DAY + timedelta(hours=1), "gpt-4o", dry_run=True
    )
    assert (outcome.examined, outcome.adjusted) == (1, 1)
    assert not [r for r in (await all_rows(engine)).values() if r.kind == "adjustment"]  # dry


def test_reprice_command(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"

    async def seed() -> None:
        await upgrade(url)
        engine = create_ledger_engine(url)
        await write_batch(engine, RECORDS)
        await engine.dispose()

    asyncio.run(seed())
    path = tmp_path / "gateway.yaml"
    path.write_text(json.dumps(config(url, llama_price=True)))
    args = ["reprice", "--config", str(path), "--since", "2026-03-01", "--until", "2026-03-02"]
    done = CliRunner().invoke(app, [*args, "--model", "llama"])
    assert done.exit_code == 0, done.output
    assert "3 records" not in done.output and "2 records" in done.output
    assert "wrote 1 adjustments, +$0.002 in all" in done.output
    assert "1 unknown costs now known, 1 still unknown" in done.output


async def test_adjustments_are_no_traffic_and_survive_a_rebuild_of_the_roll_ups(engine, db_url):
    """The dashboard's series count calls, not adjustment rows, and add their costs; a
    rebuilt roll-up gives the same report as the one kept up to date."""
    cfg = GatewayConfig.model_validate(config(db_url, llama_price=True))
    await reprice_ledger(cfg, DAY - timedelta(hours=1), DAY + timedelta(hours=1), None)
    day = DAY.replace(hour=0)
    since, until = day, day + timedelta(days=1)
    minutes = await traffic(engine, DAY - timedelta(minutes=1), DAY + timedelta(minutes=1))
    assert sum(m.requests for m in minutes) == 3
    points = await spend_series(engine, "model", since, until, "hour")
    assert sum(p.requests for p in points) == 3
    assert sum(p.cost_usd for p in points) == gpt_4o_cost() + Decimal("0.002")
    before = await spend_report(engine, "model", since, until)
    await rebuild_daily(engine, day.date(), day.date())
    assert await spend_report(engine, "model", since, until) == before
