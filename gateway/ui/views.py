"""What each dashboard page shows, gathered from the engine: its ledger (spend, traffic,
errors), its health board (circuits, quotas) and its key store. Plain data for the
templates; no HTTP here."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Literal, cast

from gateway.engine import Engine
from gateway.errors import InvalidRequestError
from gateway.facts import usd_str
from gateway.keys import Team, VirtualKey
from gateway.keys.admin import budget_status
from gateway.ledger.alerts import alerts_since
from gateway.ledger.ledger import Ledger
from gateway.ledger.reports import GroupBy, SpendRow
from gateway.ledger.series import (
    Dimension,
    TrafficMinute,
    buckets,
    deployment_errors,
    merged,
    spend_series,
    traffic,
)

PERIODS = {"today": "Today", "7d": "Last 7 days", "30d": "Last 30 days", "range": "From … to …"}
DIMENSIONS = {"model": "Model", "provider": "Provider", "team": "Team", "key": "Key"}
MAX_SERIES = 8  # groups drawn on their own; the rest are summed as "other"
PALETTE = (
    "#4269d0",
    "#efb118",
    "#ff725c",
    "#6cc5b0",
    "#3ca951",
    "#ff8ab7",
    "#a463f2",
    "#97bbf5",
    "#9c6b4e",
)


def money(amount: Decimal | None) -> str:
    """USD for people: cents above a dollar, significant digits below it."""
    if amount is None:
        return "unknown"
    if amount.is_zero():
        return "$0"
    if abs(amount) >= 1:
        return f"${amount:,.2f}"
    if abs(amount) >= Decimal("0.01"):
        return f"${amount:.4f}"
    return "$" + format(amount.quantize(Decimal("0.0000001")).normalize(), "f")


MAX_RANGE_DAYS = 366


def period_range(period: str, now: datetime) -> tuple[datetime, datetime, Literal["hour", "day"]]:
    """``[since, now)`` and the chart's bucket for a period name (today, 7d, 30d), or
    ``[from, to]`` for ``FROM..TO`` (ISO dates, both days included)."""
    if ".." in period:
        return date_range(*period.split("..", 1))
    midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "today":
        return midnight, now, "hour"
    days = 7 if period == "7d" else 30
    return midnight - timedelta(days=days - 1), now, "day"


def date_range(first: str, last: str) -> tuple[datetime, datetime, Literal["hour", "day"]]:
    """The UTC days ``first`` to ``last`` (ISO dates, both included), per hour when that is
    two days or less; a 400 naming the field when one is not a date or the order is wrong."""
    try:
        since = datetime.combine(date.fromisoformat(first), time(), tzinfo=UTC)
    except ValueError:
        raise InvalidRequestError("from: a date such as 2026-12-01", param="from") from None
    try:
        until = datetime.combine(date.fromisoformat(last), time(), tzinfo=UTC) + timedelta(days=1)
    except ValueError:
        raise InvalidRequestError("to: a date such as 2026-12-04", param="to") from None
    if until <= since:
        raise InvalidRequestError("to must be on or after from", param="to")
    if until - since > timedelta(days=MAX_RANGE_DAYS):
        raise InvalidRequestError(f"a range of at most {MAX_RANGE_DAYS} days", param="from")
    return since, until, "hour" if until - since <= timedelta(days=2) else "day"


@dataclass(slots=True)
class Names:
    """Key and team names by id, to show names where the ledger keeps ids."""

    keys: dict[str, VirtualKey] = field(default_factory=dict)
    teams: dict[str, Team] = field(default_factory=dict)

    @classmethod
    async def load(cls, engine: Engine) -> Names:
        if engine.keys is None:
            return cls()
        keys = {k.id: k for k in await engine.keys.list_keys()}
        return cls(keys, {t.id: t for t in await engine.keys.list_teams()})

    def label(self, dimension: str, group: str | None) -> str:
        if group is None:
            return "master key" if dimension == "key" else "(none)"
        if dimension == "key" and group in self.keys:
            key = self.keys[group]
            return f"{key.name} ({key.prefix}…)"
        if dimension == "team" and group in self.teams:
            return self.teams[group].name
        return group


def row_view(row: SpendRow, label: str, total: Decimal) -> dict[str, Any]:
    share = float(row.cost_usd / total * 100) if total else 0.0
    if not row.cost_known:  # every request's cost unknown: not $0
        cost, text = "unknown", "unknown"
    else:
        cost = usd_str(row.cost_usd)
        text = ("≥ " if row.unknown_cost_requests else "") + money(row.cost_usd)
    return {
        "group": row.group,
        "label": label,
        "requests": row.requests,
        "errors": row.errors,
        "tokens": row.prompt_tokens + row.completion_tokens,
        "cost": cost,
        "cost_text": text,
        "share": round(share, 1),
        "unknown": row.unknown_cost_requests,
    }


async def spend_page(engine: Engine, period: str, by: str, team: str | None) -> dict[str, Any]:
    """The spend page: chart series, totals, top keys and models, budget bars."""
    assert engine.ledger is not None
    ledger = engine.ledger
    now = datetime.now(UTC)
    since, until, unit = period_range(period, now)
    names = await Names.load(engine)
    rows = await ledger.spend_report(cast(GroupBy, by), since, until, team=team)
    total = SpendRow.total(rows)
    points = await spend_series(ledger.engine, cast(Dimension, by), since, until, unit, team=team)
    labels = buckets(since, until, unit)
    shown = [row.group for row in rows[:MAX_SERIES]]
    series: dict[str | None, list[Decimal]] = {g: [Decimal(0)] * len(labels) for g in shown}
    other = [Decimal(0)] * len(labels)
    position = {b: i for i, b in enumerate(labels)}
    for p in points:
        if p.bucket in position:
            series.get(p.group, other)[position[p.bucket]] += p.cost_usd
    datasets = [
        {
            "label": names.label(by, group),
            "data": [float(v) for v in values],
            "backgroundColor": PALETTE[i % len(PALETTE)],
        }
        for i, (group, values) in enumerate(series.items())
    ]
    if any(other):
        datasets.append(
            {"label": "other", "data": [float(v) for v in other], "backgroundColor": "#bab0ac"}
        )
    columns = [names.label(by, g) for g in series] + (["other"] if any(other) else [])
    table = [
        {
            "bucket": bucket,
            "cells": [money(values[i]) for values in series.values()]
            + ([money(other[i])] if any(other) else []),
            "total": money(sum((v[i] for v in series.values()), other[i])),
        }
        for i, bucket in enumerate(labels)
    ]
    top_keys = await ledger.spend_report("key", since, until, team=team)
    top_models = (
        rows if by == "model" else await ledger.spend_report("model", since, until, team=team)
    )
    return {
        "period": period,
        "by": by,
        "team": team or "",
        "teams": sorted(names.teams.values(), key=lambda t: t.name),
        "team_name": names.label("team", team) if team else None,
        "since": since,
        "until": until,
        "unit": unit,
        "total": row_view(total, "Total", total.cost_usd),
        "rows": [row_view(r, names.label(by, r.group), total.cost_usd) for r in rows],
        "top_keys": [
            row_view(r, names.label("key", r.group), total.cost_usd) for r in top_keys[:10]
        ],
        "top_models": [row_view(r, r.group or "(none)", total.cost_usd) for r in top_models[:10]],
        "chart": {"labels": [_short(b, unit) for b in labels], "datasets": datasets},
        "columns": columns,
        "table": table,
        "budgets": await budgets(engine, names),
        "savings": await cache_savings_view(ledger, since, until, team),
        "alerts": await recent_alerts(engine),
    }


async def cache_savings_view(
    ledger: Ledger, since: datetime, until: datetime, team: str | None
) -> dict[str, Any]:
    """What the response cache saved in the period (its hits and their original cost) and
    what batch jobs cost and saved against live prices."""
    savings = await ledger.cache_savings(since, until, team=team)
    return {
        "hits": savings.cache_hits,
        "saved": money(savings.saved_usd),
        "batch_requests": savings.batch_requests,
        "batch_cost": money(savings.batch_cost_usd),
        "batch_saved": money(savings.batch_saved_usd),
    }


async def recent_alerts(engine: Engine, days: int = 7) -> list[dict[str, Any]]:
    """Budget alerts sent in the last ``days`` days, newest first (alerts.webhook_url)."""
    if engine.ledger is None:
        return []
    since = datetime.now(UTC) - timedelta(days=days)
    return [
        {
            "scope": a.scope,
            "name": a.name,
            "threshold": a.threshold,
            "spent": money(a.spent_usd),
            "budget": money(a.budget_usd),
            "at": a.sent_at.strftime("%Y-%m-%d %H:%M UTC") if a.sent_at else "",
            "delivered": a.delivered,
        }
        for a in await alerts_since(engine.ledger.engine, since)
    ]


async def budgets(engine: Engine, names: Names) -> list[dict[str, Any]]:
    """Every team and live key with a budget: spent, budget, share and reset date."""
    out = []
    items: list[tuple[Literal["key", "team"], Team | VirtualKey]] = [
        ("team", t) for t in names.teams.values() if t.budget_usd is not None
    ]
    items += [
        ("key", k) for k in names.keys.values() if k.budget_usd is not None and k.revoked_at is None
    ]
    for kind, item in items:
        spend = await budget_status(item, kind, engine.limits, engine.ledger)
        spent, budget = Decimal(spend["spent_usd"]), Decimal(spend["budget_usd"])
        used = float(spent / budget * 100) if budget else 100.0
        resets = spend["resets_at"]
        out.append(
            {
                "kind": kind,
                "name": item.name,
                "period": spend["period"],
                "spent": money(spent),
                "budget": money(budget),
                "used": round(min(used, 100.0), 1),
                "over": used >= 90,
                "resets": resets[:16].replace("T", " ") + " UTC" if resets else "never",
            }
        )
    return sorted(out, key=lambda b: -b["used"])


def _short(bucket: str, unit: str) -> str:
    return bucket[11:16] if unit in ("hour", "minute") else bucket[5:]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value)


def minute_view(m: TrafficMinute) -> dict[str, Any]:
    return {
        "minute": m.minute[11:16] if len(m.minute) > 10 else m.minute,
        "requests": m.requests,
        "rps": round(m.requests / 60, 4),
        "errors": m.errors,
        "error_rate": round(m.errors / m.requests * 100, 1) if m.requests else 0.0,
        "retries": m.retries,
        "fallbacks": m.fallbacks,
        "p50": _ms(m.latency_p50_ms),
        "p95": _ms(m.latency_p95_ms),
        "ttft_p50": _ms(m.ttft_p50_ms),
        "ttft_p95": _ms(m.ttft_p95_ms),
    }


async def traffic_page(engine: Engine) -> dict[str, Any]:
    """The last hour, minute by minute, from the ledger."""
    assert engine.ledger is not None
    now = datetime.now(UTC)
    since = now.replace(second=0, microsecond=0) - timedelta(minutes=59)
    minutes = await traffic(engine.ledger.engine, since, now)
    views = [minute_view(m) for m in minutes]
    hour = minute_view(merged(minutes))
    hour["rps"] = round(hour["requests"] / max(1.0, (now - since).total_seconds()), 3)

    def line(key: str, name: str, color: str) -> dict[str, Any]:
        # Counts are 0 in a quiet minute; a rate or a latency there is no value (None).
        counted = key in ("rps", "retries", "fallbacks")
        data = [v[key] if counted or v["requests"] else None for v in views]
        return {"label": name, "data": data, "borderColor": color}

    labels = [v["minute"] for v in views]
    return {
        "hour": hour,
        "minutes": [v for v in reversed(views) if v["requests"]],
        "charts": {
            "rate": {
                "labels": labels,
                "datasets": [line("rps", "requests/s", PALETTE[0])],
            },
            "errors": {
                "labels": labels,
                "datasets": [
                    line("error_rate", "error rate %", PALETTE[2]),
                ],
            },
            "latency": {
                "labels": labels,
                "datasets": [
                    line("p50", "latency p50 ms", PALETTE[0]),
                    line("p95", "latency p95 ms", PALETTE[7]),
                    line("ttft_p50", "TTFT p50 ms", PALETTE[4]),
                    line("ttft_p95", "TTFT p95 ms", PALETTE[3]),
                ],
            },
            "retries": {
                "labels": labels,
                "datasets": [
                    line("retries", "retries", PALETTE[1]),
                    line("fallbacks", "fallbacks", PALETTE[6]),
                ],
            },
        },
    }


async def deployments_page(engine: Engine) -> dict[str, Any]:
    """Each deployment: its circuit and quota use (this process's health board) and what
    the ledger saw of it in the last hour."""
    now = datetime.now(UTC)
    seen = (
        await deployment_errors(engine.ledger.engine, now - timedelta(hours=1), now)
        if engine.ledger is not None
        else {}
    )
    board = engine.health
    clock = board.clock()
    out = []
    for model, deployments in engine.router.deployments.items():
        for dep in deployments:
            h = board.get(dep.id)
            state, remaining = h.state, max(0.0, h.open_until - clock)
            if board.shared is not None and state == "closed":
                shared, left = board.shared.state(dep.id)
                if shared != "closed":
                    state, remaining = shared, left
            fresh = clock - h.window_start < 60
            ledger = seen.get(dep.id)
            out.append(
                {
                    "id": dep.id,
                    "model": model,
                    "provider": dep.provider_name,
                    "upstream": dep.model,
                    "region": dep.region or "",
                    "state": state,
                    "state_text": _state_text(state, remaining, board.circuit.enabled),
                    "failures": h.consecutive_failures,
                    "in_flight": h.in_flight,
                    "latency": None if h.latency is None else round(h.latency * 1000),
                    "last_error": h.last_error or "",
                    "rpm": _quota(h.window_requests if fresh else 0, dep.rpm),
                    "tpm": _quota(h.window_tokens if fresh else 0, dep.tpm),
                    "requests": ledger.requests if ledger else 0,
                    "errors": ledger.errors if ledger else 0,
                    "error_types": sorted(
                        (ledger.types if ledger else {}).items(), key=lambda t: -t[1]
                    ),
                }
            )
    return {"deployments": out, "circuits": board.circuit.enabled}


def _state_text(state: str, remaining: float, enabled: bool) -> str:
    if not enabled:
        return "no breaker"
    if state == "open":
        return f"open · probe in {remaining:.0f}s" if remaining > 0 else "open · probe due"
    return "half-open" if state == "half_open" else "closed"


def _quota(used: int, limit: int | None) -> dict[str, Any] | None:
    if limit is None:
        return None
    return {"used": used, "limit": limit, "pct": round(min(100.0, used / limit * 100), 1)}


async def keys_last_used(engine: Engine, key_ids: list[str]) -> dict[str, datetime]:
    """When each key was last used, by the ledger (nothing without one)."""
    if engine.ledger is None or not key_ids:
        return {}
    await engine.ledger.caught_up()
    return await engine.ledger.last_used(key_ids)


async def keys_page(engine: Engine) -> dict[str, Any]:
    """Every key and team with its limits and current-period spend."""
    names = await Names.load(engine)
    keys = sorted(names.keys.values(), key=lambda k: (k.revoked_at is not None, k.name))
    used = await keys_last_used(engine, [k.id for k in keys])
    key_rows = []
    for key in keys:
        spend = (
            await budget_status(key, "key", engine.limits, engine.ledger)
            if key.revoked_at is None
            else None
        )
        key_rows.append(
            {
                "key": key,
                "team": names.label("team", key.team_id),
                "spend": spend,
                "last_used": used.get(key.id),
            }
        )
    team_rows = [
        {"team": t, "spend": await budget_status(t, "team", engine.limits, engine.ledger)}
        for t in sorted(names.teams.values(), key=lambda t: t.name)
    ]
    return {"keys": key_rows, "teams": team_rows}
