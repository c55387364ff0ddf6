"""The Logs page: the last requests, filtered, each with its attempts, tokens, cost and
where its price came from. Plain data for ``logs.html``; no HTTP here."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from gateway.engine import Engine
from gateway.errors import InvalidRequestError
from gateway.ledger.filters import RecordFilter, StatusFilter
from gateway.ledger.records import SpendRecord
from gateway.ui.views import Names, money

PAGE = 50
RANGES = {"1h": "Last hour", "24h": "Last 24 hours", "7d": "Last 7 days", "30d": "Last 30 days"}
_RANGE_SPANS = {
    "1h": timedelta(hours=1),
    "24h": timedelta(days=1),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
FILTERS = ("key", "team", "model", "deployment", "status", "cost_above", "range", "from", "to")


def read_filters(
    params: Mapping[str, str], now: datetime
) -> tuple[RecordFilter, datetime, datetime]:
    """The page's query (``key``, ``team``, ``model``, ``deployment``, ``status``,
    ``cost_above``, and ``range`` or ``from``/``to`` as dates or times) as a filter and a
    time range; a value that cannot be read is a 400 naming it."""

    def given(name: str) -> str | None:
        value = params.get(name, "").strip()
        return value or None

    status_text = given("status")
    status: StatusFilter | None = None
    if status_text in ("ok", "error"):
        status = "ok" if status_text == "ok" else "error"
    elif status_text is not None:
        if not status_text.isdigit():
            raise InvalidRequestError("status: ok, error or an HTTP status code", param="status")
        status = int(status_text)
    cost_text = given("cost_above")
    cost: Decimal | None = None
    if cost_text is not None:
        try:
            cost = Decimal(cost_text.lstrip("$"))
        except InvalidOperation:
            cost = None
        if cost is None or not cost.is_finite():
            raise InvalidRequestError("cost above: an amount in USD, e.g. 0.01", param="cost_above")
    since = now - _RANGE_SPANS.get(given("range") or "24h", _RANGE_SPANS["24h"])
    until = now + timedelta(minutes=1)
    if (start := given("from")) is not None:
        since = _moment("from", start)
    if (end := given("to")) is not None:
        until = _moment("to", end, end_of_day=True)
    filters = RecordFilter(
        key_id=given("key"),
        team=given("team"),
        model=given("model"),
        deployment=given("deployment"),
        status=status,
        cost_above=cost,
    )
    return filters, since, until


def _moment(name: str, text: str, *, end_of_day: bool = False) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRequestError(
            f"{name}: a date (2026-12-04) or a time (2026-12-04T10:30)", param=name
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if end_of_day and len(text) == 10:  # a date: through the end of that day
        moment += timedelta(days=1)
    return moment


def record_view(record: SpendRecord, names: Names) -> dict[str, Any]:
    """One request as the Logs page shows it."""
    return {
        "id": record.request_id,
        "at": record.started_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "key": names.label("key", record.key_id),
        "key_id": record.key_id or "",
        "team": names.label("team", record.team) if record.team else "",
        "model": record.model,
        "deployment": record.deployment or "",
        "upstream_model": record.upstream_model or "",
        "status": record.status,
        "error": record.is_error,
        "error_type": record.error_type or "",
        "stream": record.stream,
        "operation": record.operation,
        "cost": money(record.cost_usd),
        "cost_exact": "unknown" if record.cost_usd is None else format(record.cost_usd, "f"),
        "usage_basis": record.usage_basis,
        "cost_note": record.cost_note or "",
        "price": {
            "family": record.price_family or "",
            "model": record.price_model or "",
            "source": record.price_source or "",
            "effective": record.price_effective or "",
        },
        "tokens": {
            "prompt": record.prompt_tokens,
            "cached": record.cached_tokens,
            "completion": record.completion_tokens,
            "reasoning": record.reasoning_tokens,
        },
        "latency_ms": round(record.latency_ms),
        "ttft_ms": None if record.ttft_ms is None else round(record.ttft_ms),
        "end_user": record.end_user or "",
        "fallback_used": record.fallback_used,
        "content": content_view(record.content),
        "attempts": [
            {
                "deployment": a.deployment,
                "provider": a.provider or "",
                "status": "no answer" if a.status is None else a.status,
                "error_type": a.error_type or "",
                "failed": a.failed,
                "latency_ms": round(a.latency_ms),
                "billed": a.billed,
            }
            for a in record.attempt_log
        ],
    }


def _text(value: Any) -> str:
    """Message content as text: a string, or the text parts of a list of parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = [p.get("text") for p in value if isinstance(p, dict)]
        return "\n".join(p for p in parts if isinstance(p, str)) or "[non-text content]"
    return "" if value is None else json.dumps(value)[:2000]


def content_view(content: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The prompt and the answer kept for a key that logs content, for people."""
    if not content:
        return None
    prompt = [
        (str(m.get("role", "")), _text(m.get("content")))
        for m in content.get("messages") or []
        if isinstance(m, dict)
    ]
    if not prompt and content.get("input") is not None:
        prompt = [("input", _text(content["input"]))]
    answers = [
        _text((c.get("message") or {}).get("content"))
        for c in content.get("choices") or []
        if isinstance(c, dict)
    ]
    answers += [_text(o) for o in content.get("output") or []]
    return {"prompt": prompt, "answer": "\n\n".join(a for a in answers if a)}


async def logs_page(engine: Engine, params: Mapping[str, str]) -> dict[str, Any]:
    """The Logs page's data: the filters as given, the choices for them, the requests."""
    assert engine.ledger is not None
    now = datetime.now(UTC)
    filters, since, until = read_filters(params, now)
    names = await Names.load(engine)
    records = await engine.ledger.recent_records(since, until, filters, PAGE)
    models = sorted(engine.router.deployments)
    deployments = sorted({d.id for deps in engine.router.deployments.values() for d in deps})
    return {
        "query": {name: params.get(name, "") for name in FILTERS},
        "ranges": RANGES,
        "keys": sorted(
            ((k.id, names.label("key", k.id)) for k in names.keys.values()), key=lambda t: t[1]
        ),
        "teams": sorted(((t.id, t.name) for t in names.teams.values()), key=lambda t: t[1]),
        "models": models,
        "deployments": deployments,
        "records": [record_view(r, names) for r in records],
        "page_size": PAGE,
    }
