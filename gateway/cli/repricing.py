"""Re-pricing the ledger: each call record priced again at the current catalog and config,
each difference written as an adjustment row (``gateway.ledger.adjust``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from gateway.accounting import metering_price, price_effective, price_source
from gateway.config import DeploymentConfig, GatewayConfig
from gateway.costs import PriceCatalog, compute_cost, effective_price, price_family
from gateway.ledger.adjust import NewPrice, adjustment, records_to_reprice, write_adjustments
from gateway.ledger.ledger import Ledger
from gateway.ledger.records import SpendRecord


@dataclass(slots=True)
class RepriceOutcome:
    """What one run found and wrote."""

    examined: int = 0
    adjusted: int = 0
    now_known: int = 0  # records whose cost was unknown and now is
    still_unknown: int = 0
    change: Decimal = Decimal(0)


async def reprice_ledger(
    cfg: GatewayConfig,
    since: datetime,
    until: datetime,
    model: str | None,
    *,
    dry_run: bool = False,
) -> RepriceOutcome:
    """Re-price the call records in ``[since, until)`` (of ``model``) and write adjustments."""
    repricer = Repricer(cfg)
    ledger = Ledger(cfg.ledger)
    outcome = RepriceOutcome()
    try:
        rows = []
        for priced in await records_to_reprice(ledger.engine, since, until, model):
            outcome.examined += 1
            new = repricer.price(priced.record)
            if new is None:
                outcome.still_unknown += priced.cost is None
                continue
            row = adjustment(priced, new)
            if row is None:
                continue
            rows.append(row)
            outcome.adjusted += 1
            outcome.now_known += priced.cost is None
            outcome.change += row.cost_usd or Decimal(0)
        if not dry_run:
            await write_adjustments(ledger.engine, rows)
    finally:
        await ledger.engine.dispose()
    return outcome


class Repricer:
    """Prices ledger records again at the current catalog and config (``llm-gateway
    reprice``): each record by the deployment and model that answered it."""

    def __init__(self, config: GatewayConfig, catalog: PriceCatalog | None = None) -> None:
        self.config = config
        self.catalog = (catalog or PriceCatalog.shipped()).with_entries(config.prices)
        unpriced = config.limits.unpriced
        self.metering = None if unpriced == "deny" else unpriced.price
        # (public model, deployment id) -> its config entry; ids as the router makes them.
        self.deployments: dict[tuple[str, str], DeploymentConfig] = {}
        for name, model in config.models.items():
            for i, d in enumerate(model.deployments):
                twins = [
                    x
                    for x in model.deployments
                    if (x.provider, x.upstream_name) == (d.provider, d.upstream_name)
                ]
                ident = f"{d.provider}/{d.upstream_name}" + (f"#{i}" if len(twins) > 1 else "")
                self.deployments[(name, ident)] = d

    def price(self, record: SpendRecord) -> NewPrice | None:
        """What ``record`` costs now; None when that is still unknown (no price, or no
        token counts to price: an unknown cost is not re-priced as 0)."""
        settings = self.config.providers.get(record.provider or "")
        if settings is None:
            return None
        counted = record.prompt_tokens + record.completion_tokens
        if record.cost_usd is None and counted == 0:
            return None
        dep = self.deployments.get((record.model, record.deployment or "")) or DeploymentConfig(
            provider=record.provider or "",
            model=record.upstream_model or record.price_model or record.model,
        )
        price = effective_price(self.catalog, settings, dep, record.upstream_model)
        if price is None and self.metering is not None:
            family = price_family(settings)
            price = metering_price(self.metering, family, dep.base_model or dep.upstream_name)
        if price is None:
            return None
        usage = {
            "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": record.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": record.reasoning_tokens},
        }
        cost = compute_cost(usage, price, embedding=record.operation == "embeddings")
        if cost.total is None:
            return None
        return NewPrice(
            cost.total, price.family, price.model, price_source(price), price_effective(price)
        )
