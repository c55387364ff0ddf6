"""After a call: its usage (reported, or estimated offline), its cost, its ledger record.

The engine calls ``Accountant`` once per request, whatever the outcome. Pricing is arithmetic
on the request path (the ``x-gateway-cost`` header needs it); token estimation, when a stream
ended without usage, runs off the event loop; the ledger write is a queue append.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from gateway.call import Call
from gateway.config import GatewayConfig
from gateway.costs import Cost, PriceBook, compute_cost, estimate_usage_async, unknown_cost
from gateway.costs.media import media_token_bound
from gateway.costs.report import unpriced_deployments
from gateway.errors import GatewayError
from gateway.ledger.ledger import Ledger
from gateway.ledger.records import SpendRecord, token_counts
from gateway.types import CompletionRequest
from gateway.wire import JSON
from providers.base import Deployment

log = logging.getLogger("gateway.accounting")


class Accountant:
    """Prices calls and records them in the ledger (when one is configured)."""

    def __init__(self, config: GatewayConfig, ledger: Ledger | None) -> None:
        self.prices = PriceBook(config)
        self.ledger = ledger
        for row in unpriced_deployments(config):
            log.warning("%s", row.message)

    def cost(
        self,
        dep: Deployment | None,
        upstream_model: str | None,
        usage: JSON | None,
        *,
        embedding: bool = False,
    ) -> Cost:
        """The cost of ``usage`` at the price of ``dep`` (answering as ``upstream_model``)."""
        if dep is None:
            return unknown_cost("no deployment answered")
        return compute_cost(usage, self.prices.price(dep, upstream_model), embedding=embedding)

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
            price = self.prices.price(dep)
            if price is None:
                continue  # an unpriced model cannot be budgeted: its calls count as unknown
            # Images, audio and files count by this model's rules (gateway/costs/media.py).
            prompt = request.prompt_token_bound(media_token_bound(price)) if request else 0
            if request is None:
                rate = price.embedding_rate or Decimal(0)
                worst = max(worst, embedding_tokens * rate / 10**6)
                continue
            cap = (
                request.max_completion_tokens
                or request.max_tokens
                or price.max_output_tokens
                or default_max_output
            )
            out = cap * (request.n or 1)
            rate_out = max(price.output or Decimal(0), price.reasoning_rate or Decimal(0))
            cost = (prompt * (price.input or Decimal(0)) + out * rate_out) / 10**6
            worst = max(worst, cost)
        return worst

    def record(self, info: Call, error: GatewayError | None = None) -> None:
        """Write the call's ledger record (never blocks, never raises)."""
        if self.ledger is None:
            return
        try:
            self.ledger.submit(spend_record(info, error))
        except Exception:
            log.exception("could not record request %s in the ledger", info.request_id)


def spend_record(info: Call, error: GatewayError | None) -> SpendRecord:
    """The ledger's view of one finished call."""
    finished = datetime.now(UTC)
    latency = info.elapsed_seconds()
    started = finished - timedelta(seconds=latency)
    usage = info.usage if error is None or info.usage else None
    counts = token_counts(usage)
    dep = info.served_by
    cost = info.cost
    # A call that failed before any answer was billed nothing (zero, known).
    total = cost.total if cost is not None else (Decimal(0) if error is not None else None)
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
        region=dep.region if dep is not None else None,
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
    )
