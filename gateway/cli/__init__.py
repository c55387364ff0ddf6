"""The ``llm-gateway`` command: serve, config check, models, prices, spend."""

from __future__ import annotations

import asyncio
import os
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gateway.cli.batches import add_batch_commands
from gateway.cli.governance import add_audit_commands
from gateway.cli.keys import add_key_commands
from gateway.cli.logs import add_logs_command
from gateway.cli.reprice import add_reprice_command
from gateway.config import GatewayConfig, resolve_config
from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.ledger.reports import GroupBy, SpendRow

app = typer.Typer(
    help="llm-gateway: one OpenAI-compatible API over many LLM providers.",
    no_args_is_help=True,
    add_completion=False,
)
config_app = typer.Typer(help="Work with configuration files.", no_args_is_help=True)
app.add_typer(config_app, name="config")
add_key_commands(app)
add_batch_commands(app)

WORKER_HEALTHCHECK_SECONDS = 30

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
    access_log: Annotated[
        bool,
        typer.Option(
            help="uvicorn's line per HTTP request, besides the gateway's own access log "
            "(logging.access_log)."
        ),
    ] = False,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="Serve a provider's model without a config file: openai/<model>, "
            "mistral/<model> or azure/<deployment> (repeatable); the key comes from "
            "OPENAI_API_KEY, MISTRAL_API_KEY or AZURE_OPENAI_API_KEY (+ AZURE_OPENAI_ENDPOINT).",
        ),
    ] = None,
) -> None:
    """Start the HTTP proxy."""
    quick: Path | None = None
    if model:
        if config is not None:
            typer.echo("use either --config or --model, not both", err=True)
            raise typer.Exit(2)
        from gateway.cli.quickstart import write_quick_config

        try:
            quick = config = write_quick_config(model)
        except ConfigError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(2) from None
    try:
        _serve(config, host, port, workers, access_log)
    finally:
        if quick is not None:
            quick.unlink(missing_ok=True)


def _serve(
    config: Path | None, host: str | None, port: int | None, workers: int | None, access_log: bool
) -> None:
    from gateway.cli.serving import run_server, server_config
    from gateway.server.lifecycle import SUPERVISOR_ENV

    cfg = _load(config)
    if config is not None:
        # Worker processes build their own app from this path.
        os.environ["GATEWAY_CONFIG"] = str(config.resolve())
    processes = workers or cfg.server.workers
    if processes > 1:
        # Lets a worker ask this process (uvicorn's supervisor) to replace every worker after
        # POST /admin/reload; see gateway.server.lifecycle.
        os.environ[SUPERVISOR_ENV] = str(os.getpid())
    bind_host = host or cfg.server.host
    bind_port = port if port is not None else cfg.server.port
    banner = (
        f"llm-gateway serving {len(cfg.models)} models on http://{bind_host}:{bind_port}/v1"
        + (
            " (master key required)"
            if cfg.auth.master_key
            else " (no auth: set auth.master_key or GATEWAY_MASTER_KEY to require a key)"
        )
    )
    from gateway.observability import metrics_directory
    from gateway.observability.logs import log_config

    with metrics_directory(cfg, processes):  # several workers: /metrics adds theirs up
        options = server_config(
            app="gateway.server.app:serve_app",
            factory=True,
            host=bind_host,
            port=bind_port,
            workers=processes,
            loop="auto",
            http="auto",
            access_log=access_log,
            # The app believes X-Forwarded-* only from server.trusted_proxies.
            proxy_headers=False,
            timeout_graceful_shutdown=cfg.server.shutdown_timeout,
            # With --workers: how long a new worker may take to start (migrations,
            # connections) before a SIGHUP restart gives up on it, and a worker to answer the
            # supervisor's ping before it is killed as hung. uvicorn's 5 s is short on a busy
            # host.
            timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS,
            log_config=log_config(cfg.logging),
            log_level=cfg.logging.level,
        )
        run_server(options, banner)


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


prices_app = typer.Typer(help="Prices: what deployments cost, and where the figures come from.")
app.add_typer(prices_app, name="prices")


@prices_app.callback(invoke_without_command=True)
def prices(
    ctx: typer.Context,
    config: ConfigOption = None,
    all_models: Annotated[
        bool,
        typer.Option(
            "--all", help="Print the whole price catalog (with the config's prices: entries)."
        ),
    ] = False,
) -> None:
    """List what each configured deployment costs (USD per 1M tokens), where the price
    comes from and since when; UNKNOWN marks deployments whose calls would get an unknown
    cost. `prices diff` compares the shipped prices with the installed genai-prices."""
    if ctx.invoked_subcommand is not None:
        return
    from gateway.costs.catalog import PriceCatalog
    from gateway.costs.report import deployment_prices, render_catalog, render_deployments

    cfg = _load(config)
    catalog = PriceCatalog.shipped()
    if all_models:
        typer.echo(render_catalog(catalog.with_entries(cfg.prices)))
        return
    rows = deployment_prices(cfg)
    typer.echo(render_deployments(rows))
    problems = [row for row in rows if row.problem is not None]
    if problems:
        typer.echo("")
        for row in problems:
            typer.echo(f"warning: {row.message}")
    dataset = catalog.dataset
    basis = (
        f"genai-prices {dataset.version} (prices dated up to {dataset.data_date}) and the "
        "hand-kept entries of gateway/costs/prices.yaml"
        if dataset is not None
        else "gateway/costs/prices.yaml"
    )
    typer.echo(
        f"\nPrices are USD per 1M tokens, from {basis}; EFFECTIVE is the date a price took "
        "effect (or was taken from its source). See `llm-gateway prices --all` for the catalog."
    )


@prices_app.command("diff")
def prices_diff(
    shipped: Annotated[
        Path | None,
        typer.Option(
            "--shipped",
            help="A generated price file to compare instead of the shipped prices-genai.yaml.",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
) -> None:
    """Compare the shipped prices with the installed genai-prices package (e.g. a newer
    one): list each changed, added and removed price. Exits 1 when any differs."""
    from gateway.costs.catalog_diff import diff_installed, render_diff

    try:
        result = diff_installed(shipped.read_text(encoding="utf-8") if shipped else None)
    except ImportError:
        typer.echo(
            "genai-prices is not installed: pip install 'llm-gateway[prices]' "
            "(or a newer genai-prices) to compare with it",
            err=True,
        )
        raise typer.Exit(2) from None
    typer.echo(render_diff(result))
    if result.changes:
        raise typer.Exit(1)


class Grouping(StrEnum):
    """What ``llm-gateway spend --by`` groups by."""

    model = "model"
    key = "key"
    team = "team"
    user = "user"
    provider = "provider"
    day = "day"


@app.command()
def spend(
    config: ConfigOption = None,
    by: Annotated[Grouping, typer.Option("--by", help="Group by this.")] = Grouping.model,
    since: Annotated[
        str | None,
        typer.Option(
            help="Start: 7d, 24h or 30m before now, or an ISO date or time (UTC unless it "
            "says otherwise). Default: 30 days before --until."
        ),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="End, not included; same forms. Default: now.")
    ] = None,
    key_id: Annotated[str | None, typer.Option("--key-id", help="Only this key's spend.")] = None,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV instead of a table.")] = False,
    url: Annotated[
        str | None,
        typer.Option(
            help="Ask a running gateway (e.g. http://127.0.0.1:4000) instead of reading the "
            "ledger database named by the config."
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key", envvar="GATEWAY_MASTER_KEY", help="The gateway's master key (with --url)."
        ),
    ] = None,
) -> None:
    """Print what was spent, grouped by model, key, team, user, provider or day, with a
    total. Reads the ledger database directly, or a running gateway's /v1/spend with --url."""
    from gateway.ledger.periods import PeriodError, report_period
    from gateway.ledger.reports import render_report, report_csv

    group_by: GroupBy = by.value
    names: dict[str, str] | None = None
    if url is not None:
        report = _remote_spend(url, api_key, group_by, since, until, key_id, as_csv)
        if isinstance(report, str):
            typer.echo(report, nl=False)
            return
        rows, start, end, names = report
    else:
        try:
            start, end = report_period(since, until)
        except PeriodError as exc:
            raise typer.BadParameter(str(exc), param_hint=f"'--{exc.param}'") from None
        rows, names = _ledger_spend(_load(config), group_by, start, end, key_id)
        if as_csv:
            typer.echo(report_csv(rows, group_by, names), nl=False)
            return
    moment = "%Y-%m-%d %H:%M:%S UTC"
    typer.echo(f"Spend by {group_by}, {start:{moment}} to {end:{moment}}\n")
    typer.echo(render_report(rows, group_by, names))


def _ledger_spend(
    cfg: GatewayConfig, group_by: GroupBy, since: datetime, until: datetime, key_id: str | None
) -> tuple[list[SpendRow], dict[str, str] | None]:
    """The report read straight from the ledger's database (not migrated, nothing written),
    and the names of its keys or teams when grouped by them."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from gateway.ledger.ledger import Ledger
    from gateway.ledger.writer import describe

    if not cfg.ledger.enabled:
        typer.echo("the spend ledger is disabled in this config (ledger.enabled: false)", err=True)
        raise typer.Exit(1)
    url = make_url(cfg.ledger.url)
    where = url.render_as_string(hide_password=True)
    database = url.database or ""
    # Reading a missing SQLite file would create an empty one.
    if url.get_backend_name() == "sqlite" and not Path(database).is_file():
        typer.echo(f"no ledger database at {database} (ledger.url: {where})", err=True)
        raise typer.Exit(1)

    async def read() -> tuple[list[SpendRow], dict[str, str] | None]:
        from gateway.keys import KeyStore
        from gateway.keys.names import group_names

        ledger = Ledger(cfg.ledger)
        try:
            rows = await ledger.spend_report(group_by, since, until, key_id)
            names = None
            if group_by in ("key", "team"):
                try:
                    names = await group_names(KeyStore(ledger.engine), group_by)
                except SQLAlchemyError:
                    names = None  # no key tables (yet): ids only
            return rows, names
        finally:
            await ledger.engine.dispose()

    try:
        return asyncio.run(read())
    except (SQLAlchemyError, OSError) as exc:
        typer.echo(
            f"could not read the ledger at {where}: {describe(exc)}\n(the gateway creates its "
            "tables when it starts, unless ledger.migrate is false)",
            err=True,
        )
        raise typer.Exit(1) from None


def _remote_spend(
    url: str,
    api_key: str | None,
    group_by: GroupBy,
    since: str | None,
    until: str | None,
    key_id: str | None,
    as_csv: bool,
) -> str | tuple[list[SpendRow], datetime, datetime, dict[str, str] | None]:
    """The report from a running gateway: CSV text, or its rows, period and the names of
    its keys or teams."""
    import httpx

    from gateway.ledger.reports import SpendRow

    base = url.rstrip("/").removesuffix("/v1")
    params = {"group_by": group_by, "since": since, "until": until, "key_id": key_id}
    if as_csv:
        params["format"] = "csv"
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(
            base + "/v1/spend",
            params={k: v for k, v in params.items() if v is not None},
            headers=headers,
            timeout=60,
        )
    except httpx.HTTPError as exc:
        typer.echo(f"could not reach {base}: {exc}", err=True)
        raise typer.Exit(1) from None
    if response.status_code != 200:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:500]
        typer.echo(f"{base} answered {response.status_code}: {message}", err=True)
        raise typer.Exit(1)
    if as_csv:
        return response.text
    body = response.json()
    rows = [
        SpendRow(
            group=item["group"],
            requests=item["requests"],
            errors=item["errors"],
            prompt_tokens=item["prompt_tokens"],
            cached_tokens=item["cached_tokens"],
            completion_tokens=item["completion_tokens"],
            reasoning_tokens=item["reasoning_tokens"],
            cost_usd=Decimal(item["cost_usd"] or 0),  # null: every cost unknown
            unknown_cost_requests=item["unknown_cost_requests"],
        )
        for item in body["data"]
    ]
    named = [item for item in body["data"] if item.get("name") and item["group"]]
    names = {item["group"]: item["name"] for item in named} if named else None
    since_at, until_at = (
        datetime.fromisoformat(body["since"]),
        datetime.fromisoformat(body["until"]),
    )
    return rows, since_at, until_at, names


add_reprice_command(app, _load)
add_audit_commands(app, _load)
add_logs_command(app)


def main() -> None:
    app()
