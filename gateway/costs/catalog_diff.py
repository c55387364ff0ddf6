"""``llm-gateway prices diff``: the shipped generated prices against the installed genai-prices.

Regenerating the catalog from a newer genai-prices changes what calls are billed at; this
lists each price that would change, appear or disappear, so the change is reviewed before it
is committed. Nothing is fetched: the comparison is with the package installed locally.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from gateway.costs.catalog import generated_text
from gateway.costs.catalog_file import DecimalLoader

Change = Literal["changed", "added", "removed"]


@dataclass(frozen=True, slots=True)
class PriceChange:
    """One difference between the shipped and the installed dataset."""

    family: str
    model: str
    change: Change
    field: str | None = None  # for "changed": which field
    old: str | None = None
    new: str | None = None


@dataclass(frozen=True, slots=True)
class CatalogDiff:
    shipped_version: str | None
    installed_version: str
    changes: list[PriceChange]


def diff_installed(shipped: str | None = None) -> CatalogDiff:
    """Compare the shipped generated catalog (or ``shipped`` text) with the installed dataset.

    Raises ``ImportError`` when genai-prices is not installed.
    """
    from gateway.costs.build_catalog import build, dataset_version, render

    old = _load(shipped if shipped is not None else generated_text())
    new = _load(render(build()))
    return CatalogDiff(
        shipped_version=(old.get("dataset") or {}).get("version"),
        installed_version=dataset_version(),
        changes=list(diff(old, new)),
    )


def diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> Iterator[PriceChange]:
    """Every model added, removed or changed between two generated catalogs."""
    old_families = old.get("families") or {}
    new_families = new.get("families") or {}
    for family in dict.fromkeys([*old_families, *new_families]):
        before = (old_families.get(family) or {}).get("models") or {}
        after = (new_families.get(family) or {}).get("models") or {}
        for model in dict.fromkeys([*before, *after]):
            if model not in after:
                yield PriceChange(family, model, "removed")
            elif model not in before:
                yield PriceChange(family, model, "added", new=_summary(after[model]))
            else:
                a, b = before[model], after[model]
                for key in dict.fromkeys([*a, *b]):
                    if a.get(key) != b.get(key):
                        yield PriceChange(
                            family, model, "changed", key, _text(a.get(key)), _text(b.get(key))
                        )


def render_diff(result: CatalogDiff) -> str:
    """A readable list of the differences."""
    lines = [
        f"shipped: genai-prices {result.shipped_version or '?'}; "
        f"installed: genai-prices {result.installed_version}"
    ]
    if not result.changes:
        lines.append("no price differs")
        return "\n".join(lines)
    for c in result.changes:
        where = f"{c.family}/{c.model}"
        if c.change == "changed":
            lines.append(f"changed  {where}  {c.field}: {c.old} -> {c.new}")
        elif c.change == "added":
            lines.append(f"added    {where}  {c.new}")
        else:
            lines.append(f"removed  {where}")
    counts = {
        kind: sum(1 for c in result.changes if c.change == kind)
        for kind in ("changed", "added", "removed")
    }
    lines.append(
        f"{counts['changed']} changed fields, {counts['added']} added and "
        f"{counts['removed']} removed models; regenerate with "
        "`python -m gateway.costs.build_catalog` to adopt them"
    )
    return "\n".join(lines)


def _load(text: str) -> dict[str, Any]:
    data = yaml.load(text, Loader=DecimalLoader)
    return data if isinstance(data, dict) else {}


def _summary(entry: Mapping[str, Any]) -> str:
    keys = ("input", "cached_input", "output", "embedding")
    return " ".join(f"{k}={_text(entry[k])}" for k in keys if k in entry) or "(no token price)"


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list | dict):
        return yaml.safe_dump(_plain(value), default_flow_style=True, width=10_000).strip()
    return str(value)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value if isinstance(value, str | int) else str(value)
