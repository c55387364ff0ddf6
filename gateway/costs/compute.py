"""The cost of one call: its usage (OpenAI's shape) times its price, in exact decimals.

OpenAI's usage counts cached prompt tokens inside ``prompt_tokens`` and reasoning tokens inside
``completion_tokens``; each is billed once, at its own price. No float is involved anywhere:
token counts are integers, prices are Decimals, and a price per 1M tokens is divided by 10**6
by moving the decimal point.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
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
) -> Cost:
    """The cost of a call with ``usage`` at ``price``.

    Chat: uncached prompt tokens at the input price, ``prompt_tokens_details.cached_tokens`` at
    the cached price, completion tokens at the output price except
    ``completion_tokens_details.reasoning_tokens`` at the reasoning price. Embeddings
    (``embedding=True``): prompt tokens at the embedding price. A usage made by
    ``tokens.estimate_usage`` (it carries ``estimated_by``) is marked estimated.
    """
    if usage is not None and usage.get("estimated_by"):
        estimated = True
    if price is None:
        return unknown_cost("no price is known for this model", estimated=estimated)
    if usage is None:
        return unknown_cost("the call reported no usage", estimated=estimated, price=price)

    prompt = _count(usage.get("prompt_tokens"))
    if embedding:
        if prompt == 0:
            prompt = _count(usage.get("total_tokens"))
        part = _part(prompt, price.embedding_rate)
        if part is None:
            return unknown_cost(
                f"{price.family} model {price.model!r} has no embedding price",
                estimated=estimated,
                price=price,
            )
        return Cost(total=part, input=part, estimated=estimated, price=price)

    cached = min(_count(_detail(usage, "prompt_tokens_details", "cached_tokens")), prompt)
    completion = _count(usage.get("completion_tokens"))
    reasoning = min(
        _count(_detail(usage, "completion_tokens_details", "reasoning_tokens")), completion
    )
    # Rates are looked up only for kinds of token the call used (most use no cached or
    # reasoning tokens): no tokens cost nothing even without a rate.
    uncached = _part(prompt - cached, price.input)
    cached_part = _part(cached, price.cached_input_rate) if cached else _ZERO
    output = _part(completion - reasoning, price.output)
    reasoning_part = _part(reasoning, price.reasoning_rate) if reasoning else _ZERO
    if uncached is None or cached_part is None or output is None or reasoning_part is None:
        parts = {
            "input": uncached,
            "cached_input": cached_part,
            "output": output,
            "reasoning": reasoning_part,
        }
        missing = [kind for kind, amount in parts.items() if amount is None]
        return unknown_cost(
            f"{price.family} model {price.model!r} has no {' or '.join(missing)} price",
            estimated=estimated,
            price=price,
        )
    add = _EXACT.add
    return Cost(
        total=add(add(add(uncached, cached_part), output), reasoning_part),
        input=uncached,
        cached_input=cached_part,
        output=output,
        reasoning=reasoning_part,
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


def _part(tokens: int, rate: Decimal | None) -> Decimal | None:
    """``tokens`` at ``rate`` USD per 1M; no tokens cost nothing even without a rate."""
    if tokens == 0:
        return _ZERO
    if rate is None:
        return None
    return _EXACT.multiply(Decimal(tokens), rate).scaleb(-6, _EXACT)


def _detail(usage: Mapping[str, Any], section: str, key: str) -> Any:
    details = usage.get(section)
    return details.get(key) if isinstance(details, Mapping) else None


def _count(value: Any) -> int:
    """A token count from usage; absent, null, negative or non-integer counts are 0."""
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return max(value, 0)
