"""Costs: a price catalog with sources and dates, exact cost arithmetic, offline token counts.

- ``PriceBook(config).price(deployment, answered_model)`` — a call's effective price.
- ``compute_cost(usage, price, embedding=..., at=..., service_tier=...)`` — its ``Cost``
  (``total`` None when unknown), at the price in effect on the call's date and tier.
- ``estimate_usage`` / ``estimate_usage_async`` — usage counted offline when a stream ended
  without one; a cost computed from it is marked ``estimated``.
- ``unpriced_deployments(config)`` — deployments whose calls would get an unknown cost.
"""

from gateway.costs.catalog import Price, PriceCatalog
from gateway.costs.compute import (
    Cost,
    compute_cost,
    served_tier,
    total_usd,
    unknown_cost,
    usage_readable,
)
from gateway.costs.pricing import PriceBook, effective_price, price_family
from gateway.costs.report import DeploymentPrice, deployment_prices, unpriced_deployments
from gateway.costs.tokens import (
    count_tokens,
    count_tokens_sync,
    estimate_usage,
    estimate_usage_async,
    load_tokenizer,
    tokenizer_name,
)
from gateway.facts import usd_str

__all__ = [
    "Cost",
    "DeploymentPrice",
    "Price",
    "PriceBook",
    "PriceCatalog",
    "compute_cost",
    "count_tokens",
    "count_tokens_sync",
    "deployment_prices",
    "effective_price",
    "estimate_usage",
    "estimate_usage_async",
    "load_tokenizer",
    "price_family",
    "served_tier",
    "tokenizer_name",
    "total_usd",
    "unknown_cost",
    "unpriced_deployments",
    "usage_readable",
    "usd_str",
]
