"""The dashboard's side of the audit trail: its logins, logouts and key/team changes are
recorded like the admin API's (see ``gateway.governance.audit``), and its Audit page."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request

from gateway.engine import Engine
from gateway.governance.audit import trail_of


def ui_act(request: Request) -> tuple[str, str | None]:
    """The audit action and target of a dashboard change, from its route."""
    params = request.path_params
    last = request.url.path.rstrip("/").rsplit("/", 1)[-1]
    if "key_id" in params:
        verb = last if last in ("revoke", "rotate") else "update"
        return f"key.{verb}", str(params["key_id"])
    if "team_id" in params:
        return "team.update", str(params["team_id"])
    return ("team.create" if last == "teams" else "key.create"), None


def actor_subject(key_id: str | None) -> str:
    return "master" if key_id is None else key_id


async def record_ui_act(
    engine: Engine,
    request: Request,
    subject: str | None,
    action: str,
    target: str | None = None,
    outcome: str = "ok",
    fields: dict[str, Any] | list[str] | None = None,
) -> None:
    """Append a dashboard act; ``subject`` is the session's (``master`` or a key id), None
    when nobody could be identified (a failed login)."""
    trail = trail_of(engine.ledger)
    if trail is None:
        return
    actor = "unknown" if subject is None else "master" if subject == "master" else f"key:{subject}"
    detail: dict[str, Any] = {"via": "dashboard"}
    if fields:
        detail["fields"] = fields
    address = request.client.host if request.client else None
    await trail.record(actor, action, target, outcome, address, detail)


async def form_fields(request: Request, accepted: bool) -> dict[str, Any] | list[str]:
    """What a dashboard form set, for the trail: its fields (the CSRF token left out) when the
    change was accepted, only their names otherwise."""
    data = await request.form()
    fields = {k: v for k, v in data.items() if k != "csrf" and isinstance(v, str)}
    return fields if accepted else sorted(fields)


async def audit_page_data(engine: Engine, request: Request) -> dict[str, Any]:
    """The Audit page: the newest entries (``?after=ID`` pages on from an id), and, with
    ``?verify=1``, whether the chain is intact."""
    trail = trail_of(engine.ledger)
    if trail is None:
        return {"entries": [], "verification": None, "ledger": False, "older": None}
    raw = request.query_params.get("before", "")
    before = int(raw) if raw.isdigit() else None
    entries = await trail.newest(PAGE, before=before)
    verification = await trail.verify() if request.query_params.get("verify") == "1" else None
    rows = [e.public() for e in entries]
    for row in rows:
        row["detail_text"] = orjson.dumps(row["detail"], option=orjson.OPT_SORT_KEYS).decode()
    older = rows[-1]["id"] if len(rows) == PAGE else None
    return {"entries": rows, "verification": verification, "ledger": True, "older": older}


PAGE = 100
