"""Reloading the config file into a running Engine, without dropping a request.

The new file is read, validated and turned into a complete Router and price book first; only
then are the engine's ``config``, ``router`` and ``accountant`` replaced, one after the other
with no ``await`` in between, so no request ever sees half of each. The Engine object stays
the same (the app, the admin routes and the library hold it), and so does its HealthBoard:
a deployment whose id is unchanged keeps its circuit, latency and quota counts. A request in
flight keeps the Plan it started with — its deployments and providers — until it ends; its
cost is computed when it ends, with the prices then in force.

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
from typing import TYPE_CHECKING, Any

from gateway.accounting import Accountant
from gateway.config import GatewayConfig, load_config_file
from gateway.errors import ConfigError
from gateway.routing import Router

if TYPE_CHECKING:
    from gateway.engine import Engine
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
    """Re-reads one config file into one Engine (``reload``), or applies a given config."""

    def __init__(self, engine: Engine, source: str | Path | None) -> None:
        self.engine = engine
        self.source = Path(source) if source is not None else None
        self.retired: list[Provider] = []  # replaced providers, closed at shutdown
        self._lock = asyncio.Lock()  # one reload at a time

    async def reload(self) -> ReloadResult:
        """Read the file again and apply it; on any problem, keep the running config."""
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

    async def apply(self, config: GatewayConfig, source: str | None = None) -> ReloadResult:
        """Build everything ``config`` needs, then swap it in at once."""
        async with self._lock:
            return await self._apply(config, source)

    async def _apply(self, config: GatewayConfig, source: str | None) -> ReloadResult:
        engine = self.engine
        result = ReloadResult(applied=False, source=source)
        try:
            effective, router, accountant = await asyncio.to_thread(self._build, config, result)
        except Exception as exc:  # a provider adapter refusing its settings, say
            log.debug("building the reloaded config failed", exc_info=True)
            result.errors = [f"{type(exc).__name__}: {exc}"]
            return result

        old_ids = _deployment_ids(engine.router)
        new_ids = _deployment_ids(router)
        result.models_added = sorted(set(router.deployments) - set(engine.router.deployments))
        result.models_removed = sorted(set(engine.router.deployments) - set(router.deployments))
        result.deployments_added = sorted(new_ids - old_ids)
        result.deployments_removed = sorted(old_ids - new_ids)
        self.retired.extend(engine.router.providers.values())

        # The swap: plain assignments on the event loop, no await in between.
        engine.config = effective
        engine.router = router
        engine.accountant = accountant
        engine.health.circuit = effective.routing.circuit
        engine.health.shared = engine.shared_circuits if effective.routing.circuit.enabled else None
        engine.health.forget(old_ids - new_ids)
        if engine.shared_circuits is not None:
            engine.shared_circuits.track(new_ids)
        result.applied = True
        return result

    def _build(
        self, config: GatewayConfig, result: ReloadResult
    ) -> tuple[GatewayConfig, Router, Accountant]:
        """The config in force after the swap, its Router and Accountant (in a thread: they
        only read the engine)."""
        engine = self.engine
        running = engine.config
        result.restart_required = [
            name for name in RESTART_ONLY if getattr(config, name) != getattr(running, name)
        ]
        effective = config.model_copy(
            update={name: getattr(running, name) for name in RESTART_ONLY}
        )
        router = Router(effective, health=engine.health, price_of=engine._list_price)
        return effective, router, Accountant(effective, engine.ledger)

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


def _deployment_ids(router: Router) -> set[str]:
    return {d.id for deps in router.deployments.values() for d in deps}
