"""The ledger over time: spend per hour or day, and per-minute traffic (requests, errors,
retries, fallbacks, latency and time-to-first-token percentiles).

Read from the database rather than from a process's memory, so every worker and replica
sees the same numbers. Latency percentiles come from a fixed log-scale histogram that the
database fills (``GROUP BY`` minute and bin), so a busy hour costs a few thousand result
rows, not one per request, and the same SQL runs on SQLite and PostgreSQL. A percentile is
exact to within one bin, about 10% of its value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import ColumnElement, case, func, literal, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.ledger.records import ERROR_STATUS, as_utc
from gateway.ledger.reports import GROUP_COLUMNS, plan_range
from gateway.ledger.schema import spend_attempts, spend_daily
from gateway.ledger.schema import spend_records as records_table

Dimension = Literal["model", "provider", "team", "key"]
DIMENSIONS: tuple[str, ...] = ("model", "provider", "team", "key")
Bucket = Literal["minute", "hour", "day"]
# Histogram bin upper edges in milliseconds, 1 ms to ~12 min, each 20% above the last.
BIN_EDGES: tuple[float, ...] = tuple(1.2**i for i in range(75))


@dataclass(frozen=True, slots=True)
class SpendPoint:
    """Spend of one group in one bucket (``bucket``: ISO start, ``2026-11-27T10:00`` or
    ``2026-11-27``; ``group`` None for records without one)."""

    bucket: str
    group: str | None
    requests: int
    cost_usd: Decimal


@dataclass(slots=True)
class TrafficMinute:
    """One minute of traffic. ``retries`` counts upstream attempts beyond the first;
    latency percentiles cover the requests that succeeded, in milliseconds."""

    minute: str
    requests: int = 0
    errors: int = 0
    retries: int = 0
    fallbacks: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * (len(BIN_EDGES) + 1), repr=False)
    ttft: list[int] = field(default_factory=lambda: [0] * (len(BIN_EDGES) + 1), repr=False)

    @property
    def latency_p50_ms(self) -> float | None:
        return percentile(self.latency, 0.50)

    @property
    def latency_p95_ms(self) -> float | None:
        return percentile(self.latency, 0.95)

    @property
    def ttft_p50_ms(self) -> float | None:
        return percentile(self.ttft, 0.50)

    @property
    def ttft_p95_ms(self) -> float | None:
        return percentile(self.ttft, 0.95)


@dataclass(slots=True)
class DeploymentErrors:
    """What the ledger saw of one deployment: its attempts (``requests``), the failed ones
    (``errors``) and their types."""

    deployment: str
    requests: int = 0
    errors: int = 0
    types: dict[str, int] = field(default_factory=dict)


def percentile(histogram: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile of a BIN_EDGES histogram, interpolated within its bin."""
    total = sum(histogram)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(histogram):
        if count and seen + count >= rank:
            low = BIN_EDGES[i - 1] if i > 0 else 0.0
            high = BIN_EDGES[i] if i < len(BIN_EDGES) else BIN_EDGES[-1]
            return low + (high - low) * max(0.0, rank - seen) / count
        seen += count
    return BIN_EDGES[-1]


def _bin(column: Any) -> ColumnElement[int]:
    return case(*((column < edge, i) for i, edge in enumerate(BIN_EDGES)), else_=len(BIN_EDGES))


def _truncated(engine: AsyncEngine, column: Any, unit: Bucket) -> ColumnElement[str]:
    """``column`` (UTC) cut to its minute or hour, as ISO text: ``2026-11-27T10:05``."""
    if engine.dialect.name == "sqlite":  # stored as naive UTC text
        return func.strftime("%Y-%m-%dT%H:%M" if unit == "minute" else "%Y-%m-%dT%H:00", column)
    fmt = 'YYYY-MM-DD"T"HH24:MI' if unit == "minute" else 'YYYY-MM-DD"T"HH24:00'
    return func.to_char(func.timezone("UTC", column), fmt)


def buckets(since: datetime, until: datetime, unit: Bucket) -> list[str]:
    """Every bucket label in ``[since, until)``, oldest first."""
    since, until = as_utc(since), as_utc(until)
    if unit == "day":
        start = since.replace(hour=0, minute=0, second=0, microsecond=0)
        step = timedelta(days=1)
    elif unit == "hour":
        start = since.replace(minute=0, second=0, microsecond=0)
        step = timedelta(hours=1)
    else:
        start = since.replace(second=0, microsecond=0)
        step = timedelta(minutes=1)
    out = []
    while start < until:
        out.append(label(start, unit))
        start += step
    return out


def label(moment: datetime, unit: Bucket) -> str:
    if unit == "day":
        return moment.date().isoformat()
    return moment.strftime("%Y-%m-%dT%H:%M" if unit == "minute" else "%Y-%m-%dT%H:00")


async def spend_series(
    engine: AsyncEngine,
    group_by: Dimension,
    since: datetime,
    until: datetime,
    unit: Literal["hour", "day"],
    *,
    team: str | None = None,
) -> list[SpendPoint]:
    """Spend in ``[since, until)`` per ``unit`` and per group, optionally for one team.

    By day, whole UTC days come from the daily roll-up and only the partial days at the
    ends from the records (as in ``spend_report``); by hour, from the records."""
    if group_by not in DIMENSIONS:
        raise ValueError(f"group_by must be one of {', '.join(DIMENSIONS)}, not {group_by!r}")
    column = GROUP_COLUMNS[group_by]
    r = records_table.c
    sums: dict[tuple[str, str | None], list[Any]] = {}

    def add(bucket: str, group: str | None, requests: Any, cost: Any) -> None:
        entry = sums.setdefault((bucket, group or None), [0, Decimal(0)])
        entry[0] += int(requests or 0)
        entry[1] += cost if cost is not None else Decimal(0)

    async with engine.connect() as conn:
        if unit == "hour":
            ranges = [(as_utc(since), as_utc(until), _truncated(engine, r.started_at, "hour"))]
        else:
            plan = plan_range(since, until)
            ranges = [(s, e, literal(s.date().isoformat())) for s, e in plan.partial]
            if plan.days is not None:
                d = spend_daily.c
                daily = (
                    select(d.day, d[column], func.sum(d.requests), func.sum(d.cost_usd))
                    .where(d.day >= plan.days[0], d.day < plan.days[1])
                    .group_by(d.day, d[column])
                )
                if team is not None:
                    daily = daily.where(d.team == team)
                for day, group, requests, cost in await conn.execute(daily):
                    add(day.isoformat(), group, requests, cost)
        for start, end, bucket in ranges:
            raw = (
                select(bucket, r[column], calls_counted(), func.sum(r.cost_usd))
                .where(r.started_at >= start, r.started_at < end)
                .group_by(bucket, r[column])
            )
            if team is not None:
                raw = raw.where(r.team == team)
            for name, group, requests, cost in await conn.execute(raw):
                add(str(name), group, requests, cost)
    return [
        SpendPoint(bucket, group, requests, cost)
        for (bucket, group), (requests, cost) in sorted(
            sums.items(), key=lambda item: (item[0][0], item[0][1] or "")
        )
    ]


def calls_counted() -> Any:
    """How many calls a group of records holds (an adjustment row is no call)."""
    return func.sum(case((records_table.c.kind == "call", 1), else_=0))


async def traffic(engine: AsyncEngine, since: datetime, until: datetime) -> list[TrafficMinute]:
    """Every minute of ``[since, until)``, oldest first, quiet minutes included."""
    r = records_table.c
    minute = _truncated(engine, r.started_at, "minute")
    # Adjustments (re-pricing) are no traffic.
    window = (r.started_at >= as_utc(since), r.started_at < as_utc(until), r.kind == "call")
    minutes = {m: TrafficMinute(m) for m in buckets(since, until, "minute")}

    def at(name: Any) -> TrafficMinute:
        return minutes.setdefault(str(name), TrafficMinute(str(name)))

    counts = (
        select(
            minute,
            func.count(),
            func.sum(case((r.status >= ERROR_STATUS, 1), else_=0)),
            func.sum(r.attempts - 1),
            func.sum(case((r.fallback_used, 1), else_=0)),
        )
        .where(*window)
        .group_by(minute)
    )
    ok = r.status < ERROR_STATUS
    latency_bin, ttft_bin = _bin(r.latency_ms), _bin(r.ttft_ms)
    latencies = (
        select(minute, latency_bin, func.count()).where(*window, ok).group_by(minute, latency_bin)
    )
    ttfts = (
        select(minute, ttft_bin, func.count())
        .where(*window, ok, r.ttft_ms.is_not(None))
        .group_by(minute, ttft_bin)
    )
    async with engine.connect() as conn:
        for name, requests, errors, retries, fallbacks in await conn.execute(counts):
            m = at(name)
            m.requests, m.errors = int(requests), int(errors or 0)
            m.retries, m.fallbacks = max(0, int(retries or 0)), int(fallbacks or 0)
        for name, index, count in await conn.execute(latencies):
            at(name).latency[int(index)] += int(count)
        for name, index, count in await conn.execute(ttfts):
            at(name).ttft[int(index)] += int(count)
    return [minutes[m] for m in sorted(minutes)]


def merged(minutes: Sequence[TrafficMinute], name: str = "total") -> TrafficMinute:
    """The sums of several minutes, histograms included (for the whole hour's figures)."""
    out = TrafficMinute(name)
    for m in minutes:
        out.requests += m.requests
        out.errors += m.errors
        out.retries += m.retries
        out.fallbacks += m.fallbacks
        for i, count in enumerate(m.latency):
            out.latency[i] += count
        for i, count in enumerate(m.ttft):
            out.ttft[i] += count
    return out


async def deployment_errors(
    engine: AsyncEngine, since: datetime, until: datetime
) -> dict[str, DeploymentErrors]:
    """Per deployment attempted in ``[since, until)``: its attempts, its failed attempts and
    their error types (``spend_attempts``). A failure retried elsewhere stays the failing
    deployment's own, whichever deployment answered the request."""
    a = spend_attempts.c
    failed = or_(a.error_type.is_not(None), a.status.is_(None), a.status >= ERROR_STATUS)
    query = (
        select(a.deployment, a.error_type, func.count(), func.sum(case((failed, 1), else_=0)))
        .where(a.started_at >= as_utc(since), a.started_at < as_utc(until))
        .group_by(a.deployment, a.error_type)
    )
    out: dict[str, DeploymentErrors] = {}
    async with engine.connect() as conn:
        for deployment, error_type, requests, errors in await conn.execute(query):
            entry = out.setdefault(str(deployment), DeploymentErrors(str(deployment)))
            entry.requests += int(requests)
            entry.errors += int(errors or 0)
            if errors:
                name = str(error_type or "error")
                entry.types[name] = entry.types.get(name, 0) + int(errors)
    return out
