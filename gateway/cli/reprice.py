"""``llm-gateway reprice``: price recorded calls again at the current catalog and config, and
record each difference as an adjustment row (the records themselves are never edited)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated

import typer

from gateway.config import GatewayConfig
from gateway.facts import usd_str


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
    from gateway.accounting import Repricer
    from gateway.ledger.adjust import adjustment, records_to_reprice, write_adjustments
    from gateway.ledger.ledger import Ledger

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


def add_reprice_command(app: typer.Typer, load: Callable[[Path | None], GatewayConfig]) -> None:
    """Register ``reprice`` on ``app``; ``load`` reads the config (``--config``)."""

    @app.command()
    def reprice(
        since: Annotated[
            str,
            typer.Option(help="Start: 7d, 24h or 30m before now, or an ISO date or time (UTC)."),
        ],
        until: Annotated[
            str | None, typer.Option(help="End, not included; same forms. Default: now.")
        ] = None,
        model: Annotated[
            str | None,
            typer.Option(help="Only records of this model (public, answering or priced name)."),
        ] = None,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Say what would change; write nothing.")
        ] = False,
        config: Annotated[
            Path | None,
            typer.Option("--config", "-c", help="YAML config file (default: $GATEWAY_CONFIG)."),
        ] = None,
    ) -> None:
        """Price recorded calls again at the current prices (catalog, prices:, deployment
        price:) and write an adjustment row for each whose cost changes or becomes known."""
        from gateway.ledger.periods import PeriodError, report_period

        cfg = load(config)
        if not cfg.ledger.enabled:
            typer.echo(
                "the spend ledger is disabled in this config (ledger.enabled: false)", err=True
            )
            raise typer.Exit(1)
        try:
            start, end = report_period(since, until)
        except PeriodError as exc:
            raise typer.BadParameter(str(exc), param_hint=f"'--{exc.param}'") from None
        outcome = asyncio.run(reprice_ledger(cfg, start, end, model, dry_run=dry_run))
        verb = "would write" if dry_run else "wrote"
        change = ("+" if outcome.change >= 0 else "-") + "$" + usd_str(abs(outcome.change))
        typer.echo(
            f"{outcome.examined} records from {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC"
            + (f" of model {model}" if model else "")
            + f": {verb} {outcome.adjusted} adjustments, {change} in all; "
            f"{outcome.now_known} unknown costs now known, {outcome.still_unknown} still unknown."
        )
