"""``llm-gateway reprice``: price recorded calls again at the current catalog and config, and
record each difference as an adjustment row (the records themselves are never edited)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from gateway.config import GatewayConfig
from gateway.facts import usd_str


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
        from gateway.cli.repricing import reprice_ledger
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
