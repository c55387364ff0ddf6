"""The names people gave keys and teams, for reports that group by their ids."""

from __future__ import annotations

from gateway.keys.store import KeyStore


async def group_names(store: KeyStore, group_by: str) -> dict[str, str] | None:
    """Name by id for a report grouped by ``key`` or ``team`` (None for other groupings)."""
    if group_by == "key":
        return {k.id: k.name for k in await store.list_keys()}
    if group_by == "team":
        return {t.id: t.name for t in await store.list_teams()}
    return None
