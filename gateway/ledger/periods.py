"""The period a spend report or export covers, as people write it: ``7d``, ``24h``, ``30m``
(that long before now), an ISO-8601 date (its midnight, UTC) or timestamp (naive = UTC).

The HTTP API (``?since=&until=``) and ``llm-gateway spend --since/--until`` both read them
here, so the two accept exactly the same forms.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from gateway.ledger.records import as_utc

DEFAULT_LOOKBACK = timedelta(days=30)
_RELATIVE = re.compile(r"^(\d{1,6})([wdhms])$")
_UNITS = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes", "s": "seconds"}
# "…T10:00:00+02:00" sent unencoded in a query string arrives as "…T10:00:00 02:00".
_PLUS_DECODED_AS_SPACE = re.compile(r"^(.*T.*) (\d\d:?\d\d)$")
FORMS = "a duration before now (7d, 24h, 30m, 2w), an ISO-8601 date or timestamp"


class PeriodError(ValueError):
    """A ``since`` or ``until`` that cannot be read; ``param`` says which."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def parse_moment(text: str, now: datetime) -> datetime:
    """``text`` as an aware UTC datetime; ValueError (saying what is accepted) otherwise."""
    value = text.strip()
    relative = _RELATIVE.match(value)
    if relative:
        amount, unit = relative.groups()
        return as_utc(now) - timedelta(**{_UNITS[unit]: int(amount)})
    value = _PLUS_DECODED_AS_SPACE.sub(r"\1+\2", value)
    try:
        return as_utc(datetime.fromisoformat(value))
    except ValueError:
        raise ValueError(f"{text!r} is not a time: use {FORMS}") from None


def report_period(
    since: str | None, until: str | None, now: datetime | None = None
) -> tuple[datetime, datetime]:
    """``[since, until)`` in UTC; by default the last 30 days up to now. PeriodError names
    the bad end, or ``since`` when it comes after ``until``."""
    now = as_utc(now or datetime.now(UTC))
    try:
        end = parse_moment(until, now) if until else now
    except ValueError as exc:
        raise PeriodError("until", f"until: {exc}") from None
    try:
        start = parse_moment(since, now) if since else end - DEFAULT_LOOKBACK
    except ValueError as exc:
        raise PeriodError("since", f"since: {exc}") from None
    if start > end:
        raise PeriodError(
            "since",
            f"since ({start.isoformat()}) is after until ({end.isoformat()}); "
            "the period is [since, until)",
        )
    return start, end
