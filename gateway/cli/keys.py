"""``llm-gateway keys …`` and ``llm-gateway teams …``: virtual keys and teams, managed directly
in the configured database (the ledger's), with no gateway running.

Every change goes through the same rules as the admin API (``gateway.keys.admin``). The
database is brought up to date first, as a gateway does when it starts. A key's plaintext is
printed once — alone on stdout, so ``KEY=$(llm-gateway keys create …)`` captures it — and
never again; listings show its prefix. Gateways apply changes within
``auth.key_cache_seconds``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError

from gateway.config import GatewayConfig, resolve_config
from gateway.errors import ConfigError, GatewayError, validated
from gateway.facts import usd_str
from gateway.keys import (
    KeyAdmin,
    KeySpec,
    KeyStore,
    Limited,
    Team,
    TeamChange,
    TeamSpec,
    VirtualKey,
)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
keys_app = typer.Typer(
    help="Create, list, show, revoke and rotate virtual keys.", no_args_is_help=True
)
teams_app = typer.Typer(help="Create, list and update teams.", no_args_is_help=True)
NO_PLAINTEXT_AGAIN = (
    "Store it now: this is the only time it is shown (the database keeps only its hash)."
)


def add_key_commands(app: typer.Typer) -> None:
    """Attach ``keys`` and ``teams`` to the ``llm-gateway`` command."""
    app.add_typer(keys_app, name="keys")
    app.add_typer(teams_app, name="teams")


class BudgetPeriod(StrEnum):
    daily = "daily"
    weekly = "weekly"
    monthly = "monthly"
    total = "total"


class Unset(StrEnum):
    """Limits ``teams update --unset`` lifts."""

    models = "models"
    regions = "regions"
    rpm = "rpm"
    tpm = "tpm"
    max_parallel = "max-parallel"
    budget = "budget"


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
Models = Annotated[
    list[str] | None,
    typer.Option("--model", "-m", help="A model glob it may use, e.g. 'gpt-4o*' (repeatable)."),
]
Regions = Annotated[
    list[str] | None,
    typer.Option("--region", help="A region its requests may go to, e.g. eu (repeatable)."),
]
Rpm = Annotated[int | None, typer.Option(help="Requests per minute.")]
Tpm = Annotated[int | None, typer.Option(help="Tokens per minute.")]
Parallel = Annotated[int | None, typer.Option(help="Requests in flight at once.")]
Budget = Annotated[str | None, typer.Option(help="Budget in USD per period, e.g. 250 or 0.5.")]
Period = Annotated[BudgetPeriod, typer.Option(help="What the budget is per.")]
Meta = Annotated[
    list[str] | None,
    typer.Option("--meta", help="A KEY=VALUE tag recorded with its requests (repeatable)."),
]


# -- keys ----------------------------------------------------------------------------------
@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="What the key is for, e.g. 'ci' or 'alice'.")],
    team: Annotated[str | None, typer.Option(help="Its team (id or name).")] = None,
    model: Models = None,
    region: Regions = None,
    rpm: Rpm = None,
    tpm: Tpm = None,
    max_parallel: Parallel = None,
    budget: Budget = None,
    budget_period: Period = BudgetPeriod.monthly,
    expires_in_days: Annotated[
        float | None, typer.Option(help="Days until it stops working.")
    ] = None,
    admin: Annotated[bool, typer.Option(help="May use the admin API.")] = False,
    meta: Meta = None,
    config: ConfigOption = None,
) -> None:
    """Create a key and print its plaintext, once."""
    cfg = _load(config)
    spec = _limits(model, region, rpm, tpm, max_parallel, budget, budget_period, meta)
    spec |= {"name": name, "team": team, "admin": admin, "expires_in_days": expires_in_days}
    checked = _checked(KeySpec, spec, "key")
    key, plaintext = _run(cfg, lambda admin: admin.new_key(checked))
    typer.echo(f"Created key '{key.name}' (id {key.id}, prefix {key.prefix}).", err=True)
    typer.echo(plaintext)
    typer.echo(f"warning: {NO_PLAINTEXT_AGAIN}", err=True)
    if cfg.auth.master_key is None:
        typer.echo(
            "note: this config sets no auth.master_key, so a gateway run with it checks no keys",
            err=True,
        )


@keys_app.command("list")
def keys_list(
    team: Annotated[str | None, typer.Option(help="Only this team's keys (id or name).")] = None,
    config: ConfigOption = None,
) -> None:
    """List keys by prefix (never their secrets), with their team, status and limits."""

    async def read(admin: KeyAdmin) -> tuple[list[VirtualKey], dict[str, str]]:
        team_id = (await admin.team(team)).id if team else None
        teams = {t.id: t.name for t in await admin.store.list_teams()}
        return await admin.store.list_keys(team_id), teams

    keys, teams = _run(_load(config), read)
    now = datetime.now(UTC)
    rows = [["ID", "PREFIX", "NAME", "TEAM", "STATUS", "BUDGET", "LIMITS"]]
    for key in keys:
        why = key.unusable_because(now)
        status = "revoked" if key.revoked_at else ("expired" if why else "active")
        rows.append(
            [
                key.id,
                key.prefix + "…",
                key.name,
                teams.get(key.team_id or "", key.team_id or "-"),
                status + (" admin" if key.admin else ""),
                _budget(key),
                _rates(key),
            ]
        )
    typer.echo(_table(rows) if keys else "no keys")


@keys_app.command("show")
def keys_show(
    key_id: Annotated[str, typer.Argument(help="The key's id.")],
    config: ConfigOption = None,
) -> None:
    """Show one key (by id) and what it spent in its current budget period."""
    from gateway.ledger.reports import scope_spend
    from gateway.limits import budget_period, period_start

    async def read(admin: KeyAdmin) -> tuple[VirtualKey, Decimal]:
        key = await admin.store.get_key(key_id)
        since = period_start(budget_period(key.budget_period, datetime.now(UTC))[0])
        until = datetime.now(UTC) + timedelta(minutes=1)
        return key, await scope_spend(admin.store.engine, "key", key.id, since, until)

    key, spent = _run(_load(config), read)
    for name, value in key.public().items():
        typer.echo(f"{name + ':':<16}{'-' if value is None or value == [] else value}")
    of = f" of ${usd_str(key.budget_usd)}" if key.budget_usd is not None else ""
    typer.echo(f"{'spent:':<16}${usd_str(spent)}{of} this {key.budget_period} period (ledger)")


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id.")],
    config: ConfigOption = None,
) -> None:
    """Revoke a key for good."""
    cfg = _load(config)
    key = _run(cfg, lambda admin: admin.revoke(key_id))
    typer.echo(
        f"Revoked key '{key.name}' (id {key.id}, prefix {key.prefix}); gateways refuse it "
        f"within auth.key_cache_seconds ({cfg.auth.key_cache_seconds:g}s)."
    )


@keys_app.command("rotate")
def keys_rotate(
    key_id: Annotated[str, typer.Argument(help="The key's id.")],
    config: ConfigOption = None,
) -> None:
    """Give a key a new secret, printed once; the old one stops working."""
    key, plaintext = _run(_load(config), lambda admin: admin.rotate(key_id))
    typer.echo(f"Rotated key '{key.name}' (id {key.id}, new prefix {key.prefix}).", err=True)
    typer.echo(plaintext)
    typer.echo(f"warning: {NO_PLAINTEXT_AGAIN}", err=True)


# -- teams ---------------------------------------------------------------------------------
@teams_app.command("create")
def teams_create(
    name: Annotated[str, typer.Option(help="The team's unique name.")],
    model: Models = None,
    region: Regions = None,
    rpm: Rpm = None,
    tpm: Tpm = None,
    max_parallel: Parallel = None,
    budget: Budget = None,
    budget_period: Period = BudgetPeriod.monthly,
    meta: Meta = None,
    config: ConfigOption = None,
) -> None:
    """Create a team: limits and a budget shared by all of its keys."""
    spec = _limits(model, region, rpm, tpm, max_parallel, budget, budget_period, meta)
    checked = _checked(TeamSpec, {**spec, "name": name}, "team")
    team = _run(_load(config), lambda admin: admin.new_team(checked))
    typer.echo(f"Created team '{team.name}' (id {team.id}).")


@teams_app.command("list")
def teams_list(config: ConfigOption = None) -> None:
    """List teams with their budgets and limits."""
    teams = _run(_load(config), lambda admin: admin.store.list_teams())
    rows = [["ID", "NAME", "BUDGET", "LIMITS"]]
    rows += [[t.id, t.name, _budget(t), _rates(t)] for t in teams]
    typer.echo(_table(rows) if teams else "no teams")


@teams_app.command("update")
def teams_update(
    team: Annotated[str, typer.Argument(help="The team's id or name.")],
    name: Annotated[str | None, typer.Option(help="A new name.")] = None,
    model: Models = None,
    region: Regions = None,
    rpm: Rpm = None,
    tpm: Tpm = None,
    max_parallel: Parallel = None,
    budget: Budget = None,
    budget_period: Annotated[BudgetPeriod | None, typer.Option(help="Per what.")] = None,
    unset: Annotated[
        list[Unset] | None, typer.Option(help="Lift a limit (repeatable).", case_sensitive=False)
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Change what is given; --unset lifts a limit."""
    attrs = _limits(model, region, rpm, tpm, max_parallel, budget, budget_period, None)
    attrs = {k: v for k, v in attrs.items() if k != "metadata" and v not in (None, [])}
    if name is not None:
        attrs["name"] = name
    lifted: dict[Unset, tuple[str, Any]] = {
        Unset.models: ("allowed_models", []),
        Unset.regions: ("regions", None),
        Unset.rpm: ("rpm", None),
        Unset.tpm: ("tpm", None),
        Unset.max_parallel: ("max_parallel", None),
        Unset.budget: ("budget_usd", None),
    }
    for field in unset or ():
        attr, value = lifted[field]
        attrs[attr] = value
    change = _checked(TeamChange, attrs, "team change")

    async def update(admin: KeyAdmin) -> Team:
        return await admin.change_team(team, change)

    updated = _run(_load(config), update)
    typer.echo(f"Updated team '{updated.name}': budget {_budget(updated)}; {_rates(updated)}.")


# -- helpers -------------------------------------------------------------------------------
def _load(path: Path | None) -> GatewayConfig:
    try:
        cfg = resolve_config(path)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    if not cfg.ledger.enabled:
        typer.echo(
            "keys and teams live in the ledger's database, and this config disables the "
            "ledger (ledger.enabled: false)",
            err=True,
        )
        raise typer.Exit(2)
    return cfg


def _checked(model: type[M], spec: dict[str, Any], what: str) -> M:
    """The options checked by the key and team rules; a mistake ends the command."""
    try:
        return validated(model, spec, what)
    except GatewayError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from None


def _run(cfg: GatewayConfig, work: Callable[[KeyAdmin], Awaitable[T]]) -> T:
    """``work`` by the key rules on the config's database, brought up to date first; each
    change goes on the audit trail with the actor ``cli``."""
    from gateway.governance.keys import AuditedKeyAdmin
    from gateway.ledger.db import create_ledger_engine, ledger_url
    from gateway.ledger.migrate import upgrade
    from gateway.ledger.writer import describe

    url = ledger_url(cfg.ledger.url)

    async def main() -> T:
        plain = url.render_as_string(hide_password=False)
        await upgrade(plain)
        engine = create_ledger_engine(plain)
        try:
            return await work(AuditedKeyAdmin(KeyStore(engine), "cli"))
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except GatewayError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None
    except (SQLAlchemyError, OSError) as exc:
        where = url.render_as_string(hide_password=True)
        typer.echo(f"error: could not use the database at {where}: {describe(exc)}", err=True)
        raise typer.Exit(1) from None


def _limits(
    models: list[str] | None,
    regions: list[str] | None,
    rpm: int | None,
    tpm: int | None,
    max_parallel: int | None,
    budget: str | None,
    period: BudgetPeriod | None,
    meta: list[str] | None,
) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "allowed_models": models or [],
        "regions": regions or None,
        "rpm": rpm,
        "tpm": tpm,
        "max_parallel": max_parallel,
        "budget_usd": _money(budget),
        "metadata": dict(_tag(m) for m in meta or ()),
    }
    if period is not None:
        attrs["budget_period"] = period.value
    return attrs


def _money(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        raise typer.BadParameter(
            f"{text!r} is not an amount of USD", param_hint="'--budget'"
        ) from None


def _tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise typer.BadParameter(f"{text!r} is not KEY=VALUE", param_hint="'--meta'")
    return key, value


def _budget(item: Limited) -> str:
    if item.budget_usd is None:
        return "-"
    return f"${usd_str(item.budget_usd)} {item.budget_period}"


def _rates(item: Limited) -> str:
    parts = [
        f"{label} {value}"
        for label, value in (
            ("rpm", item.rpm),
            ("tpm", item.tpm),
            ("parallel", item.max_parallel),
        )
        if value is not None
    ]
    if item.allowed_models:
        parts.append("models " + ",".join(item.allowed_models))
    if item.regions is not None:
        parts.append("regions " + ",".join(item.regions))
    return ", ".join(parts) or "-"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )
