"""The cost of one call: its usage (OpenAI's shape) times its price, in exact decimals.

OpenAI's usage counts cached, cache-write and audio prompt tokens inside ``prompt_tokens`` and
reasoning and audio tokens inside ``completion_tokens``; each is billed once, at its own price.
The price is the one in effect on the call's date, for the service tier that served it, with
long-context tiers chosen by the prompt's size. No float is involved anywhere:
token counts are integers, prices are Decimals, and a price per 1M tokens is divided by 10**6
by moving the decimal point.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Context, Decimal, DivisionByZero, InvalidOperation, Overflow
from typing import Any

from gateway.costs.catalog import Price
from gateway.facts import usd_str

# Wide enough that no realistic sum rounds (token counts x prices have few digits).
_EXACT = Context(prec=60, traps=[InvalidOperation, Overflow, DivisionByZero])
_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Cost:
    """USD for one call, split by kind of token; ``total`` is None when the cost is unknown.

    ``estimated`` says the token counts were estimated by the gateway (the provider sent no
    usage), not reported by the provider.
    """

    total: Decimal | None
    input: Decimal = _ZERO
    cached_input: Decimal = _ZERO
    output: Decimal = _ZERO
    reasoning: Decimal = _ZERO
    estimated: bool = False
    price: Price | None = None
    reason: str | None = None  # why the cost is unknown
    cache_write: Decimal = _ZERO
    input_audio: Decimal = _ZERO
    output_audio: Decimal = _ZERO

    @property
    def unknown(self) -> bool:
        return self.total is None

    def usd_str(self) -> str:
        """The total as a plain decimal string ("0.00012345", "0"), or "unknown"."""
        return usd_str(self.total) if self.total is not None else "unknown"

    def __add__(self, other: Cost) -> Cost:
        """Two parts of one call (e.g. a stream finished by a second deployment)."""
        unknown = self.total is None or other.total is None
        return Cost(
            total=None if unknown else _EXACT.add(self.total or _ZERO, other.total or _ZERO),
            input=_EXACT.add(self.input, other.input),
            cached_input=_EXACT.add(self.cached_input, other.cached_input),
            output=_EXACT.add(self.output, other.output),
            reasoning=_EXACT.add(self.reasoning, other.reasoning),
            estimated=self.estimated or other.estimated,
            price=self.price if self.price == other.price else None,
            reason=self.reason or other.reason,
            cache_write=_EXACT.add(self.cache_write, other.cache_write),
            input_audio=_EXACT.add(self.input_audio, other.input_audio),
            output_audio=_EXACT.add(self.output_audio, other.output_audio),
        )


def unknown_cost(reason: str, *, estimated: bool = False, price: Price | None = None) -> Cost:
    """A cost that cannot be known; ``reason`` says why, for logs and the ledger."""
    return Cost(total=None, estimated=estimated, price=price, reason=reason)


def total_usd(costs: Iterable[Cost]) -> Decimal | None:
    """The exact sum of many costs, or None if any of them is unknown."""
    total = _ZERO
    for cost in costs:
        if cost.total is None:
            return None
        total = _EXACT.add(total, cost.total)
    return total


def compute_cost(
    usage: Mapping[str, Any] | None,
    price: Price | None,
    *,
    embedding: bool = False,
    estimated: bool = False,
    at: datetime | date | None = None,
    service_tier: str | None = None,
) -> Cost:
    """The cost of a call with ``usage`` at ``price``, on date ``at`` (default: today, UTC)
    and for ``service_tier`` (the response's, else the request's; None: standard).

    Chat: uncached text prompt tokens at the input price;
    ``prompt_tokens_details.cached_tokens`` at the cached price, ``.cache_write_tokens`` at
    the cache-write price and ``.audio_tokens`` at the input-audio price; completion tokens
    at the output price except ``completion_tokens_details.reasoning_tokens`` at the
    reasoning price and ``.audio_tokens`` at the output-audio price. A long-context tier
    applies to every token of a call whose prompt exceeds it. The deployment's residency
    uplift (``price.multiplier``) scales every part. Embeddings (``embedding=True``): prompt
    tokens at the embedding price. A usage made by ``tokens.estimate_usage`` (it carries
    ``estimated_by``) is marked estimated.
    """
    if usage is not None and usage.get("estimated_by"):
        estimated = True
    if price is None:
        return unknown_cost("no price is known for this model", estimated=estimated)
    if isinstance(at, datetime):
        at = at.date()
    price = price.resolved(at, service_tier)
    if usage is None:
        return unknown_cost("the call reported no usage", estimated=estimated, price=price)

    prompt = _count(usage.get("prompt_tokens"))
    factor = price.multiplier
    if embedding:
        if prompt == 0:
            prompt = _count(usage.get("total_tokens"))
        part = _part(prompt, price.rate("embedding", prompt), factor)
        if part is None:
            return unknown_cost(
                f"{price.family} model {price.model!r} has no embedding price",
                estimated=estimated,
                price=price,
            )
        return Cost(total=part, input=part, estimated=estimated, price=price)

    # Each kind is taken out of what is left, so no token is billed twice even when a
    # provider's details add up to more than its totals.
    cached = min(_count(_detail(usage, "prompt_tokens_details", "cached_tokens")), prompt)
    written = min(
        _count(_detail(usage, "prompt_tokens_details", "cache_write_tokens")), prompt - cached
    )
    audio_in = min(
        _count(_detail(usage, "prompt_tokens_details", "audio_tokens")),
        prompt - cached - written,
    )
    completion = _count(usage.get("completion_tokens"))
    reasoning = min(
        _count(_detail(usage, "completion_tokens_details", "reasoning_tokens")), completion
    )
    audio_out = min(
        _count(_detail(usage, "completion_tokens_details", "audio_tokens")),
        completion - reasoning,
    )
    counts = {
        "input": prompt - cached - written - audio_in,
        "cached_input": cached,
        "cache_write": written,
        "input_audio": audio_in,
        "output": completion - reasoning - audio_out,
        "reasoning": reasoning,
        "output_audio": audio_out,
    }
    # Rates are looked up only for kinds of token the call used: none cost nothing.
    parts = {kind: _part(n, price.rate(kind, prompt), factor) for kind, n in counts.items() if n}
    missing = [kind for kind, amount in parts.items() if amount is None]
    if missing:
        return unknown_cost(
            f"{price.family} model {price.model!r} has no {' or '.join(missing)} price",
            estimated=estimated,
            price=price,
        )
    amounts = {kind: parts.get(kind) or _ZERO for kind in counts}
    total = _ZERO
    for amount in parts.values():
        total = _EXACT.add(total, amount or _ZERO)
    return Cost(
        total=total,
        input=amounts["input"],
        cached_input=amounts["cached_input"],
        output=amounts["output"],
        reasoning=amounts["reasoning"],
        cache_write=amounts["cache_write"],
        input_audio=amounts["input_audio"],
        output_audio=amounts["output_audio"],
        estimated=estimated,
        price=price,
    )


def usage_readable(usage: Mapping[str, Any] | None, *, embedding: bool = False) -> bool:
    """Whether ``usage`` is in OpenAI's shape, so its cost can be computed: integer
    ``prompt_tokens`` and (for chat) ``completion_tokens``. A usage block in another shape
    (``input_tokens``/``output_tokens``, only ``total_tokens``) is not: its cost would read as 0.
    """
    if not usage:
        return False

    def counted(name: str) -> bool:
        value = usage.get(name)
        return isinstance(value, int) and not isinstance(value, bool)

    if embedding:
        return counted("prompt_tokens") or counted("total_tokens")
    return counted("prompt_tokens") and counted("completion_tokens")


def served_tier(response: Mapping[str, Any], request: Any = None) -> str | None:
    """The service tier that served a call: the response's ``service_tier``, else the one the
    request asked for (a pydantic request's extra field), unless that is ``auto``."""
    tier = response.get("service_tier")
    if isinstance(tier, str) and tier:
        return tier
    extra = getattr(request, "model_extra", None) or {}
    asked = extra.get("service_tier")
    return asked if isinstance(asked, str) and asked and asked != "auto" else None


def _part(tokens: int, rate: Decimal | None, factor: Decimal = Decimal(1)) -> Decimal | None:
    """``tokens`` at ``rate`` USD per 1M, times ``factor``; no tokens cost nothing."""
    if tokens == 0:
        return _ZERO
    if rate is None:
        return None
    amount = _EXACT.multiply(Decimal(tokens), rate)
    if factor != 1:
        amount = _EXACT.multiply(amount, factor)
    return amount.scaleb(-6, _EXACT)


def _detail(usage: Mapping[str, Any], section: str, key: str) -> Any:
    details = usage.get(section)
    return details.get(key) if isinstance(details, Mapping) else None


def _count(value: Any) -> int:
    """A token count from usage; absent, null, negative or non-integer counts are 0."""
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return max(value, 0)
