"""Which price a deployment pays: its own ``price:``, else the catalog entry for its model.

The catalog (with the config's ``prices:`` entries) is looked up in the deployment's price
family — which its adapter names (``Provider.price_family``) — by the names below, most trusted
first; a deployment's ``price:`` then replaces the fields it sets, and its ``residency:`` or
``price_uplift:`` scales the result. ``PriceBook`` does this for the routing ``Deployment``
objects of the engine.
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

from gateway.config import DeploymentConfig, GatewayConfig
from gateway.costs.catalog import Price, PriceCatalog
from providers import Deployment, Provider, ProviderSettings, provider_class

_KEEP = 4096  # remembered prices per book


def price_family(settings: ProviderSettings, adapter: type[Provider] | None = None) -> str:
    """The catalog family that prices calls to a provider with these settings."""
    return (adapter or provider_class(settings.type)).price_family(settings)


def model_names_for(
    adapter: type[Provider],
    deployment: DeploymentConfig,
    answered_model: str | None = None,
) -> list[str]:
    """The names to price a deployment by, most trusted first.

    The model the provider answered with (the snapshot that did the work: Mistral's
    ``mistral-medium-2604`` behind ``-latest``, an Azure deployment's upgraded version), then
    ``base_model`` (what the operator says runs there), then the configured model — unless
    the adapter says a configured name is not a model's (Azure OpenAI's is the deployment's
    own, arbitrary name).
    """
    names = [answered_model, deployment.base_model]
    if adapter.deployment_names_model:
        names.append(deployment.upstream_name)
    return list(dict.fromkeys(n for n in names if n))


def effective_price(
    catalog: PriceCatalog,
    settings: ProviderSettings,
    deployment: DeploymentConfig,
    answered_model: str | None = None,
    adapter: type[Provider] | None = None,
) -> Price | None:
    """A deployment's price: its own ``price:`` over the catalog entry for its model.

    Names are tried exactly (name or alias) first, in trust order, and only then without a
    trailing snapshot date (configured names first): an answered ``gpt-4o-2024-11-20`` the
    catalog lists is priced as that, while an unlisted new snapshot falls back to the
    configured model's entry.
    """
    adapter = adapter or provider_class(settings.type)
    family = adapter.price_family(settings)
    names = model_names_for(adapter, deployment, answered_model)
    # Undated fallbacks try the configured names before the answered one: an unlisted new
    # snapshot (mistral-medium-2612) is priced as the configured alias, not as whatever
    # older model its undated name (mistral-medium) happens to denote.
    fallback = names[1:] + names[:1] if names[:1] == [answered_model] else names
    found = _first(catalog, family, names, exact=True) or _first(
        catalog, family, fallback, exact=False
    )
    if deployment.price is not None:
        if found is None:
            found = Price(
                family=family,
                model=names[0] if names else deployment.upstream_name,
                cached_input_ratio=catalog.cached_input_ratio(family),
                tier_multipliers=catalog.tier_multipliers(family),
                source="deployment price",
            )
        found = replace(found.overridden(deployment.price, "deployment"), source="deployment price")
    if found is None:
        return None
    return with_uplift(catalog, family, deployment, found)


def with_uplift(
    catalog: PriceCatalog, family: str, deployment: DeploymentConfig, price: Price
) -> Price:
    """``price`` scaled by the deployment's ``price_uplift``, else its residency's multiplier.

    A deployment's own ``price:`` is what it costs, residency included, so only an explicit
    ``price_uplift`` scales it. A residency the family documents no multiplier for leaves the
    price as it is (the ``prices`` report flags it).
    """
    if deployment.price_uplift is not None:
        return replace(
            price,
            multiplier=Decimal(1) + deployment.price_uplift,
            uplift_source="deployment price_uplift",
        )
    if deployment.residency is None or deployment.price is not None:
        return price
    uplift = catalog.residency_uplift(family, deployment.residency)
    if uplift is None:
        return price
    factor, source = uplift
    return replace(price, multiplier=factor, uplift_source=source)


def _first(catalog: PriceCatalog, family: str, names: list[str], *, exact: bool) -> Price | None:
    for name in names:
        price = catalog.lookup(family, name, exact=exact)
        if price is not None:
            return price
    return None


class PriceBook:
    """Effective prices for one configuration: deployment prices, config entries, catalog."""

    def __init__(self, config: GatewayConfig, catalog: PriceCatalog | None = None) -> None:
        self.config = config
        self.catalog = (catalog or PriceCatalog.shipped()).with_entries(config.prices)
        # Prices and config never change under a book, so answers can be kept (boundedly:
        # answered model names come from upstream).
        self._known: dict[tuple[str, str, str | None], Price | None] = {}

    def price(self, deployment: Deployment, answered_model: str | None = None) -> Price | None:
        """The price of a call served by ``deployment`` (and answered as ``answered_model``)."""
        key = (deployment.public_model, deployment.id, answered_model)
        if key in self._known:
            return self._known[key]
        dep = self.deployment_config(deployment)
        if dep is None:  # built outside the config (tests, plugins): price by names alone
            dep = DeploymentConfig(
                provider=deployment.provider_name,
                model=deployment.model,
                base_model=deployment.base_model,
            )
        provider = deployment.provider
        price = effective_price(
            self.catalog, provider.settings, dep, answered_model, adapter=type(provider)
        )
        if len(self._known) >= _KEEP:
            self._known.clear()
        self._known[key] = price
        return price

    def deployment_config(self, deployment: Deployment) -> DeploymentConfig | None:
        """The config entry a routing Deployment was built from."""
        return deployment.config
