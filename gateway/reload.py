"""Reloading the config file into a running Engine, without dropping a request.

The new file is read, validated and turned into a complete ``Setup`` — Router, providers and
price book — first; only then does ``Engine.swap`` put it in force, in one assignment, so no
request ever sees half of each. The Engine object stays the same (the app, the admin routes
and the library hold it), and so does its HealthBoard: a deployment whose id is unchanged
keeps its circuit, latency and quota counts. A request in flight keeps the setup it started
with — its Plan, providers and prices — until it ends.

What a reload does not change — the sections in ``RESTART_ONLY``: the listening socket and
worker count, the ledger database, Redis, where limits are counted and the master key — keeps
its running value; a reload whose file changes one of them still applies the rest and names
them in ``restart_required``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig, load_config_file
from gateway.engine import Engine
from gateway.errors import ConfigError
from gateway.governance.audit import config_diff, trail_of
from gateway.setup import Setup
from providers.base import Provider

log = logging.getLogger("gateway.reload")

# metrics, logging, tracing: the /metrics route, log handlers and span exporter are set up
# when the server starts.
RESTART_ONLY = (
    "server",
    "ledger",
    "redis",
    "limits",
    "auth",
    "metrics",
    "logging",
    "tracing",
)


@dataclass(slots=True)
class ReloadResult:
    """What a reload did: applied or not, the problems that stopped it, what changed."""

    applied: bool
    source: str | None
    errors: list[str] = field(default_factory=list)
    restart_required: list[str] = field(default_factory=list)
    models_added: list[str] = field(default_factory=list)
    models_removed: list[str] = field(default_factory=list)
    deployments_added: list[str] = field(default_factory=list)
    deployments_removed: list[str] = field(default_factory=list)
    # What the file changed, by dotted path, secrets masked (for the audit trail).
    changes: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """One log line."""
        if not self.applied:
            return (
                f"config reload from {self.source} rejected, the running config stays: "
                + "; ".join(self.errors)
            )
        parts = [
            f"{label} {', '.join(names)}"
            for label, names in (
                ("models added:", self.models_added),
                ("models removed:", self.models_removed),
                ("deployments added:", self.deployments_added),
                ("deployments removed:", self.deployments_removed),
            )
            if names
        ]
        text = f"config reloaded from {self.source}" + (f" ({'; '.join(parts)})" if parts else "")
        if self.restart_required:
            text += (
                f"; changes to {', '.join(self.restart_required)} need a restart and were not "
                "applied"
            )
        return text

    def body(self) -> dict[str, Any]:
        return {
            "status": "reloaded" if self.applied else "rejected",
            "pid": os.getpid(),
            "errors": self.errors,
            "restart_required": self.restart_required,
            "models_added": self.models_added,
            "models_removed": self.models_removed,
            "deployments_added": self.deployments_added,
            "deployments_removed": self.deployments_removed,
        }


class ConfigReloader:
    """Re-reads one config file into one Engine."""

    def __init__(self, engine: Engine, source: str | Path | None) -> None:
        self.engine = engine
        self.source = Path(source) if source is not None else None
        self.retired: list[Provider] = []  # replaced providers, closed at shutdown
        self._lock = asyncio.Lock()  # one reload at a time

    async def reload(self, actor: str = "signal", address: str | None = None) -> ReloadResult:
        """Read the file again and apply it; on any problem, keep the running config. The
        attempt goes on the audit trail: who asked (``actor``, from ``address``), the outcome
        and what changed, secrets masked."""
        result = await self._reload()
        trail = trail_of(self.engine.ledger)
        if trail is not None:
            detail: dict[str, Any] = {"changes": result.changes}
            if result.errors:
                detail["errors"] = result.errors
            if result.restart_required:
                detail["restart_required"] = result.restart_required
            outcome = "ok" if result.applied else "rejected"
            await trail.record(actor, "config.reload", result.source, outcome, address, detail)
        return result

    async def _reload(self) -> ReloadResult:
        where = str(self.source) if self.source is not None else None
        if self.source is None:
            return ReloadResult(
                applied=False,
                source=where,
                errors=[
                    "this gateway was started without a config file (the built-in mock "
                    "setup), so there is nothing to reload; start it with --config FILE"
                ],
            )
        async with self._lock:
            try:
                # PyYAML takes ~0.15 s for 100 models: off the event loop, requests go on.
                config = await asyncio.to_thread(load_config_file, self.source)
            except ConfigError as exc:
                return ReloadResult(applied=False, source=where, errors=config_errors(exc))
            return await self._apply(config, where)

    async def _apply(self, config: GatewayConfig, source: str | None) -> ReloadResult:
        engine = self.engine
        result = ReloadResult(applied=False, source=source)
        try:
            setup = await asyncio.to_thread(self._build, config, result)
        except Exception as exc:  # a provider adapter refusing its settings, say
            log.debug("building the reloaded config failed", exc_info=True)
            result.errors = [f"{type(exc).__name__}: {exc}"]
            return result

        running = engine.setup
        result.changes = config_diff(running.config.model_dump(), config.model_dump())
        old_ids, new_ids = running.deployment_ids(), setup.deployment_ids()
        result.models_added = sorted(
            set(setup.router.deployments) - set(running.router.deployments)
        )
        result.models_removed = sorted(
            set(running.router.deployments) - set(setup.router.deployments)
        )
        result.deployments_added = sorted(new_ids - old_ids)
        result.deployments_removed = sorted(old_ids - new_ids)
        self.retired.extend(running.router.providers.values())
        engine.swap(setup)
        result.applied = True
        return result

    def _build(self, config: GatewayConfig, result: ReloadResult) -> Setup:
        """The setup in force after the swap: ``config`` but for what needs a restart (in a
        thread: it only reads the engine)."""
        engine = self.engine
        running = engine.config
        result.restart_required = [
            name for name in RESTART_ONLY if getattr(config, name) != getattr(running, name)
        ]
        effective = config.model_copy(
            update={name: getattr(running, name) for name in RESTART_ONLY}
        )
        return Setup.build(effective, engine.health, engine.ledger)

    async def aclose(self) -> None:
        """Close what replaced providers held (only in-process ones hold anything)."""
        for provider in self.retired:
            if provider.transport is not None:
                await provider.transport.close()
        self.retired.clear()


def config_errors(exc: ConfigError) -> list[str]:
    """The problems a ConfigError lists, one per item."""
    lines = [line.strip() for line in str(exc).splitlines()]
    items = [line.removeprefix("- ") for line in lines if line.startswith("- ")]
    return items or [line for line in lines if line]
