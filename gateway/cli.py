"""The ``llm-gateway`` command: serve, config check, models, prices."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from gateway.config import GatewayConfig, resolve_config
from gateway.errors import ConfigError

app = typer.Typer(
    help="llm-gateway: one OpenAI-compatible API over many LLM providers.",
    no_args_is_help=True,
    add_completion=False,
)
config_app = typer.Typer(help="Work with configuration files.", no_args_is_help=True)
app.add_typer(config_app, name="config")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="YAML config file (default: $GATEWAY_CONFIG, else the built-in mock setup).",
        exists=False,
        dir_okay=False,
    ),
]


def _load(path: Path | None) -> GatewayConfig:
    try:
        return resolve_config(path)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default: server.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: server.port).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes.")] = None,
    access_log: Annotated[bool, typer.Option(help="Log every request line.")] = False,
) -> None:
    """Start the HTTP proxy."""
    import uvicorn

    cfg = _load(config)
    if config is not None:
        # Worker processes build their own app from this path.
        os.environ["GATEWAY_CONFIG"] = str(config.resolve())
    bind_host = host or cfg.server.host
    bind_port = port if port is not None else cfg.server.port
    typer.echo(
        f"llm-gateway serving {len(cfg.models)} models on http://{bind_host}:{bind_port}/v1"
        + (
            " (master key required)"
            if cfg.auth.master_key
            else " (no auth: set auth.master_key or GATEWAY_MASTER_KEY to require a key)"
        )
    )
    uvicorn.run(
        "gateway.server.app:create_app",
        factory=True,
        host=bind_host,
        port=bind_port,
        workers=workers or cfg.server.workers,
        loop="auto",
        http="auto",
        access_log=access_log,
        log_level="info",
    )


@config_app.command("check")
def config_check(path: Annotated[Path, typer.Argument(help="YAML config file to check.")]) -> None:
    """Validate a config file and explain every mistake."""
    cfg = _load(path)
    deployments = sum(len(m.deployments) for m in cfg.models.values())
    typer.echo(
        f"{path}: OK — {len(cfg.providers)} providers, {len(cfg.models)} models, "
        f"{deployments} deployments"
    )


@app.command()
def models(config: ConfigOption = None) -> None:
    """List the public models and where each is deployed."""
    cfg = _load(config)
    for name, model in cfg.models.items():
        targets = ", ".join(f"{d.provider}/{d.upstream_name}" for d in model.deployments)
        fallbacks = f"  (fallbacks: {', '.join(model.fallbacks)})" if model.fallbacks else ""
        typer.echo(f"{name}: {targets}{fallbacks}")


@app.command()
def prices(
    config: ConfigOption = None,
    all_models: Annotated[
        bool,
        typer.Option(
            "--all", help="Print the whole price catalog (with the config's prices: entries)."
        ),
    ] = False,
) -> None:
    """List what each configured deployment costs (USD per 1M tokens) and where the price
    comes from; UNKNOWN marks deployments whose calls would get an unknown cost."""
    from gateway.costs.catalog import PriceCatalog
    from gateway.costs.report import deployment_prices, render_catalog, render_deployments

    cfg = _load(config)
    if all_models:
        typer.echo(render_catalog(PriceCatalog.shipped().with_entries(cfg.prices)))
        return
    rows = deployment_prices(cfg)
    typer.echo(render_deployments(rows))
    problems = [row for row in rows if row.problem is not None]
    if problems:
        typer.echo("")
        for row in problems:
            typer.echo(f"warning: {row.message}")
    typer.echo(
        "\nPrices are USD per 1M tokens; see `llm-gateway prices --all` for the catalog, "
        "its sources and the dates they were checked."
    )


def main() -> None:
    app()
