"""After a call: its usage (reported, or estimated offline), its cost, its ledger record.

The engine calls ``Accountant`` once per request, whatever the outcome. Pricing is arithmetic
on the request path (the ``x-gateway-cost`` header needs it); token estimation, when a stream
ended without usage, runs off the event loop; the ledger write is a queue append.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from gateway.config import GatewayConfig
from gateway.costs import Cost, PriceBook, compute_cost, estimate_usage_async, unknown_cost
from gateway.costs.report import unpriced_deployments
from gateway.errors import GatewayError
from gateway.ledger import Ledger, SpendRecord, token_counts

if TYPE_CHECKING:
    from gateway.engine import CallInfo
    from providers.base import Deployment

log = logging.getLogger("gateway.accounting")
JSON = dict[str, Any]


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
                dep.provider.type_name,
                upstream_model or dep.base_model or dep.model,
                tools=tools,
            )
        except Exception:  # a missing tokenizer must not lose the record
            log.exception("could not estimate usage with the %s tokenizer", dep.provider_name)
            return None

    def record(self, info: CallInfo, error: GatewayError | None = None) -> None:
        """Write the call's ledger record (never blocks, never raises)."""
        if self.ledger is None:
            return
        try:
            self.ledger.submit(spend_record(info, error))
        except Exception:
            log.exception("could not record request %s in the ledger", info.request_id)


def spend_record(info: CallInfo, error: GatewayError | None) -> SpendRecord:
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
