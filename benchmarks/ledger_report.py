"""Ledger benchmark: ``python -m benchmarks.ledger_report`` (``--help`` for the options).

1. Writer throughput: ``LedgerWriter`` batches into SQLite (a temporary file) and PostgreSQL.
2. Reports at scale: 1,000,000 synthetic records are COPYed into a scratch PostgreSQL
   database, the daily roll-up is rebuilt from them, and ``spend_report`` is timed over the
   whole range (roll-up only) and over a range cutting through its first and last day
   (roll-up + raw records), next to the same report computed from the raw records alone.

Everything happens in a database created for the run (``ledger_bench_<random>``) and dropped
at the end, whatever happens. Prints a markdown summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.ledger.db import create_ledger_engine
from gateway.ledger.migrate import upgrade
from gateway.ledger.records import SpendRecord
from gateway.ledger.reports import (
    GROUP_COLUMNS,
    GroupBy,
    encode_cursor,
    spend_records,
    spend_report,
)
from gateway.ledger.schema import spend_daily, spend_daily_users
from gateway.ledger.schema import spend_records as records_table
from gateway.ledger.store import rebuild_daily
from gateway.ledger.writer import LedgerWriter

START = datetime(2026, 1, 1, tzinfo=UTC)
MODELS = {
    "gpt-4o": ("openai", "azure-westeurope"),
    "gpt-4o-mini": ("openai", "azure-westeurope"),
    "o3-mini": ("openai",),
    "mistral-large": ("mistral", "azure-ai"),
    "mistral-small": ("mistral",),
    "codestral": ("mistral",),
    "embed-small": ("openai",),
    "mistral-embed": ("mistral",),
}
COLUMNS = [f.name for f in fields(SpendRecord)]


class Synthetic:
    """Plausible traffic: keys belong to teams, some requests name an end user (a few users
    per key), each model is served by one or two providers, ~1% errors, ~2% unknown cost."""

    def __init__(self, days: int, keys: int, users_per_key: int, user_share: float) -> None:
        self.days = days
        self.keys = [f"key-{i:04d}" for i in range(keys)]
        self.team = {key: f"team-{i % 20:02d}" for i, key in enumerate(self.keys)}
        self.users = {key: [f"{key}-user-{j}" for j in range(users_per_key)] for key in self.keys}
        self.user_share = user_share
        self.models = list(MODELS)

    def records(
        self, start: datetime, span: timedelta, count: int, seed: int, prefix: str = "r"
    ) -> Iterator[SpendRecord]:
        """``count`` records arriving in time order over ``[start, start + span)``, as they
        would reach the ledger (so a time range is stored together, as in production)."""
        rng = random.Random(seed)
        step = span / count
        for i in range(count):
            started = start + step * (i + rng.random())
            key = rng.choice(self.keys)
            model = rng.choice(self.models)
            failed = rng.random() < 0.01
            prompt, completion = rng.randrange(10, 4000), rng.randrange(0, 1500)
            yield SpendRecord(
                request_id=f"{prefix}{seed}-{i:08d}",
                started_at=started,
                finished_at=started + timedelta(milliseconds=800),
                model=model,
                status=500 if failed else 200,
                latency_ms=800.0,
                key_id=key,
                team=self.team[key],
                end_user=rng.choice(self.users[key]) if rng.random() < self.user_share else None,
                tags={"app": "bench"},
                provider=rng.choice(MODELS[model]),
                deployment=model,
                upstream_model=model,
                attempts=1,
                prompt_tokens=prompt,
                cached_tokens=prompt // 4,
                completion_tokens=completion,
                cost_usd=None
                if rng.random() < 0.02
                else Decimal(prompt * 25 + completion * 100).scaleb(-7),
                stream=rng.random() < 0.5,
            )


def row(record: SpendRecord) -> tuple[Any, ...]:
    values = [getattr(record, name) for name in COLUMNS]
    values[COLUMNS.index("tags")] = json.dumps(record.tags)
    return tuple(values)


async def timed(work: Callable[[], Awaitable[Any]], repeat: int) -> float:
    """Median wall time of ``repeat`` runs, in milliseconds (after one warm-up run)."""
    await work()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await work()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def writer_throughput(url: str, data: Synthetic, count: int, batch: int) -> float:
    """Records per second through LedgerWriter, from the first submit to the last commit."""
    await upgrade(url)
    engine = create_ledger_engine(url)
    start = START + timedelta(hours=12)
    records = list(data.records(start, timedelta(minutes=10), count, seed=7, prefix="w"))
    writer = LedgerWriter(engine, batch_size=batch, queue_size=count, overflow_size=0)
    writer.start()
    started = time.perf_counter()
    for record in records:
        writer.submit(record)
    await writer.flush()
    elapsed = time.perf_counter() - started
    await writer.aclose()
    await engine.dispose()
    assert writer.written == count and writer.dropped == 0, "writer lost records"
    return count / elapsed


async def bulk_load(dsn: str, data: Synthetic, count: int, chunk: int = 50_000) -> float:
    """COPY ``count`` records into spend_records; returns seconds."""
    conn = await asyncpg.connect(dsn)
    started = time.perf_counter()
    span = timedelta(days=data.days) / count
    try:
        for seed, offset in enumerate(range(0, count, chunk)):
            size = min(chunk, count - offset)
            batch = data.records(START + span * offset, span * size, size, seed=seed + 100)
            rows = [row(r) for r in batch]
            await conn.copy_records_to_table("spend_records", records=rows, columns=COLUMNS)
        await conn.execute("ANALYZE spend_records")
    finally:
        await conn.close()
    return time.perf_counter() - started


async def raw_report(
    engine: AsyncEngine, group_by: GroupBy, since: datetime, until: datetime
) -> list[Any]:
    """The same report from the raw records alone: what it costs without the roll-up."""
    r = records_table.c
    dim = func.coalesce(r[GROUP_COLUMNS[group_by]], "")
    query = (
        select(dim, func.count(), func.sum(r.prompt_tokens), func.sum(r.cost_usd))
        .where(r.started_at >= since, r.started_at < until)
        .group_by(dim)
    )
    async with engine.connect() as conn:
        return list((await conn.execute(query)).all())


async def reports(url: str, dsn: str, args: argparse.Namespace, data: Synthetic) -> list[str]:
    lines = []
    load_seconds = await bulk_load(dsn, data, args.records)
    lines.append(f"- COPY {args.records:,} records: {load_seconds:.1f} s")
    engine = create_ledger_engine(url)
    try:
        last_day = (START + timedelta(days=args.days - 1)).date()
        started = time.perf_counter()
        await rebuild_daily(engine, START.date(), last_day)
        rollup_seconds = time.perf_counter() - started
        sizes = []
        async with engine.connect() as conn:
            for table in (spend_daily, spend_daily_users):
                await conn.exec_driver_sql(f"ANALYZE {table.name}")
                rows = (await conn.execute(select(func.count()).select_from(table))).scalar_one()
                sizes.append(f"{rows:,} rows in {table.name}")
        lines.append(
            f"- roll-ups rebuilt from the records in {rollup_seconds:.1f} s: {', '.join(sizes)}"
        )
        whole = (START, START + timedelta(days=args.days))
        cut = (START + timedelta(hours=13, minutes=37), whole[1] - timedelta(hours=14, minutes=48))
        lines += [
            "",
            "| report | whole range (roll-up only) | range cutting two days (roll-up + raw) "
            "| raw records only, whole range |",
            "|---|---:|---:|---:|",
        ]
        for group_by in ("model", "key", "user", "day"):
            g: GroupBy = group_by  # type: ignore[assignment]
            a = await timed(lambda g=g: spend_report(engine, g, *whole), args.repeat)
            b = await timed(lambda g=g: spend_report(engine, g, *cut), args.repeat)
            c = (
                await timed(lambda g=g: raw_report(engine, g, *whole), args.repeat)
                if g != "day"
                else None
            )
            raw = f"{c:.0f} ms" if c is not None else "n/a"
            lines.append(f"| `spend_report` by {group_by} | {a:.1f} ms | {b:.1f} ms | {raw} |")
        key = data.keys[0]
        a = await timed(lambda: spend_report(engine, "model", *whole, key_id=key), args.repeat)
        lines.append(f"| `spend_report` by model, one key | {a:.1f} ms | | |")

        first = await timed(lambda: spend_records(engine, *whole, limit=100), args.repeat)
        middle = SpendRecord("m", START + timedelta(days=args.days / 2), START, "", 200)
        cursor = encode_cursor(middle)
        deep = await timed(
            lambda: spend_records(engine, *whole, limit=100, cursor=cursor), args.repeat
        )
        lines.append(
            f"\n- `spend_records` page of 100: first page {first:.1f} ms, "
            f"a page half-way through the {args.records:,} records {deep:.1f} ms"
        )
    finally:
        await engine.dispose()
    return lines


async def main(args: argparse.Namespace) -> None:
    data = Synthetic(args.days, args.keys, args.users_per_key, args.user_share)
    admin = await asyncpg.connect(args.postgres, timeout=5)
    name = f"ledger_bench_{secrets.token_hex(4)}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    server = make_url(args.postgres).set(drivername="postgresql+asyncpg", database=name)
    url = server.render_as_string(hide_password=False)
    dsn = server.set(drivername="postgresql").render_as_string(hide_password=False)
    lines = [f"## Ledger benchmark ({datetime.now(UTC):%Y-%m-%d}, {os.cpu_count()} CPUs)", ""]
    try:
        if args.writer_records:
            with tempfile.TemporaryDirectory() as tmp:
                lite = await writer_throughput(
                    f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}",
                    data,
                    args.writer_records,
                    args.batch_size,
                )
            pg = await writer_throughput(url, data, args.writer_records, args.batch_size)
            lines += [
                f"- LedgerWriter, {args.writer_records:,} records in batches of "
                f"{args.batch_size}: SQLite {lite:,.0f} records/s, PostgreSQL {pg:,.0f} records/s",
            ]
            engine = create_ledger_engine(url)
            async with engine.begin() as conn:
                await conn.exec_driver_sql("TRUNCATE spend_records, spend_daily")
            await engine.dispose()
        else:
            await upgrade(url)
        if args.records:
            lines += await reports(url, dsn, args, data)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    print("\n".join(lines))


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "GATEWAY_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="a database on the server to create the scratch database from",
    )
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--users-per-key", type=int, default=5)
    parser.add_argument(
        "--user-share", type=float, default=0.3, help="share of requests naming an end user"
    )
    parser.add_argument("--writer-records", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
