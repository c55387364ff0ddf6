"""After a call: its usage (reported, or estimated offline), its cost, its ledger record.

The engine calls ``Accountant`` once per request, whatever the outcome. Pricing is arithmetic
on the request path (the ``x-gateway-cost`` header needs it); token estimation, when a call
ended without usage it could read, runs off the event loop; the ledger write is a queue append.
An attempt that was sent and got no answer is billed its estimated input: unknown is never $0.

Before a call, it tells budgets what the call may cost at most (``worst_case_cost``), which
deployments have no price to reserve by (``unpriced``), and the largest output cap a budget's
remainder still pays for (``budget_output_cap``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from typing import Any

from gateway.call import Call
from gateway.config import GatewayConfig, PriceConfig
from gateway.costs import (
    Cost,
    Price,
    PriceBook,
    compute_cost,
    count_tokens,
    estimate_usage_async,
    price_family,
    unknown_cost,
)
from gateway.costs.media import media_token_bound
from gateway.costs.reasoning import is_reasoning_model
from gateway.costs.report import unpriced_deployments
from gateway.errors import GatewayError, PermissionDeniedError
from gateway.ledger.ledger import Ledger
from gateway.ledger.records import AttemptEntry, SpendRecord, token_counts
from gateway.types import CompletionRequest
from gateway.wire import JSON
from providers.base import Deployment

# Output tokens reserved for an uncapped call to a reasoning model the catalog gives no
# output limit: its reasoning alone often runs to tens of thousands of tokens.
REASONING_RESERVE = 32_768
# Attempts that reached no upstream (the connection failed) were not billed by the provider.
_NOT_SENT = frozenset({"upstream_unreachable"})
UNANSWERED_NOTE = (
    "input estimated for {n} attempt(s) that got no answer (timed out or abandoned after the "
    "request was sent); the provider may bill them"
)

log = logging.getLogger("gateway.accounting")


class Accountant:
    """Prices calls and records them in the ledger (when one is configured)."""

    def __init__(self, config: GatewayConfig, ledger: Ledger | None) -> None:
        self.prices = PriceBook(config)
        self.ledger = ledger
        unpriced = config.limits.unpriced
        self.metering = None if unpriced == "deny" else unpriced.price
        self._metered: dict[tuple[str, str | None], Price] = {}
        for row in unpriced_deployments(config):
            log.warning("%s", row.message)

    def price(self, dep: Deployment, upstream_model: str | None = None) -> Price | None:
        """The price of a call served by ``dep``: the catalog's (with the config's), else the
        metering price of ``limits.unpriced`` if the config sets one."""
        price = self.prices.price(dep, upstream_model)
        if price is not None or self.metering is None:
            return price
        key = (dep.id, upstream_model)
        metered = self._metered.get(key)
        if metered is None:
            family = price_family(dep.provider.settings, type(dep.provider))
            metered = metering_price(
                self.metering, family, upstream_model or dep.base_model or dep.model
            )
            if len(self._metered) < 4096:
                self._metered[key] = metered
        return metered

    def cost(
        self,
        dep: Deployment | None,
        upstream_model: str | None,
        usage: JSON | None,
        *,
        embedding: bool = False,
        service_tier: str | None = None,
    ) -> Cost:
        """The cost of ``usage`` at the price of ``dep`` (answering as ``upstream_model``), on
        today's prices for ``service_tier``."""
        if dep is None:
            return unknown_cost("no deployment answered")
        price = self.price(dep, upstream_model)
        return compute_cost(usage, price, embedding=embedding, service_tier=service_tier)

    def unanswered(self, call: Call) -> list[Deployment]:
        """The deployments of attempts that were sent and got no answer (a timeout, the
        caller gone): the provider may bill their input, so they are not free."""
        if call.unanswered_billed or call.request is None:
            return []
        deps = []
        for attempt in call.attempt_log:
            if attempt.status is None and attempt.error not in _NOT_SENT:
                dep = call.candidates.get(attempt.deployment)
                if dep is not None:
                    deps.append(dep)
        return deps

    async def bill_unanswered(self, call: Call) -> None:
        """Add the estimated input of the call's unanswered attempts to its usage and cost
        (once): an estimate, marked so, never a known $0."""
        deps = self.unanswered(call)
        call.unanswered_billed = True
        if not deps or call.request is None:
            return
        request = call.request
        messages = request.prompt_messages()
        cost = call.cost
        usage = call.usage
        for dep in deps:
            estimate = await self.estimate(dep, None, messages, [], request.tools)
            part = (
                self.cost(dep, None, estimate)
                if estimate is not None
                else unknown_cost("could not count the prompt's tokens", estimated=True)
            )
            cost = part if cost is None else cost + part
            usage = add_usage(usage, estimate)
        call.cost, call.usage = cost, usage
        note = UNANSWERED_NOTE.format(n=len(deps))
        call.cost_note = f"{call.cost_note}; {note}" if call.cost_note else note

    async def estimate(
        self,
        dep: Deployment | None,
        upstream_model: str | None,
        messages: Sequence[JSON],
        generated: Sequence[str],
        tools: Sequence[JSON] | None = None,
    ) -> JSON | None:
        """Usage counted offline for a call whose provider reported none."""
        if dep is None:
            return None
        try:
            return await estimate_usage_async(
                messages,
                list(generated),
                dep.provider.tokenizer,
                upstream_model or dep.base_model or dep.model,
                tools=tools,
            )
        except Exception:  # a missing tokenizer must not lose the record
            log.exception("could not estimate usage with the %s tokenizer", dep.provider_name)
            return None

    def unpriced(
        self, deployments: Iterable[Deployment], request: CompletionRequest | None
    ) -> list[Deployment]:
        """Deployments whose calls of this kind (chat, or embeddings when ``request`` is
        None) have no price to reserve a budget by."""
        out = []
        for dep in deployments:
            price = self.price(dep)
            if price is None:
                out.append(dep)
            elif request is None:
                if price.embedding_rate is None:
                    out.append(dep)
            elif price.input is None or price.output is None:
                out.append(dep)
        return out

    def unpriced_refusal(self, model: str, deps: Sequence[Deployment]) -> PermissionDeniedError:
        """The answer to a caller with a budget asking for a model that has no price."""
        dep = deps[0]
        family = price_family(dep.provider.settings, type(dep.provider))
        name = dep.base_model or dep.model
        return PermissionDeniedError(
            f"model {model!r} has no price (deployment {dep.id}: no {family} price for "
            f"{name!r}), so its calls cannot be counted against this key's or team's budget. "
            f"Give the deployment a `price:`, add `prices.{family}.{name}` to the config, or "
            "set `limits.unpriced: {price: {input: …, output: …}}` to meter unpriced models.",
            param="model",
            code="model_unpriced",
        )

    def budget_output_cap(
        self, deployments: Iterable[Deployment], request: CompletionRequest, remaining: Decimal
    ) -> int | None:
        """The largest output cap (tokens per choice) whose worst case on every one of
        ``deployments`` fits ``remaining`` USD; None if no deployment prices output."""
        choices = request.n or 1
        cap: int | None = None
        for dep in deployments:
            price = self.price(dep)
            if price is None:
                continue
            prompt = request.prompt_token_bound(media_token_bound(price))
            rate_in, rate_out = reserve_rates(price, asked_tier(request))
            if rate_out == 0:
                continue
            room = remaining * 10**6 - prompt * rate_in
            fits = int((room / (rate_out * choices)).to_integral_value(rounding=ROUND_FLOOR))
            cap = fits if cap is None else min(cap, fits)
        return cap

    def output_cap(
        self, deployments: Iterable[Deployment], request: CompletionRequest, default: int
    ) -> int:
        """The largest output cap the worst case of ``request`` assumes on ``deployments``."""
        given = request.max_completion_tokens or request.max_tokens
        if given is not None:
            return given
        caps = [
            (price.max_output_tokens if price is not None else None) or output_reserve(dep, default)
            for dep, price in ((dep, self.price(dep)) for dep in deployments)
        ]
        return max(caps, default=default)

    async def estimate_embedding(
        self, dep: Deployment | None, upstream_model: str | None, inputs: object
    ) -> JSON | None:
        """Usage of an embeddings call counted offline: token arrays exactly, texts with the
        deployment's tokenizer (a provider's usage could not be read)."""
        if dep is None:
            return None
        items = inputs if isinstance(inputs, list) else [inputs]
        tokens = 0
        model = upstream_model or dep.base_model or dep.model
        try:
            for item in items:
                if isinstance(item, int):
                    tokens += 1
                elif isinstance(item, list):
                    tokens += len(item)
                else:
                    tokens += await count_tokens(str(item), dep.provider.tokenizer, model)
        except Exception:  # a missing tokenizer must not lose the record
            log.exception(
                "could not count embedding input with the %s tokenizer", dep.provider_name
            )
            return None
        return {"prompt_tokens": tokens, "total_tokens": tokens, "estimated_by": "offline"}

    def list_price(self, dep: Deployment) -> Decimal | None:
        """A deployment's price per 1M input + output tokens (for the ``cost`` strategy)."""
        price = self.prices.price(dep)
        if price is None or price.input is None or price.output is None:
            return None
        return price.input + price.output

    def worst_case_cost(
        self,
        deployments: Iterable[Deployment],
        request: CompletionRequest | None,
        *,
        default_max_output: int,
        embedding_tokens: int = 0,
    ) -> Decimal:
        """The most a request can cost on any of ``deployments``: an upper bound of its prompt
        plus its output cap (or the model's), at the dearest price. Budgets reserve this."""
        worst = Decimal(0)
        for dep in deployments:
            price = self.price(dep)
            if price is None:
                continue  # refused beforehand for callers with a budget (``unpriced``)
            # Images, audio and files count by this model's rules (gateway/costs/media.py).
            prompt = request.prompt_token_bound(media_token_bound(price)) if request else 0
            if request is None:
                rate = price.reserve_rate("embedding") or Decimal(0)
                worst = max(worst, embedding_tokens * rate / 10**6)
                continue
            cap = (
                request.max_completion_tokens
                or request.max_tokens
                or price.max_output_tokens
                or output_reserve(dep, default_max_output)
            )
            out = cap * (request.n or 1)
            rate_in, rate_out = reserve_rates(price, asked_tier(request))
            cost = (prompt * rate_in + out * rate_out) / 10**6
            worst = max(worst, cost)
        return worst

    def record(self, info: Call, error: GatewayError | None = None) -> None:
        """Write the call's ledger record (never blocks, never raises)."""
        if self.ledger is None:
            return
        try:
            try:
                record = spend_record(info, error)
            except Exception:
                # Usage the upstream sent in a shape nothing could read: the call is still
                # on the bill, recorded without it.
                log.exception("request %s: recorded without its unreadable usage", info.request_id)
                info.usage = None
                record = spend_record(info, error)
            self.ledger.submit(record)
        except Exception:
            log.exception("could not record request %s in the ledger", info.request_id)


def spend_record(info: Call, error: GatewayError | None) -> SpendRecord:
    """The ledger's view of one finished call."""
    finished = datetime.now(UTC)
    latency = info.elapsed_seconds()
    started = finished - timedelta(seconds=latency)
    usage = info.usage if error is None or info.usage else None
    counts = token_counts(usage)
    cost = info.cost
    # A call that failed before any attempt was sent (or whose attempts were refused by the
    # upstream) was billed nothing (zero, known); an unanswered attempt has a cost already.
    total = cost.total if cost is not None else (Decimal(0) if error is not None else None)
    price = cost.price if cost is not None else None
    note = info.cost_note
    if cost is not None and cost.reason and cost.total is None:
        note = f"{cost.reason}; {note}" if note else cost.reason
    return SpendRecord(
        request_id=info.request_id,
        started_at=started,
        finished_at=finished,
        model=info.model or "",
        status=error.status if error is not None else 200,
        operation=info.operation,
        latency_ms=round(latency * 1000, 3),
        ttft_ms=None if info.ttft_seconds is None else round(info.ttft_seconds * 1000, 3),
        key_id=info.key_id,
        team=info.team,
        end_user=info.end_user,
        tags={**info.tags, "client_request_id": info.client_request_id}
        if info.client_request_id
        else dict(info.tags),
        provider=info.provider,
        deployment=info.deployment,
        upstream_model=info.upstream_model,
        region=info.region,
        attempts=info.attempts,
        fallback_used=info.fallback_used,
        error_type=None if error is None else (error.code or error.type),
        prompt_tokens=counts.prompt,
        cached_tokens=counts.cached,
        completion_tokens=counts.completion,
        reasoning_tokens=counts.reasoning,
        cost_usd=total,
        usage_estimated=bool(cost is not None and cost.estimated),
        stream=info.stream,
        surface=info.surface,
        usage_basis=info.usage_basis,
        cost_note=note,
        price_family=price.family if price is not None else None,
        price_model=price.model if price is not None else None,
        price_source=price_source(price),
        price_effective=price_effective(price),
        cache_hit=info.cache_hit,
        saved_usd=info.saved_usd,
        content=info.content if info.keeps_content and info.content else None,
        attempt_log=attempt_entries(info),
    )


def attempt_entries(info: Call) -> tuple[AttemptEntry, ...]:
    """The call's upstream attempts as the ledger keeps them. Billed: the attempt whose
    answer was taken, and each one the prompt was sent on and left unanswered when the
    call's cost includes its estimated input."""
    out = []
    served = info.served_by
    for i, attempt in enumerate(info.attempt_log):
        dep = info.candidates.get(attempt.deployment)
        answered = attempt.status is not None and attempt.status < 400 and attempt.error is None
        unanswered = attempt.status is None and attempt.error not in _NOT_SENT
        billed = (answered and served is not None and served.id == attempt.deployment) or (
            unanswered and info.unanswered_billed and dep is not None
        )
        error = attempt.error
        if attempt.status is None and error is None:
            # Still running when the call ended: the caller left, or a stream was cut off.
            error = "abandoned" if i == len(info.attempt_log) - 1 else "unknown"
        out.append(
            AttemptEntry(
                deployment=attempt.deployment,
                started_at=datetime.fromtimestamp(attempt.started, UTC),
                latency_ms=round(attempt.seconds * 1000, 3),
                provider=dep.provider_name if dep is not None else None,
                model=attempt.model,
                status=attempt.status,
                error_type=error,
                billed=billed,
            )
        )
    return tuple(out)


def output_reserve(dep: Deployment, default: int) -> int:
    """Output tokens to reserve when neither the request nor the catalog caps them: a
    reasoning model's hidden reasoning counts as output, so it gets at least
    ``REASONING_RESERVE``."""
    if is_reasoning_model(dep.base_model, dep.model):
        return max(default, REASONING_RESERVE)
    return default


def metering_price(metering: PriceConfig, family: str, model: str) -> Price:
    """The price ``limits.unpriced`` meters an unpriced model at (its source says so)."""
    return Price(family=family, model=model, source="limits.unpriced", origin="config").overridden(
        metering, "config"
    )


def unreadable_usage_note(usage: Mapping[str, Any] | None) -> str:
    """Why a call's usage was counted offline."""
    if not usage:
        return "the provider sent no usage; tokens counted offline"
    fields = ", ".join(sorted(map(str, usage)))[:200]
    return f"the provider's usage could not be read (fields: {fields}); tokens counted offline"


# reserve_rates by (id(price), tier): (that price, the day it was worked out for, the rates).
# Holding the price makes an id reused after a reload miss instead of answer for another.
_RESERVE_RATES: dict[tuple[int, str | None], tuple[Price, str, tuple[Decimal, Decimal]]] = {}


def reserve_rates(price: Price, service_tier: str | None = None) -> tuple[Decimal, Decimal]:
    """The dearest a prompt token and an output token can cost under ``price`` (USD per 1M)
    for a request asking for ``service_tier``: long-context tiers and the deployment's uplift
    included, cache writes and reasoning too, so a reservation is never below what the call
    can be billed. Audio rates are left out: they would make every text call reserve many
    times its worth. Worked out once per price, tier and (for a dated price) day: every
    admission asks, for each deployment its request could reach."""
    key = (id(price), service_tier)
    day = datetime.now(UTC).date().isoformat() if price.history else ""
    known = _RESERVE_RATES.get(key)
    if known is not None and known[0] is price and known[1] == day:
        return known[2]

    def dearest(*kinds: str) -> Decimal:
        rates = [price.reserve_rate(kind, service_tier) for kind in kinds]
        return max((r for r in rates if r is not None), default=Decimal(0))

    rates = dearest("input", "cache_write"), dearest("output", "reasoning")
    if len(_RESERVE_RATES) >= 4096:  # reloads leave old prices behind: start again
        _RESERVE_RATES.clear()
    _RESERVE_RATES[key] = (price, day, rates)
    return rates


def asked_tier(request: CompletionRequest) -> str | None:
    """The service tier a request asks for (None: the standard one, or ``auto``)."""
    tier = (request.model_extra or {}).get("service_tier")
    return tier if isinstance(tier, str) and tier not in ("", "auto", "default") else None


def price_source(price: Price | None) -> str | None:
    """Where a price comes from, for the ledger: its published source, else its origin."""
    return None if price is None else (price.source or price.origin)


def price_effective(price: Price | None) -> str | None:
    """Since when a price applies (or, for older catalog entries, when it was checked)."""
    if price is None:
        return None
    effective = price.effective or price.checked
    return None if effective is None else str(effective)


def add_usage(first: Mapping[str, Any] | None, second: Mapping[str, Any] | None) -> JSON | None:
    """Two usages of one call (its parts, or attempts) as one: every count added up."""
    if not first:
        return dict(second) if second else None
    if not second:
        return dict(first)
    out: JSON = {}
    for key in {*first, *second}:
        a, b = first.get(key), second.get(key)
        if isinstance(a, Mapping) or isinstance(b, Mapping):
            out[key] = add_usage(
                a if isinstance(a, Mapping) else None, b if isinstance(b, Mapping) else None
            )
        elif isinstance(a, int) and isinstance(b, int) and _counts(a) and _counts(b):
            out[key] = a + b
        else:
            out[key] = a if a is not None else b
    return out


def _counts(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
