"""``llm-gateway audit verify`` and ``llm-gateway audit export``: the audit trail, read
straight from the ledger's database (nothing written)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from gateway.config import GatewayConfig

T = TypeVar("T")
Loader = Callable[[Path | None], GatewayConfig]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML config file (default: $GATEWAY_CONFIG); its ledger.url is read.",
        dir_okay=False,
    ),
]


def add_audit_commands(app: typer.Typer, load: Loader) -> None:
    audit_app = typer.Typer(
        help="The audit trail of administrative acts (a hash chain in the ledger's database).",
        no_args_is_help=True,
    )
    app.add_typer(audit_app, name="audit")

    @audit_app.command("verify")
    def verify(config: ConfigOption = None) -> None:
        """Check the chain: exit 0 if intact, 1 naming the first entry that was edited,
        removed or moved."""
        from gateway.governance.audit import AuditTrail

        async def work(trail: AuditTrail) -> None:
            result = await trail.verify()
            if result.ok:
                start = f" from entry {result.first_id}" if result.first_id is not None else ""
                typer.echo(f"audit trail intact: {result.checked} entries checked{start}")
                return
            typer.echo(
                f"audit trail BROKEN at entry {result.broken_id}: {result.problem} "
                f"({result.checked} entries before it verified)",
                err=True,
            )
            raise typer.Exit(1)

        _run(load(config), work)

    @audit_app.command("export")
    def export(config: ConfigOption = None) -> None:
        """Write every entry as CSV (with the hashes) to standard output."""
        from gateway.governance.audit import AuditTrail, write_audit_csv

        async def work(trail: AuditTrail) -> None:
            after, header = 0, True
            while True:
                page = await trail.entries(after_id=after, limit=1000)
                write_audit_csv(page, sys.stdout, header=header)
                if len(page) < 1000:
                    return
                after, header = page[-1].id, False

        _run(load(config), work)


def _run(cfg: GatewayConfig, work: Callable[..., Awaitable[None]]) -> None:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from gateway.governance.audit import AuditTrail
    from gateway.ledger.db import create_ledger_engine
    from gateway.ledger.writer import describe

    url = make_url(cfg.ledger.url)
    where = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
        typer.echo(f"no ledger database at {url.database} (ledger.url: {where})", err=True)
        raise typer.Exit(1)

    async def main() -> None:
        engine = create_ledger_engine(cfg.ledger.url)
        try:
            await work(AuditTrail(engine))
        finally:
            await engine.dispose()

    try:
        asyncio.run(main())
    except SQLAlchemyError as exc:
        typer.echo(f"could not read the audit trail at {where}: {describe(exc)}", err=True)
        raise typer.Exit(1) from None
