"""``llm-gateway batches list|show|sync``: the batch jobs kept in the ledger's database, for
operators (every key's jobs)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer

from gateway.config import GatewayConfig, resolve_config
from gateway.errors import ConfigError, GatewayError

T = TypeVar("T")

batches_app = typer.Typer(help="Batch jobs: list, show, follow them now.", no_args_is_help=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML config file naming the database (default: $GATEWAY_CONFIG, else the "
        "built-in setup and ./llm-gateway.db).",
        dir_okay=False,
    ),
]


def add_batch_commands(app: typer.Typer) -> None:
    """Attach ``batches`` to the ``llm-gateway`` command."""
    app.add_typer(batches_app, name="batches")


@batches_app.command("list")
def batches_list(
    config: ConfigOption = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
) -> None:
    """The newest batch jobs: status, lines, reservation and cost."""
    from gateway.auth import MASTER

    async def work(batches: Any) -> list[Any]:
        return list(await batches.list(MASTER, limit))

    rows = _run(_load(config), work)
    table = [["ID", "STATUS", "MODEL", "DEPLOYMENT", "LINES ok/failed/all", "RESERVED", "COST"]]
    for row in rows:
        table.append(
            [
                row.id,
                row.status,
                row.model,
                row.deployment,
                f"{row.request_completed}/{row.request_failed}/{row.request_total}",
                f"${row.reserved_usd:.6f}",
                "-" if not row.settled or row.cost_usd is None else f"${row.cost_usd:.6f}",
            ]
        )
    typer.echo(_table(table) if rows else "no batch jobs")


@batches_app.command("show")
def batches_show(
    batch_id: Annotated[str, typer.Argument(help="The batch id (batch_…).")],
    config: ConfigOption = None,
) -> None:
    """One batch job in OpenAI's shape, with what it reserved and cost."""
    from gateway.auth import MASTER
    from gateway.batch import batch_headers, batch_object

    async def work(batches: Any) -> dict[str, Any]:
        row = await batches.get(MASTER, batch_id)
        return {**batch_object(row), "gateway": batch_headers(row)}

    shown = _run(_load(config), work)
    typer.echo(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode())


@batches_app.command("sync")
def batches_sync(
    batch_id: Annotated[
        str | None, typer.Argument(help="One batch id; default: every job that is due.")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Look at jobs upstream now (as the poller does), finishing those that ended."""

    async def work(batches: Any) -> int:
        if batch_id is not None:
            return int(await batches.sync(batch_id))
        return int(await batches.sync_due())

    seen = _run(_load(config), work)
    typer.echo(f"looked at {seen} batch job(s)")


def _load(path: Path | None) -> GatewayConfig:
    try:
        cfg = resolve_config(path)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    if not cfg.ledger.enabled:
        typer.echo(
            "batch jobs live in the ledger's database, and this config disables the ledger "
            "(ledger.enabled: false)",
            err=True,
        )
        raise typer.Exit(2)
    return cfg


def _run(cfg: GatewayConfig, work: Callable[[Any], Awaitable[T]]) -> T:
    """``work`` over the config's batch jobs, with a gateway whose ledger writer runs."""
    from gateway.batch import Batches
    from gateway.engine import Engine

    async def main() -> T:
        gateway = Engine(cfg)
        try:
            await gateway.start()
            return await work(Batches(gateway))
        finally:
            await gateway.aclose()

    try:
        return asyncio.run(main())
    except GatewayError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
