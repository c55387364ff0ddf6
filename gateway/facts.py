"""``GatewayFacts``: what the gateway knows about one call, the same type whichever way it ran.

In-process results take it from the engine's ``Call`` (``Call.facts``); results from a running
gateway read it from the ``x-gateway-*`` answer headers (and, for a stream, from its usage
chunk).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Context, Decimal, InvalidOperation
from typing import Any


@dataclass(frozen=True, slots=True)
class GatewayFacts:
    """Who answered a call, how, and what it cost.

    ``cost`` is in USD, None while or when the price is unknown (a stream's cost is known once
    it has ended); ``usage_estimated`` says the gateway counted the tokens itself because the
    provider reported none.
    """

    request_id: str | None = None
    provider: str | None = None
    deployment: str | None = None
    attempts: int | None = None
    fallback_used: bool = False
    cost: Decimal | None = None
    usage_estimated: bool = False
    overhead_ms: float | None = None
    dropped_params: tuple[str, ...] = ()
    cache: str | None = None  # hit, miss or bypass (None: the response cache is off)
    region: str | None = None  # the region of the deployment that answered


def facts_from_headers(headers: Mapping[str, str]) -> GatewayFacts:
    """The facts a running gateway sent with its answer (lower-case header names)."""
    return GatewayFacts(
        request_id=headers.get("x-request-id") or None,
        provider=headers.get("x-gateway-provider") or None,
        deployment=headers.get("x-gateway-deployment") or None,
        attempts=_number(headers.get("x-gateway-attempts"), int),
        fallback_used=headers.get("x-gateway-fallback-used") == "true",
        cost=usd(headers.get("x-gateway-cost")),
        usage_estimated=headers.get("x-gateway-usage-estimated") == "true",
        overhead_ms=_number(headers.get("x-gateway-overhead-ms"), float),
        dropped_params=tuple(
            p.strip() for p in headers.get("x-gateway-dropped-params", "").split(",") if p.strip()
        ),
        cache=headers.get("x-gateway-cache") or None,
        region=headers.get("x-gateway-region") or None,
    )


# Wide enough that normalising a cost never rounds it (costs.compute sums with the same width).
_WIDE = Context(prec=60)


def usd_str(amount: Decimal) -> str:
    """A Decimal as a plain string without exponent or trailing zeros: 1.2345E-4 → 0.00012345."""
    if amount.is_zero():
        return "0"
    return format(amount.normalize(_WIDE), "f")


def usd(value: object) -> Decimal | None:
    """A cost as the gateway writes it ("0.00012", "unknown") as a Decimal, or None."""
    if not isinstance(value, str) or not value or value == "unknown":
        return None
    try:
        return Decimal(value)
    except InvalidOperation:
        return None


def _number(value: str | None, kind: type[int] | type[float]) -> Any:
    try:
        return kind(value) if value else None
    except ValueError:
        return None
