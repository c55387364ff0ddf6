"""HTML form fields → the admin API's JSON bodies, so the same pydantic models
(``KeySpec``, ``KeyChange``, ``TeamSpec``, ``TeamChange``) check both.

A form sends every field as text. Creating, an empty field is left out (its default
applies); editing, an empty limit is sent as ``null``, which lifts it, as in a PATCH.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.datastructures import FormData

LIMITS = ("rpm", "tpm", "max_parallel")
_LIST = re.compile(r"[\s,]+")


def team_form(form: FormData, create: bool) -> dict[str, Any]:
    """A team body from the team form's fields."""
    body: dict[str, Any] = {}
    name = _field(form, "name")
    if name or create:
        body["name"] = name
    for limit in LIMITS:
        _optional(body, limit, _field(form, limit), create)
    _optional(body, "budget_usd", _field(form, "budget_usd"), create)
    period = _field(form, "budget_period")
    if period:
        body["budget_period"] = period
    models = _field(form, "allowed_models")
    if models is not None:
        body["allowed_models"] = [m for m in _LIST.split(models) if m]
    return body


def key_form(form: FormData, create: bool) -> dict[str, Any]:
    """A key body from the key form's fields (a team body plus team, admin and expiry)."""
    body = team_form(form, create)
    team = _field(form, "team")
    if team or not create:
        body["team"] = team or None
    body["admin"] = form.get("admin") in ("on", "true", "1")
    days = _field(form, "expires_in_days")
    if days:
        body["expires_in_days"] = days
    return body


def _field(form: FormData, name: str) -> str | None:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else None


def _optional(body: dict[str, Any], name: str, value: str | None, create: bool) -> None:
    if value:
        body[name] = value
    elif value is not None and not create:
        body[name] = None
