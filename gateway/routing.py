"""From a public model name to a Plan: the ordered deployments to try for one request."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from gateway.config import GatewayConfig
from gateway.errors import InvalidRequestError, NotFoundError
from providers import provider_class
from providers.base import Deployment, Provider


@dataclass(slots=True)
class Plan:
    """Deployments in the order they will be tried: the model's own, then its fallbacks'."""

    model: str
    attempts: list[Deployment] = field(default_factory=list)


def weighted_order(deployments: list[Deployment], rng: random.Random) -> list[Deployment]:
    """A random order where heavier deployments tend to come first (Efraimidis-Spirakis)."""
    if len(deployments) <= 1:
        return list(deployments)
    return sorted(deployments, key=lambda d: rng.random() ** (1.0 / d.weight), reverse=True)


class Router:
    """Knows every public model, its deployments and fallbacks, and builds Plans."""

    def __init__(self, config: GatewayConfig, *, rng: random.Random | None = None) -> None:
        self.providers: dict[str, Provider] = {
            name: provider_class(settings.type)(name, settings)
            for name, settings in config.providers.items()
        }
        self.deployments: dict[str, list[Deployment]] = {}
        self.fallbacks: dict[str, list[str]] = {}
        for model, mcfg in config.models.items():
            deps = []
            for i, d in enumerate(mcfg.deployments):
                provider = self.providers[d.provider]
                deps.append(
                    Deployment(
                        id=f"{d.provider}/{d.upstream_name}" + (f"#{i}" if _dup(mcfg, i) else ""),
                        public_model=model,
                        provider=provider,
                        model=d.upstream_name,
                        base_model=d.base_model,
                        weight=d.weight,
                        region=d.region or provider.region,
                    )
                )
            self.deployments[model] = deps
            self.fallbacks[model] = list(mcfg.fallbacks)
        self._rng = rng or random.Random()

    def models(self) -> list[str]:
        return list(self.deployments)

    def plan(
        self, model: str, fallbacks: list[str] | None = None, needs: frozenset[str] = frozenset()
    ) -> Plan:
        """The Plan for ``model``; ``fallbacks`` (per request) replaces the configured chain.

        Deployments whose provider lacks a needed capability (tools, streaming, …) are left
        out; if that leaves none, the request is refused with the reason.
        """
        if model not in self.deployments:
            raise NotFoundError(
                f"model '{model}' is not served by this gateway; available models: "
                f"{', '.join(sorted(self.deployments)) or 'none'}",
                param="model",
            )
        chain = self.fallbacks[model] if fallbacks is None else fallbacks
        for fb in chain:
            if fb not in self.deployments:
                raise InvalidRequestError(
                    f"fallback model '{fb}' is not served by this gateway", param="fallbacks"
                )
        plan = Plan(model)
        lacking: dict[str, list[str]] = {}
        for name in (model, *(fb for fb in chain if fb != model)):
            able = []
            for dep in self.deployments[name]:
                missing = dep.provider.capabilities.lacks(needs)
                if missing:
                    lacking[dep.id] = missing
                else:
                    able.append(dep)
            plan.attempts.extend(weighted_order(able, self._rng))
        if not plan.attempts:
            reasons = "; ".join(f"{d} lacks {', '.join(m)}" for d, m in lacking.items())
            raise InvalidRequestError(
                f"no deployment of model '{model}' can serve this request: {reasons}",
                code="unsupported_feature",
            )
        return plan


def _dup(mcfg: object, i: int) -> bool:
    deps = getattr(mcfg, "deployments", [])
    key = (deps[i].provider, deps[i].upstream_name)
    return sum((d.provider, d.upstream_name) == key for d in deps) > 1
