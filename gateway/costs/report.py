"""What a configuration will pay: its deployments' effective prices, and those without one.

Used by ``llm-gateway prices`` and, at start-up, to warn about deployments whose calls would
be recorded with an unknown cost.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from gateway.config import DeploymentConfig, GatewayConfig
from gateway.costs.catalog import WILDCARD, Price, PriceCatalog
from gateway.costs.pricing import effective_price
from gateway.facts import usd_str
from providers import provider_class


@dataclass(frozen=True, slots=True)
class DeploymentPrice:
    """One configured deployment and the price its calls are billed at (None: unknown)."""

    path: str  # models.<name>.deployments[i], as config errors name it
    public_model: str
    provider: str
    family: str
    deployment: DeploymentConfig
    price: Price | None
    problem: str | None = None  # why its cost will be (partly) unknown

    @property
    def message(self) -> str:
        """A warning line for the log: what is wrong and what to do."""
        where = f"{self.path} ({self.provider}/{self.deployment.upstream_name})"
        return f"{where}: {self.problem}"


def deployment_prices(
    config: GatewayConfig, catalog: PriceCatalog | None = None
) -> list[DeploymentPrice]:
    """Every configured deployment with its effective price, in config order."""
    book = (catalog or PriceCatalog.shipped()).with_entries(config.prices)
    rows = []
    for name, model in config.models.items():
        for i, dep in enumerate(model.deployments):
            settings = config.providers.get(dep.provider)
            if settings is None:  # load_config refuses this; keep the helper total anyway
                continue
            adapter = provider_class(settings.type)
            family = adapter.price_family(settings)
            price = effective_price(book, settings, dep, adapter=adapter)
            problem = _problem(adapter.deployment_names_model, family, dep, price)
            if (
                problem is None
                and dep.residency
                and dep.price_uplift is None
                and dep.price is None
                and book.residency_uplift(family, dep.residency) is None
            ):
                problem = (
                    f"residency {dep.residency!r} has no documented uplift in price family "
                    f"{family!r}; its calls are priced without one: set `price_uplift:` "
                    "(e.g. 0.10 for +10%) or a `price:`"
                )
            rows.append(
                DeploymentPrice(
                    path=f"models.{name}.deployments[{i}]",
                    public_model=name,
                    provider=dep.provider,
                    family=family,
                    deployment=dep,
                    price=price,
                    problem=problem,
                )
            )
    return rows


def unpriced_deployments(
    config: GatewayConfig, catalog: PriceCatalog | None = None
) -> list[DeploymentPrice]:
    """Deployments whose calls would get an unknown cost; log ``.message`` for each."""
    return [row for row in deployment_prices(config, catalog) if row.problem is not None]


def _problem(
    names_model: bool, family: str, dep: DeploymentConfig, price: Price | None
) -> str | None:
    fix = (
        f"give the deployment a `price:` or add `prices.{family}.<model>` to the config; "
        "until then its calls are recorded with an unknown cost"
    )
    if price is None:
        if not names_model and not dep.base_model:
            return (
                "no base_model, and its deployment name is not a model's, so its price is "
                "known only if the provider answers with a model name the catalog knows; set "
                f"base_model (e.g. gpt-4o-2024-08-06), or {fix}"
            )
        name = dep.base_model or dep.upstream_name
        return f"no price is known for {family} model {name!r}; {fix}"
    chat_priced = price.input is not None and price.output is not None
    if not chat_priced and price.embedding_rate is None:
        missing = [k for k in ("input", "output") if getattr(price, k) is None]
        return f"its price has no {' or '.join(missing)} figure; {fix}"
    return None


# -- text tables -------------------------------------------------------------------------------


def render_deployments(rows: Sequence[DeploymentPrice]) -> str:
    """The effective price list of a configuration, USD per 1M tokens."""
    header = [
        "MODEL",
        "PROVIDER",
        "DEPLOYMENT",
        "PRICED AS",
        "INPUT",
        "CACHED",
        "OUTPUT",
        "REASONING",
        "EMBED",
        "SOURCE",
        "EFFECTIVE",
        "NOTE",
    ]
    table = []
    for row in rows:
        p = row.price
        marker = _marker(row)
        table.append(
            [
                row.public_model,
                f"{row.provider} ({row.family})",
                row.deployment.upstream_name,
                _priced_as(p),
                *_rates(p),
                (p.source or "-") if p is not None else "-",
                _effective(p),
                marker,
            ]
        )
    return _table(header, table)


def render_catalog(catalog: PriceCatalog) -> str:
    """Every entry of a catalog, family by family, USD per 1M tokens."""
    header = [
        "MODEL",
        "ALIASES",
        "INPUT",
        "CACHED",
        "OUTPUT",
        "REASONING",
        "EMBED",
        "CONTEXT",
        "MAX OUT",
        "EFFECTIVE",
        "MORE",
        "SOURCE",
    ]
    sections = []
    for family in catalog.families():
        entries = list(catalog.entries(family))
        title = catalog.family_title(family)
        rows = [
            [
                p.model + (" (config)" if p.origin == "config" else ""),
                _aliases(p.aliases),
                *_rates(p),
                str(p.context_window or "-"),
                str(p.max_output_tokens or "-"),
                _effective(p),
                _more(p) or "-",
                p.source or "-",
            ]
            for p in entries
        ]
        heading = f"[{family}]" + (f" {title}" if title else "")
        note = catalog.family_note(family)
        if note:
            heading += "\n" + textwrap.fill(note, 100, initial_indent="  ", subsequent_indent="  ")
        sections.append(heading + "\n" + _table(header, rows))
    return "\n\n".join(sections)


def _priced_as(p: Price | None) -> str:
    if p is None:
        return "-"
    return f"(any {p.family} model)" if p.model == WILDCARD else p.model


def _marker(row: DeploymentPrice) -> str:
    if row.price is None:
        return "UNKNOWN"
    marks = {"deployment": "override", "config": "config", "catalog": ""}
    parts = [marks[row.price.origin]]
    if row.price.multiplier != 1:
        parts.append(f"x{usd_str(row.price.multiplier)}")
    more = _more(row.price)
    if more:
        parts.append(more)
    if row.problem is not None:
        parts.append("INCOMPLETE")
    return ", ".join(p for p in parts if p) or "-"


def _aliases(names: Sequence[str], shown: int = 3) -> str:
    if not names:
        return "-"
    more = f" (+{len(names) - shown})" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _effective(p: Price | None) -> str:
    """The date a price took effect, else the date it was taken from its source."""
    if p is None:
        return "-"
    return p.effective or p.checked or "-"


def _more(p: Price) -> str:
    """Price dimensions beyond the flat columns: tiers, cache writes, audio, service tiers."""
    parts = []
    starts = sorted({above for _, above, _ in p.tiers})
    if starts:
        parts.append("tiers>" + "/".join(str(s) for s in starts))
    if p.cache_write is not None:
        parts.append(f"cache-write:{usd_str(p.cache_write)}")
    if p.input_audio is not None or p.output_audio is not None:
        parts.append(f"audio:{_usd(p.input_audio)}/{_usd(p.output_audio)}")
    if p.service_tiers:
        parts.append("service:" + "/".join(name for name, _ in p.service_tiers))
    return ",".join(parts)


def _rates(p: Price | None) -> list[str]:
    if p is None:
        return ["UNKNOWN", "-", "-", "-", "-"]
    chat = p.input is not None or p.output is not None
    return [
        _usd(p.input),
        _usd(p.cached_input_rate) if chat else "-",
        _usd(p.output),
        _usd(p.reasoning_rate) if chat else "-",
        _usd(p.embedding),
    ]


def _usd(value: Decimal | None) -> str:
    return usd_str(value) if value is not None else "-"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = [list(header), *(list(r) for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )
