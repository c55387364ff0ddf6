"""Data residency: the one check of whether data may go to (or be kept in) a region.

A *policy* is the set of regions a key, team, model or request is restricted to; ``None``
means no restriction. Everything that sends or keeps request data — routing (primary,
fallbacks, context-window fallbacks, stream continuation), exporters with a region, stored
answers and caches — asks ``allowed`` with the region of the place the data would go. A place
without a region is outside every restricted policy: the check fails closed.
"""

from __future__ import annotations

from collections.abc import Iterable

Policy = frozenset[str] | None


def allowed(region: str | None, policy: Policy) -> bool:
    """Whether data under ``policy`` may go to ``region`` (None: a place of unknown region)."""
    return policy is None or (region is not None and region in policy)


def narrow(*policies: Policy | Iterable[str]) -> Policy:
    """The regions every one of ``policies`` allows (None when none of them restricts)."""
    out: frozenset[str] | None = None
    for policy in policies:
        if policy is None:
            continue
        regions = frozenset(policy)
        out = regions if out is None else out & regions
    return out
