"""``Setup``: what a configuration decides that a reload may replace, as one immutable value.

The engine holds one ``Setup`` and reads it once per request, so a request keeps the routing
and prices it started with even if a reload swaps in another meanwhile. A new one is built
completely — providers, router, price book — before it replaces the old in a single
assignment (``Engine.swap``); nothing is ever half of one and half of the other.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.accounting import Accountant
from gateway.config import GatewayConfig, secrets_of
from gateway.errors import register_secrets
from gateway.ledger.ledger import Ledger
from gateway.routing import HealthBoard, Router
from providers.base import Deployment


@dataclass(frozen=True, slots=True)
class Setup:
    """The configuration in force, its Router (providers and deployments) and its prices."""

    config: GatewayConfig
    router: Router
    accountant: Accountant

    @classmethod
    def build(cls, config: GatewayConfig, health: HealthBoard, ledger: Ledger | None) -> Setup:
        """Everything ``config`` needs, sharing the process's health board and ledger."""
        register_secrets(secrets_of(config))  # never in an error message from now on
        accountant = Accountant(config, ledger)
        prices = accountant.prices

        def window_of(dep: Deployment) -> int | None:
            own = dep.config.context_window if dep.config is not None else None
            if own is not None:
                return own
            price = prices.price(dep)
            return price.context_window if price is not None else None

        router = Router(config, health=health, price_of=accountant.list_price, window_of=window_of)
        return cls(config, router, accountant)

    def deployment_ids(self) -> set[str]:
        return {d.id for deps in self.router.deployments.values() for d in deps}
