"""From a public model name to a Plan: the ordered deployments to try for one request.

A model's deployments are ordered by its strategy — ``weighted`` (random, heavier first),
``round-robin``, ``least-busy`` (fewest in flight) or ``latency`` (power of two choices on the
observed EWMA) — then come its fallback models' deployments, each ordered the same way.
Deployments lacking a capability the request needs are left out.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

from gateway.config import (
    GatewayConfig,
    ModelConfig,
    RetryConfig,
    Strategy,
    TimeoutConfig,
    overridden,
)
from gateway.errors import InvalidRequestError, NotFoundError, PermissionDeniedError
from gateway.governance.residency import allowed, narrow
from gateway.routing.affinity import rendezvous_order
from gateway.routing.health import HealthBoard
from gateway.wire import Timeouts
from providers import provider_class
from providers.base import Deployment, Provider

# Seconds a stream may take to its first output by default while it can still fail over: a
# route that slow is better left for the next one, and a fallback's whole answer still fits
# in ~15 s of the caller's time.
STREAM_FIRST_TOKEN = 10.0


@dataclass(slots=True, frozen=True)
class ModelPolicy:
    """A model's effective strategy, retries and timeouts (global defaults + its overrides)."""

    strategy: Strategy
    retries: RetryConfig
    timeouts: TimeoutConfig

    def deadline(self, override: float | None = None) -> float:
        """When (``time.monotonic``) a request starting now runs out of time."""
        return time.monotonic() + (override or self.timeouts.total)

    def upstream_timeouts(self, dep: Deployment, *, stream: bool) -> Timeouts:
        """Connect, and the longest silence allowed: between chunks for a stream, before the
        (whole) answer otherwise."""
        t = self.timeouts
        own = dep.provider.timeouts
        silence = (t.idle if stream else t.first_token) or own.read
        return Timeouts(connect=t.connect or own.connect, read=silence)

    def first_token(self, dep: Deployment, *, last: bool = False) -> float:
        """Seconds a stream may take from its request to its first output (headers included).

        Unless configured, ``STREAM_FIRST_TOKEN`` while the Plan has another deployment to
        fail over to; on the ``last`` one, where giving up early helps nobody, the idle limit.
        """
        if self.timeouts.first_token:
            return self.timeouts.first_token
        idle = self.timeouts.idle or dep.provider.timeouts.read
        return idle if last else min(STREAM_FIRST_TOKEN, idle)


@dataclass(slots=True)
class Plan:
    """Deployments in the order they will be tried: the model's own, then its fallbacks'.

    ``context_attempts`` replace the rest of the plan when a deployment answers
    context_length_exceeded: retrying a model whose window is too small cannot succeed. They
    are the model's ``context_window_fallbacks``, or else those of its fallbacks whose context
    window is known to be larger than the model's.
    """

    model: str
    policy: ModelPolicy
    attempts: list[Deployment] = field(default_factory=list)
    context_attempts: list[Deployment] = field(default_factory=list)
    regions: frozenset[str] | None = None  # the residency every attempt keeps to (None: any)

    def uses_fallback(self, deployment: Deployment) -> bool:
        return deployment.public_model != self.model


def weighted_order(deployments: list[Deployment], rng: random.Random) -> list[Deployment]:
    """A random order where heavier deployments tend to come first (Efraimidis-Spirakis)."""
    if len(deployments) <= 1:
        return list(deployments)
    return sorted(deployments, key=lambda d: rng.random() ** (1.0 / d.weight), reverse=True)


class Router:
    """Knows every public model, its deployments, fallbacks and policy, and builds Plans."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        health: HealthBoard | None = None,
        rng: random.Random | None = None,
        price_of: Callable[[Deployment], Decimal | None] | None = None,
        window_of: Callable[[Deployment], int | None] | None = None,
    ) -> None:
        self.health = health or HealthBoard(config.routing.circuit)
        self.price_of = price_of or (lambda _: None)
        self.window_of = window_of or (lambda d: d.config.context_window if d.config else None)
        self.providers: dict[str, Provider] = {
            name: provider_class(settings.type)(name, settings)
            for name, settings in config.providers.items()
        }
        self.deployments: dict[str, list[Deployment]] = {}
        self.configs: dict[str, ModelConfig] = dict(config.models)
        self.policies: dict[str, ModelPolicy] = {}
        for model, mcfg in config.models.items():
            self.deployments[model] = [
                self._deployment(model, mcfg, i) for i in range(len(mcfg.deployments))
            ]
            self.policies[model] = ModelPolicy(
                strategy=mcfg.strategy or config.routing.strategy,
                retries=overridden(config.routing.retries, mcfg.retries),
                timeouts=overridden(config.routing.timeouts, mcfg.timeouts),
            )
        self._rng = rng or random.Random()
        self._turns: dict[str, itertools.count[int]] = {}
        self._orderers: dict[Strategy, Callable[[str, list[Deployment]], list[Deployment]]] = {
            "weighted": lambda _, deps: weighted_order(deps, self._rng),
            "round-robin": self._round_robin,
            "least-busy": self._least_busy,
            "latency": self._lowest_latency,
            "cost": self._cheapest,
            # Without an affinity key (embeddings), a prefix-affinity model orders by weight.
            "prefix-affinity": lambda _, deps: weighted_order(deps, self._rng),
        }

    def _deployment(self, model: str, mcfg: ModelConfig, i: int) -> Deployment:
        d = mcfg.deployments[i]
        provider = self.providers[d.provider]
        same = [
            x
            for x in mcfg.deployments
            if (x.provider, x.upstream_name) == (d.provider, d.upstream_name)
        ]
        return Deployment(
            id=f"{d.provider}/{d.upstream_name}" + (f"#{i}" if len(same) > 1 else ""),
            public_model=model,
            provider=provider,
            model=d.upstream_name,
            base_model=d.base_model,
            weight=d.weight,
            region=d.region or provider.region,
            rpm=d.rpm,
            tpm=d.tpm,
            config=d,
        )

    def models(self) -> list[str]:
        return list(self.deployments)

    def fallbacks_of(self, model: str) -> list[str]:
        """The fallback chain configured for ``model`` (none for a model not served)."""
        config = self.configs.get(model)
        return list(config.fallbacks) if config is not None else []

    def plan(
        self,
        model: str,
        fallbacks: list[str] | None = None,
        needs: frozenset[str] = frozenset(),
        regions: frozenset[str] | None = None,
        may_use: Callable[[str], bool] | None = None,
        affinity: Callable[[], str | None] | None = None,
    ) -> Plan:
        """The Plan for ``model``; ``fallbacks`` (per request) replaces the configured chain.

        Deployments whose provider lacks a needed capability (tools, streaming, …) are left
        out, and with ``regions`` so is every deployment outside them; with ``may_use`` (the
        caller's allowed models) so is every model it rejects. Both apply to every model the
        Plan may reach: fallbacks and context-window fallbacks included. If that leaves no
        attempt, the request is refused with the reason. ``affinity`` gives the request's
        affinity key, for models whose strategy is ``prefix-affinity`` (asked only for them).
        """
        if model not in self.deployments:
            raise NotFoundError(
                f"model '{model}' is not served by this gateway; available models: "
                f"{', '.join(sorted(self.deployments)) or 'none'}",
                param="model",
            )
        chain = self.configs[model].fallbacks if fallbacks is None else fallbacks
        for fb in chain:
            if fb not in self.deployments:
                raise InvalidRequestError(
                    f"fallback model '{fb}' is not served by this gateway; available models: "
                    f"{', '.join(sorted(self.deployments))}",
                    param="fallbacks",
                )
        # A model restricted to regions keeps its whole Plan there, fallbacks included.
        regions = narrow(regions, self.configs[model].regions)
        lacking: dict[str, list[str]] = {}
        outside: list[str] = []
        plan = Plan(model, self.policies[model], regions=regions)
        plan.attempts = self._ordered(
            [model, *(fb for fb in chain if fb != model)],
            needs,
            lacking,
            regions,
            outside,
            may_use,
            affinity,
        )
        if not plan.attempts and lacking:
            reasons = "; ".join(f"{d} lacks {', '.join(m)}" for d, m in lacking.items())
            raise InvalidRequestError(
                f"no deployment of model '{model}' can serve this request: {reasons}",
                code="unsupported_feature",
            )
        if not plan.attempts:
            raise PermissionDeniedError(
                f"no deployment of model '{model}' or of its fallbacks is in the regions this "
                f"request may use ({', '.join(sorted(regions or ())) or 'none'}); it was not "
                f"sent to the others ({', '.join(outside)})",
                param="model",
                code="region_not_allowed",
            )
        plan.context_attempts = self._ordered(
            self.configs[model].context_window_fallbacks or self._larger(model, chain),
            needs,
            {},
            regions,
            [],
            may_use,
        )
        return plan

    def context_window(self, model: str) -> int | None:
        """The largest context window among ``model``'s deployments (None: not known)."""
        windows = [self.window_of(d) for d in self.deployments[model]]
        known = [w for w in windows if w is not None]
        return max(known) if known else None

    def _larger(self, model: str, chain: list[str]) -> list[str]:
        """The models of ``chain`` whose context window is larger than ``model``'s."""
        window = self.context_window(model)
        if window is None:
            return []
        return [fb for fb in chain if fb != model and (self.context_window(fb) or 0) > window]

    def _ordered(
        self,
        models: list[str],
        needs: frozenset[str],
        lacking: dict[str, list[str]],
        regions: frozenset[str] | None,
        outside: list[str],
        may_use: Callable[[str], bool] | None,
        affinity: Callable[[], str | None] | None = None,
    ) -> list[Deployment]:
        out: list[Deployment] = []
        key: str | None = None
        for name in models:
            if may_use is not None and not may_use(name):
                continue  # a model the caller may not use is never reached, not even on failure
            able = []
            for dep in self.deployments[name]:
                if not allowed(dep.region, regions):
                    outside.append(f"{dep.id} in {dep.region or 'no region'}")
                    continue  # data residency: never leave the allowed regions
                missing = dep.lacks(needs)
                if missing:
                    lacking[dep.id] = missing
                else:
                    able.append(dep)
            strategy = self.policies[name].strategy
            if strategy == "prefix-affinity":
                key = key or (affinity() if affinity is not None else None)
                if key is not None:
                    out.extend(rendezvous_order(key, able))
                    continue
            out.extend(self._orderers[strategy](name, able))
        return out

    # -- strategies --------------------------------------------------------------------
    def _round_robin(self, model: str, deps: list[Deployment]) -> list[Deployment]:
        if len(deps) <= 1:
            return deps
        turn = next(self._turns.setdefault(model, itertools.count())) % len(deps)
        return deps[turn:] + deps[:turn]

    def _least_busy(self, model: str, deps: list[Deployment]) -> list[Deployment]:
        shuffled = self._rng.sample(deps, len(deps))  # ties are broken at random
        return sorted(shuffled, key=lambda d: self.health.get(d.id).in_flight)

    def _cheapest(self, model: str, deps: list[Deployment]) -> list[Deployment]:
        """Cheapest first (input + output price per 1M tokens); unpriced ones last; ties at
        random. Unhealthy ones are skipped at admission, so this is the cheapest healthy."""
        shuffled = self._rng.sample(deps, len(deps))
        prices = {d.id: self.price_of(d) for d in deps}
        return sorted(shuffled, key=lambda d: (prices[d.id] is None, prices[d.id] or 0))

    def _lowest_latency(self, model: str, deps: list[Deployment]) -> list[Deployment]:
        """Power of two choices: of two random deployments the faster goes first; the rest
        follow by latency. Unmeasured deployments count as fastest, so they get measured."""
        if len(deps) <= 1:
            return deps

        def latency(d: Deployment) -> float:
            return self.health.get(d.id).latency or 0.0

        a, b = self._rng.sample(deps, 2)
        first = a if latency(a) <= latency(b) else b
        rest = sorted((d for d in deps if d is not first), key=latency)
        return [first, *rest]
