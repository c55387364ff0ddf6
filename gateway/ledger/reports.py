"""Reading the ledger: spend grouped by key, team, user, model, provider or day; the records
themselves, page by page; CSV.

A report over ``[since, until)`` reads a daily roll-up (``spend_daily_users`` by user,
``spend_daily`` otherwise) for the whole UTC days inside the range and the raw records only
for the partial days at its ends, so its cost grows with the number of days and groups, not
with the number of requests. Both parts sum the same stored values, so a report's totals
equal the sums of its records exactly.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import astuple, dataclass, fields
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Literal, TextIO, get_args

from sqlalchemy import ColumnElement, Select, String, func, literal, select, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.facts import usd_str
from gateway.ledger.filters import RecordFilter, with_attempts
from gateway.ledger.records import SpendRecord, as_utc
from gateway.ledger.schema import UTCDateTime, spend_daily, spend_daily_users
from gateway.ledger.schema import spend_records as records_table
from gateway.ledger.store import RECORD_FIELDS, record_sums

GroupBy = Literal["key", "team", "user", "model", "provider", "day"]
GROUPS: tuple[str, ...] = get_args(GroupBy)
GROUP_COLUMNS = {
    "key": "key_id",
    "team": "team",
    "user": "end_user",
    "model": "model",
    "provider": "provider",
}
MAX_PAGE = 10_000


@dataclass(slots=True)
class SpendRow:
    """One group of a spend report. ``group`` is the key id, team, user, model, provider or
    ISO day (None: records without one); ``cost_usd`` sums the known costs and
    ``unknown_cost_requests`` counts the requests whose cost is unknown."""

    group: str | None
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    unknown_cost_requests: int = 0

    @property
    def cost_known(self) -> bool:
        """Whether any of the group's cost is known (False: every request's is unknown)."""
        return not (self.requests and self.unknown_cost_requests >= self.requests)

    @property
    def cost(self) -> Decimal | None:
        """The group's cost as reported: None when all of it is unknown, else the sum of the
        known costs (a lower bound when ``unknown_cost_requests`` is not 0)."""
        return self.cost_usd if self.cost_known else None

    @property
    def cost_text(self) -> str:
        """``cost`` for people: "unknown", "≥ 0.12" for a lower bound, else the amount."""
        if not self.cost_known:
            return "unknown"
        return (">=" if self.unknown_cost_requests else "") + usd_str(self.cost_usd)

    @classmethod
    def total(cls, rows: Iterable[SpendRow]) -> SpendRow:
        """The sums of ``rows`` (``group`` None)."""
        out = cls(None)
        for row in rows:
            out.add(astuple(row)[1:])
        return out

    def add(self, values: Sequence[Any]) -> None:
        """Add one result row of ``_sums`` (requests … unknown_cost_requests)."""
        (requests, errors, prompt, cached, completion, reasoning, cost, unknown) = values
        self.requests += int(requests or 0)
        self.errors += int(errors or 0)
        self.prompt_tokens += int(prompt or 0)
        self.cached_tokens += int(cached or 0)
        self.completion_tokens += int(completion or 0)
        self.reasoning_tokens += int(reasoning or 0)
        self.cost_usd += cost if cost is not None else Decimal(0)
        self.unknown_cost_requests += int(unknown or 0)


@dataclass(slots=True)
class RecordPage:
    """Records in (started_at, request_id) order; pass ``next_cursor`` for the next page
    (None: this is the last one)."""

    records: list[SpendRecord]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class RangePlan:
    """Which part of ``[since, until)`` the roll-up answers and which the raw records do."""

    days: tuple[date, date] | None  # whole UTC days [first, last)
    partial: tuple[tuple[datetime, datetime], ...]  # each within one UTC day


def plan_range(since: datetime, until: datetime) -> RangePlan:
    since, until = as_utc(since), as_utc(until)
    if since >= until:
        return RangePlan(None, ())
    floor_since = datetime.combine(since.date(), time(), tzinfo=since.tzinfo)
    first_full = floor_since if since == floor_since else floor_since + timedelta(days=1)
    last_full = datetime.combine(until.date(), time(), tzinfo=until.tzinfo)
    if first_full > last_full:  # inside one day, touching neither midnight
        return RangePlan(None, ((since, until),))
    partial = []
    if since < first_full:
        partial.append((since, first_full))
    if last_full < until:
        partial.append((last_full, until))
    days = (first_full.date(), last_full.date()) if first_full < last_full else None
    return RangePlan(days, tuple(partial))


def _sums(table: Any, raw: bool) -> list[ColumnElement[Any]]:
    c = table.c
    if raw:  # the roll-up's sums, from the records (adjustments included)
        requests, errors, prompt, cached, completion, reasoning, unknown, cost = record_sums()
        return [requests, errors, prompt, cached, completion, reasoning, cost, unknown]
    return [
        func.sum(c.requests),
        func.sum(c.errors),
        func.sum(c.prompt_tokens),
        func.sum(c.cached_tokens),
        func.sum(c.completion_tokens),
        func.sum(c.reasoning_tokens),
        func.sum(c.cost_usd),
        func.sum(c.unknown_cost_requests),
    ]


async def spend_report(
    engine: AsyncEngine,
    group_by: GroupBy,
    since: datetime,
    until: datetime,
    key_id: str | None = None,
    *,
    team: str | None = None,
) -> list[SpendRow]:
    """Spend in ``[since, until)`` grouped by ``group_by``, optionally for one key or one
    team (by team id; not with ``user``, whose roll-up has no team).

    Rows by day come in date order; other groupings by cost, highest first.
    """
    if group_by not in GROUPS:
        raise ValueError(f"group_by must be one of {', '.join(GROUPS)}, not {group_by!r}")
    if team is not None and group_by == "user":
        raise ValueError("spend by user cannot be limited to a team")
    plan = plan_range(since, until)
    rows: dict[str | None, SpendRow] = {}

    def merge(group: object, values: Sequence[Any]) -> None:
        name = group.isoformat() if isinstance(group, date) else (str(group) if group else None)
        rows.setdefault(name, SpendRow(name)).add(values)

    async with engine.connect() as conn:
        if plan.days is not None:
            rollup = spend_daily_users if group_by == "user" else spend_daily
            d = rollup.c
            label = d.day if group_by == "day" else d[GROUP_COLUMNS[group_by]]
            daily = (
                select(label, *_sums(rollup, raw=False))
                .where(d.day >= plan.days[0], d.day < plan.days[1])
                .group_by(label)
            )
            if key_id is not None:
                daily = daily.where(d.key_id == key_id)
            if team is not None:
                daily = daily.where(d.team == team)
            for group, *values in await conn.execute(daily):
                merge(group, values)
        r = records_table.c
        for start, end in plan.partial:
            raw: Select[Any]
            if group_by == "day":
                raw = select(literal(start.date().isoformat()), *_sums(records_table, raw=True))
            else:
                dim = func.coalesce(r[GROUP_COLUMNS[group_by]], "")
                raw = select(dim, *_sums(records_table, raw=True)).group_by(dim)
            raw = raw.where(r.started_at >= start, r.started_at < end)
            if key_id is not None:
                raw = raw.where(r.key_id == key_id)
            if team is not None:
                raw = raw.where(r.team == team)
            for group, *values in await conn.execute(raw):
                # An aggregate without GROUP BY answers one row even for no records (its
                # token sums are then NULL); a group of adjustments only has no requests.
                if values[2] is not None:
                    merge(group, values)

    if group_by == "day":
        return sorted(rows.values(), key=lambda row: row.group or "")
    # A group whose cost is wholly unknown may be the dearest: it comes first (as NULLs do
    # in a descending SQL sort), never last as if it were free.
    return sorted(
        rows.values(),
        key=lambda row: (row.cost_known, -row.cost_usd, -row.requests, row.group or ""),
    )


async def scope_spend(
    engine: AsyncEngine, kind: Literal["key", "team"], ident: str, since: datetime, until: datetime
) -> Decimal:
    """What one key or team (by id) spent in ``[since, until)``, known costs only."""
    rows = await spend_report(engine, kind, since, until, ident if kind == "key" else None)
    return sum((r.cost_usd for r in rows if r.group == ident), Decimal(0))


async def spend_records(
    engine: AsyncEngine,
    since: datetime,
    until: datetime,
    key_id: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
    filters: RecordFilter | None = None,
) -> RecordPage:
    """One page of the records in ``[since, until)`` that pass ``filters``, oldest first,
    with their attempts (keyset pagination on (started_at, request_id): every record appears
    exactly once, however deep the page)."""
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE}")
    r = records_table.c
    query = select(records_table).where(r.started_at >= as_utc(since), r.started_at < as_utc(until))
    if key_id is not None:
        query = query.where(r.key_id == key_id)
    if filters is not None:
        query = filters.apply(query)
    if cursor is not None:
        after, request_id = decode_cursor(cursor)
        position = tuple_(literal(after, UTCDateTime()), literal(request_id, String()))
        query = query.where(tuple_(r.started_at, r.request_id) > position)
    query = query.order_by(r.started_at, r.request_id).limit(limit + 1)
    async with engine.connect() as conn:
        result = await conn.execute(query)
        records = [SpendRecord(**row._mapping) for row in result]
    more = len(records) > limit
    del records[limit:]
    await with_attempts(engine, records)
    return RecordPage(records, encode_cursor(records[-1]) if more else None)


def encode_cursor(record: SpendRecord) -> str:
    position = [as_utc(record.started_at).isoformat(), record.request_id]
    return base64.urlsafe_b64encode(json.dumps(position).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        started, request_id = json.loads(raw)
        return as_utc(datetime.fromisoformat(started)), str(request_id)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise ValueError("invalid cursor: pass next_cursor from the previous page") from None


# -- CSV -------------------------------------------------------------------------------
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: object) -> object:
    """A CSV cell. Text that a spreadsheet would run as a formula (caller-supplied user ids
    and tags can start with ``=``) is prefixed with ``'``."""
    if value is None:
        return ""
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime | date):
        return value.isoformat()
    text = json.dumps(value, sort_keys=True) if isinstance(value, dict) else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


CSV_TYPE = "text/csv; charset=utf-8"  # what report_csv and write_records_csv produce


def report_csv(
    rows: Iterable[SpendRow], group_by: GroupBy, names: Mapping[str, str] | None = None
) -> str:
    """A spend report as CSV text; the first column is named after the grouping. With
    ``names`` (keys' or teams' names by id) a ``name`` column follows the id."""
    columns = [f.name for f in fields(SpendRow)]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([group_by, *(["name"] if names is not None else []), *columns[1:]])
    for row in rows:
        cells = [_cell(row.cost if c == "cost_usd" else getattr(row, c)) for c in columns]
        if names is not None:
            cells.insert(1, _cell(names.get(row.group or "")))
        writer.writerow(cells)
    return out.getvalue()


def write_records_csv(records: Iterable[SpendRecord], out: TextIO, *, header: bool = True) -> int:
    """Write records as CSV (one column per stored field); returns how many."""
    names = list(RECORD_FIELDS)
    writer = csv.writer(out)
    if header:
        writer.writerow(names)
    count = 0
    for record in records:
        writer.writerow([_cell(getattr(record, name)) for name in names])
        count += 1
    return count


async def export_records_csv(
    engine: AsyncEngine,
    out: TextIO,
    since: datetime,
    until: datetime,
    key_id: str | None = None,
    page_size: int = 1000,
) -> int:
    """Every record in ``[since, until)`` as CSV, read page by page; returns how many."""
    cursor: str | None = None
    count = 0
    while True:
        page = await spend_records(engine, since, until, key_id, page_size, cursor)
        count += write_records_csv(page.records, out, header=cursor is None)
        cursor = page.next_cursor
        if cursor is None:
            return count


# -- text ------------------------------------------------------------------------------
_COUNTS = ("REQUESTS", "ERRORS", "PROMPT", "CACHED", "COMPLETION", "REASONING")


def render_report(
    rows: Sequence[SpendRow], group_by: GroupBy, names: Mapping[str, str] | None = None
) -> str:
    """A spend report as an aligned text table with a TOTAL line. Costs are exact and lined
    up on the decimal point; UNKNOWN COST counts the requests they leave out (no price).
    Rows without a group (no key, team, …) show as ``(none)``; with ``names`` a key or team
    shows as ``name (id)``."""
    total = SpendRow.total(rows)

    def label(group: str | None) -> str:
        if group is None:
            return "(none)"
        name = names.get(group) if names is not None else None
        return f"{name} ({group})" if name else group

    lines = [[label(row.group), *_counts(row)] for row in [*rows, total]]
    lines[-1][0] = "TOTAL"
    costs = _on_decimal_point([row.cost_text for row in [*rows, total]])
    table = [[group_by.upper(), *_COUNTS, "COST USD", "UNKNOWN COST"]] + [
        [*line, cost, str(row.unknown_cost_requests)]
        for line, cost, row in zip(lines, costs, [*rows, total], strict=True)
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    text = [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        )
        for line in table
    ]
    text.insert(-1, "-" * len(text[0]))
    if total.unknown_cost_requests:
        text.append(
            f"\n{total.unknown_cost_requests} of {total.requests} requests have an unknown cost "
            "(no price for their model), so the costs marked >= are lower bounds;\n"
            "`llm-gateway prices` lists the deployments without a price."
        )
    return "\n".join(text)


def _counts(row: SpendRow) -> list[str]:
    return [
        str(n)
        for n in (
            row.requests,
            row.errors,
            row.prompt_tokens,
            row.cached_tokens,
            row.completion_tokens,
            row.reasoning_tokens,
        )
    ]


def _on_decimal_point(amounts: Sequence[str]) -> list[str]:
    """Pad amounts so their decimal points line up once right-aligned."""
    decimals = max((len(a.partition(".")[2]) for a in amounts), default=0)
    out = []
    for amount in amounts:
        whole, point, fraction = amount.partition(".")
        out.append(whole + (point or (" " if decimals else "")) + fraction.ljust(decimals))
    return out
