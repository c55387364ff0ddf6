"""For the ledger tests: a scratch PostgreSQL database, a TCP proxy that can play a database
outage, synthetic spend records and the report a list of records should give."""

from __future__ import annotations

import asyncio
import os
import random
import secrets
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg  # type: ignore[import-untyped]

from gateway.ledger.records import SpendRecord
from gateway.ledger.reports import SpendRow

POSTGRES_ADMIN_DSN = os.environ.get(
    "GATEWAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
DAY0 = datetime(2026, 3, 1, tzinfo=UTC)


def postgres(dsn: str, *statements: str) -> None:
    """Run statements on PostgreSQL from a thread with its own event loop, so sync fixtures
    can use it while the tests' loop is idle."""

    async def run() -> None:
        conn = await asyncpg.connect(dsn, timeout=3)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


def scratch_database_name() -> str:
    return f"ledger_test_{os.getpid()}_{secrets.token_hex(4)}"


def with_database(dsn: str, database: str, driver: str = "postgresql+asyncpg") -> str:
    _, rest = dsn.split("://", 1)
    server = rest.rsplit("/", 1)[0]
    return f"{driver}://{server}/{database}"


@contextmanager
def scratch_postgres() -> Iterator[str]:
    """A new database on the test PostgreSQL (its asyncpg URL), dropped afterwards; the test
    is skipped (failed under GATEWAY_REQUIRE_SERVICES=1) when PostgreSQL is not usable."""
    from tests.conftest import service_missing

    name = scratch_database_name()
    try:
        postgres(POSTGRES_ADMIN_DSN, f'CREATE DATABASE "{name}"')
    except Exception as exc:
        where = POSTGRES_ADMIN_DSN.rsplit("@", 1)[-1]
        service_missing(f"PostgreSQL is not usable at {where}: {exc!r}")
    try:
        yield with_database(POSTGRES_ADMIN_DSN, name)
    finally:
        postgres(POSTGRES_ADMIN_DSN, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a server. ``down()`` cuts the open connections and resets
    new ones at once, as an unreachable database would look; ``up()`` forwards again. The
    port stays bound throughout, so no other process can take it in between."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.is_up = True
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        await self.down()
        if self._server is not None:
            self._server.close()

    async def down(self) -> None:
        self.is_up = False
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    async def up(self) -> None:
        self.is_up = True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.is_up:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._open.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        for w in (writer, up_writer):
            self._open.discard(w)
            w.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()


# -- records ---------------------------------------------------------------------------
KEYS = ["key-a", "key-b", "key-c", None]
TEAMS = ["research", "support", None]
USERS = ["alice", "bob", "=HYPERLINK(1)", None]
MODELS = ["gpt-4o", "mistral-large", "embed-small"]
PROVIDERS = ["openai", "azure-westeurope", "mistral", None]


def make_records(
    count: int,
    *,
    start: datetime = DAY0,
    span: timedelta = timedelta(days=4),
    seed: int = 1,
    prefix: str = "req",
) -> list[SpendRecord]:
    """``count`` varied records spread over ``span`` from ``start``; about one in eight has
    an unknown cost and one in ten failed."""
    rng = random.Random(seed)
    records = []
    for i in range(count):
        started = start + timedelta(microseconds=rng.randrange(int(span.total_seconds() * 1e6)))
        latency = rng.randrange(1, 30_000) / 7
        unknown = rng.random() < 0.125
        failed = rng.random() < 0.1
        model = rng.choice(MODELS)
        records.append(
            SpendRecord(
                request_id=f"{prefix}-{i:06d}",
                started_at=started,
                finished_at=started + timedelta(milliseconds=latency),
                model=model,
                status=rng.choice([429, 500, 502]) if failed else 200,
                operation="embeddings" if model == "embed-small" else "chat",
                latency_ms=latency,
                ttft_ms=None if failed or rng.random() < 0.5 else latency / 3,
                key_id=rng.choice(KEYS),
                team=rng.choice(TEAMS),
                end_user=rng.choice(USERS),
                tags={"env": rng.choice(["prod", "dev"]), "n": i},
                provider=rng.choice(PROVIDERS),
                deployment=f"dep-{rng.randrange(3)}",
                upstream_model=f"{model}-2024",
                region=rng.choice(["eu", "us", None]),
                attempts=rng.randrange(1, 4),
                fallback_used=rng.random() < 0.1,
                error_type="rate_limit_error" if failed else None,
                prompt_tokens=rng.randrange(0, 5000),
                cached_tokens=rng.randrange(0, 1000),
                completion_tokens=rng.randrange(0, 2000),
                reasoning_tokens=rng.randrange(0, 500),
                cost_usd=None
                if unknown
                else Decimal(rng.randrange(0, 10**13)).scaleb(-10),  # up to $1000, 1e-10 steps
                usage_estimated=rng.random() < 0.05,
                stream=rng.random() < 0.5,
                surface=("openai", "azure", "mistral", "library")[i % 4],
            )
        )
    return records


GROUP_FIELD = {
    "key": "key_id",
    "team": "team",
    "user": "end_user",
    "model": "model",
    "provider": "provider",
}


def expected_report(
    records: Iterable[SpendRecord],
    group_by: str,
    since: datetime,
    until: datetime,
    key_id: str | None = None,
) -> dict[str | None, SpendRow]:
    """The report computed the slow way, from the records themselves."""
    rows: dict[str | None, SpendRow] = {}
    for r in records:
        if not since <= r.started_at < until or (key_id is not None and r.key_id != key_id):
            continue
        if group_by == "day":
            group: str | None = r.started_at.date().isoformat()
        else:
            group = getattr(r, GROUP_FIELD[group_by]) or None
        row = rows.setdefault(group, SpendRow(group))
        row.requests += 1
        row.errors += r.status >= 400
        row.prompt_tokens += r.prompt_tokens
        row.cached_tokens += r.cached_tokens
        row.completion_tokens += r.completion_tokens
        row.reasoning_tokens += r.reasoning_tokens
        if r.cost_usd is None:
            row.unknown_cost_requests += 1
        else:
            row.cost_usd += r.cost_usd
    return rows
