"""When each key was last used, read from the ledger when asked: the Keys page's *Last used*
column and ``last_used_at`` in ``GET /admin/keys``."""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.ledger.db import create_ledger_engine
from gateway.ledger.last_used import last_used
from gateway.ledger.migrate import upgrade
from gateway.ledger.records import SpendRecord
from gateway.ledger.savings import cache_savings
from gateway.ledger.store import write_batch
from tests.conftest import GatewayFactory
from tests.emulators.openai_api import OpenAIEmulator
from tests.keys_helpers import MASTER_KEY, Admin, chat, gateway_config, key_records, server_root
from tests.ledger_helpers import scratch_postgres


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    else:
        with scratch_postgres() as url:
            yield url


def _row(page: str, name: str) -> str:
    match = re.search(rf'<tr data-key-id="[^"]*" data-name="{name}".*?</tr>', page, re.S)
    assert match is not None, f"no row for {name}"
    return match.group(0)


def test_keys_page_and_admin_list_show_when_each_key_was_last_used(
    openai_emu: OpenAIEmulator, start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    db = tmp_path / "ledger.db"
    base = start_gateway(gateway_config(openai_emu.url, db))
    admin = Admin(base)
    used = admin.create_key(name="busy")
    idle = admin.create_key(name="idle")
    assert chat(base, used["key"]).status_code == 200
    assert chat(base, used["key"]).status_code == 200
    records = asyncio.run(key_records(db, used["id"], at_least=2))
    newest = max(r.started_at for r in records)

    listed = {k["name"]: k for k in admin.client.get("/admin/keys").json()["data"]}
    assert datetime.fromisoformat(listed["busy"]["last_used_at"]) == newest
    assert listed["idle"]["last_used_at"] is None
    assert listed["busy"]["created_at"] == used["created_at"]  # the listing is otherwise as before

    with httpx.Client(base_url=server_root(base), timeout=10) as client:
        assert client.post("/ui/login", data={"key": MASTER_KEY}).status_code == 303
        page = html.unescape(client.get("/ui/keys").text)
    assert "<th>Last used</th>" in page
    busy = _row(page, "busy")
    assert f'<time datetime="{newest.isoformat()}">{newest:%Y-%m-%d %H:%M}</time>' in busy
    assert 'class="nowrap small last-used"><span class="muted">never</span>' in _row(page, "idle")
    assert idle["id"] not in busy


async def test_last_use_and_batch_savings_are_read_on_sqlite_and_postgresql(db_url: str) -> None:
    await upgrade(db_url)
    engine = create_ledger_engine(db_url)
    t0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    later = t0 + timedelta(minutes=5)

    def record(rid: str, key: str, at: datetime, status: int = 200, **fields: Any) -> SpendRecord:
        return SpendRecord(rid, at, at, "gpt-4o-mini", status, key_id=key, **fields)

    try:
        await write_batch(
            engine,
            [
                record("a1", "k-a", t0, cost_usd=Decimal("0.002")),
                record("a2", "k-a", later, cost_usd=Decimal("0.001")),
                record(
                    "b1",
                    "k-b",
                    t0,
                    operation="batch",
                    cost_usd=Decimal("0.5"),
                    saved_usd=Decimal("0.5"),
                ),
                record("b2", "k-b", t0, operation="batch", status=400, cost_usd=Decimal(0)),
                # a re-pricing of b1, later: its cost counts, not as a request nor a last use
                record(
                    "b1-adj",
                    "k-b",
                    later + timedelta(minutes=1),
                    operation="batch",
                    kind="adjustment",
                    adjusts="b1",
                    cost_usd=Decimal("0.1"),
                    saved_usd=Decimal("0.5"),
                ),
                record(
                    "c1", "k-a", t0, cache_hit=True, cost_usd=Decimal(0), saved_usd=Decimal("0.25")
                ),
            ],
        )
        assert await last_used(engine, ["k-a", "k-b", "k-none"]) == {"k-a": later, "k-b": t0}
        savings = await cache_savings(engine, t0, later + timedelta(hours=1))
        assert (savings.cache_hits, savings.saved_usd) == (1, Decimal("0.25"))
        assert savings.batch_requests == 2
        assert savings.batch_cost_usd == Decimal("0.6")
        assert savings.batch_saved_usd == Decimal("0.5")
    finally:
        await engine.dispose()
