"""Prices: the shipped catalog, the config's additions, per-deployment deals.

The shipped catalog is two files beside this module: ``prices-genai.yaml``, generated from
the genai-prices dataset (``python -m gateway.costs.build_catalog``), and ``prices.yaml``,
kept by hand: each family's title, notes, service-tier and residency multipliers, and the
models the dataset lacks (Mistral on Azure AI, the mock provider). Hand-kept entries win.

Prices are per price *family* and model. A family is usually a provider type (``openai``,
``azure``, ``mistral``, ``mock``); Mistral models bought through Azure AI form their own family
(``azure-ai``), because Azure sets their price. Every price is an exact ``Decimal`` in USD per
1M tokens, read from the file's text, never through a float.

A model the catalog does not know has no price, and its calls have an *unknown* cost — never a
zero one. Only the mock provider is free, on purpose.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

from gateway.config import PriceConfig, PriceEntryConfig
from gateway.costs.catalog_file import (
    DATASET_FIELDS,
    CatalogDataset,
    CatalogEntry,
    CatalogFamily,
    CatalogPriceSet,
    RateFields,
    Rates,
    Tiers,
    merge_family,
    parse,
    tiers_of,
)
from gateway.errors import ConfigError

Origin = Literal["catalog", "config", "deployment"]
WILDCARD = "*"
# A trailing snapshot date: OpenAI's -2024-08-06, Mistral's -2411 (YYMM).
_DATED = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{4})$")
RATE_FIELDS = (*DATASET_FIELDS, "reasoning")
STANDARD_TIERS = frozenset({"default", "auto", "standard"})


@dataclass(frozen=True, slots=True)
class PriceSet:
    """A dated set of prices (a price change), or a service tier's prices."""

    effective: str | None  # ISO date it takes effect; None: from the start
    rates: Rates
    tiers: Tiers = ()


@dataclass(frozen=True, slots=True)
class Price:
    """What one model costs, in USD per 1M tokens, and where that figure comes from.

    ``None`` means "not priced": tokens of that kind make the cost unknown, except where a
    documented default applies (see ``rate``). The flat fields are the price in effect when
    the catalog was loaded; ``resolved`` gives the price at another time or service tier.
    """

    family: str
    model: str
    input: Decimal | None = None
    cached_input: Decimal | None = None
    output: Decimal | None = None
    reasoning: Decimal | None = None
    embedding: Decimal | None = None
    cached_input_ratio: Decimal | None = None
    context_window: int | None = None
    max_output_tokens: int | None = None
    aliases: tuple[str, ...] = ()
    source: str | None = None
    checked: str | None = None
    note: str | None = None
    origin: Origin = "catalog"
    effective: str | None = None  # ISO date this price took effect, if the source dates it
    cache_write: Decimal | None = None
    input_audio: Decimal | None = None
    output_audio: Decimal | None = None
    # Long-context tiers: above N prompt tokens, every token of that kind costs the tier price.
    tiers: Tiers = ()
    history: tuple[PriceSet, ...] = ()  # every dated price set, oldest first
    applied: PriceSet | None = None  # the one of ``history`` the flat fields hold
    service_tiers: tuple[tuple[str, PriceSet], ...] = ()  # the dataset's tier prices
    tier_multipliers: tuple[tuple[str, Decimal], ...] = ()  # the family's, for the rest
    service_tier: str | None = None  # the tier this price was resolved for
    multiplier: Decimal = Decimal(1)  # residency / deployment uplift, on every part
    uplift_source: str | None = None

    @property
    def cached_input_rate(self) -> Decimal | None:
        """Explicit cached price; else the family's share of input (Mistral: 10%); else input."""
        return self.rate("cached_input", 0)

    @property
    def reasoning_rate(self) -> Decimal | None:
        """Reasoning tokens cost the output price unless priced on their own."""
        return self.reasoning if self.reasoning is not None else self.output

    @property
    def embedding_rate(self) -> Decimal | None:
        """Embedding inputs cost the embedding price, else the input price."""
        return self.embedding if self.embedding is not None else self.input

    def rate(self, kind: str, prompt_tokens: int) -> Decimal | None:
        """The price of one kind of token for a call with ``prompt_tokens``, tiers applied.

        Defaults: cached input = input x the family's cache ratio, else input; cache writes
        and embeddings = input; reasoning = output; audio has no default (unknown).
        """
        own = self._tiered(kind, prompt_tokens)
        if own is not None:
            return own
        if kind == "cached_input":
            base = self._tiered("input", prompt_tokens)
            if base is not None and self.cached_input_ratio is not None:
                return base * self.cached_input_ratio
            return base
        if kind in ("cache_write", "embedding"):
            return self._tiered("input", prompt_tokens)
        if kind == "reasoning":
            return self._tiered("output", prompt_tokens)
        return None

    def reserve_rate(self, kind: str, service_tier: str | None = None) -> Decimal | None:
        """The most one token of ``kind`` can cost on a call asking for ``service_tier``
        (None: the standard tier) — any long-context tier and the residency uplift included —
        for reserving a request's worst case before it is sent."""
        price = self.resolved(None, service_tier)
        candidates = [price.rate(kind, 0)]
        candidates += [price.rate(kind, above + 1) for _, above, _ in price.tiers]
        known = [c for c in candidates if c is not None]
        return max(known) * self.multiplier if known else None

    def _tiered(self, kind: str, prompt_tokens: int) -> Decimal | None:
        value: Decimal | None = getattr(self, kind)
        best = -1
        for name, above, price in self.tiers:
            if name == kind and prompt_tokens > above > best:
                value, best = price, above
        return value

    def resolved(self, when: date | None = None, service_tier: str | None = None) -> Price:
        """This price as it stood on ``when`` (default: today, UTC) for ``service_tier``.

        A dated change replaces the dataset's fields at once. A service tier the dataset
        prices replaces the fields it sets (and their tiers); another tier the family has a
        documented multiplier for scales every price; ``default``/``auto`` change nothing.
        """
        if not self.history and not service_tier:
            return self  # the common case, on every call: nothing to resolve
        day = (when or datetime.now(UTC).date()).isoformat()
        price = self
        if self.history:
            current = self.history[0]
            for change in self.history:
                if change.effective is None or change.effective <= day:
                    current = change
            if current is not self.applied:  # usually it is: the catalog resolved it today
                price = price._with_set(current, replace_all=True)
        tier = (service_tier or "").strip().lower()
        if not tier or tier in STANDARD_TIERS:
            return price
        variants = dict(self.service_tiers)
        variant = variants.get(tier)
        if variant is not None and (variant.effective is None or variant.effective <= day):
            return replace(price._with_set(variant, replace_all=False), service_tier=tier)
        factor = dict(self.tier_multipliers).get(tier)
        if factor is not None:
            return replace(price._scaled(factor), service_tier=tier)
        return price

    def _with_set(self, prices: PriceSet, *, replace_all: bool) -> Price:
        rates = dict(prices.rates)
        if replace_all:
            changes: dict[str, Any] = {name: rates.get(name) for name in DATASET_FIELDS}
            tiers = prices.tiers
            effective = prices.effective or self.history[0].effective
        else:
            changes = rates
            kept = tuple(t for t in self.tiers if t[0] not in rates)
            tiers = kept + prices.tiers
            effective = prices.effective or self.effective
        if replace_all:
            changes["applied"] = prices
        return replace(self, tiers=tiers, effective=effective, **changes)

    def _scaled(self, factor: Decimal) -> Price:
        changes = {
            name: getattr(self, name) * factor
            for name in RATE_FIELDS
            if getattr(self, name) is not None
        }
        tiers = tuple((name, above, price * factor) for name, above, price in self.tiers)
        return replace(self, tiers=tiers, **changes)

    def overridden(self, override: PriceConfig, origin: Origin) -> Price:
        """This price with the fields ``override`` sets, as one flat price.

        The catalog's tiers, dated changes and service-tier prices no longer apply. An
        ``input`` without ``cached_input`` (or ``cache_write``) keeps the catalog's discount:
        the cached price becomes the new input x (catalog cached / catalog input), never the
        catalog's old cached figure beside a new input price.
        """
        changes: dict[str, Any] = {
            name: value
            for name, value in override.model_dump(include=set(RATE_FIELDS)).items()
            if value is not None
        }
        new_input = changes.get("input")
        if new_input is not None:
            for kind in ("cached_input", "cache_write"):
                old = getattr(self, kind)
                if kind in changes or old is None:
                    continue
                if self.input:  # keep the catalog's ratio to input
                    changes[kind] = new_input * old / self.input
                else:
                    changes[kind] = None  # falls back to the family ratio, else input
        return replace(
            self,
            origin=origin,
            tiers=(),
            history=(),
            applied=None,
            service_tiers=(),
            effective=None,
            **changes,
        )


@dataclass(slots=True)
class _Family:
    name: str
    title: str | None = None
    note: str | None = None
    cached_input_ratio: Decimal | None = None
    tier_multipliers: tuple[tuple[str, Decimal], ...] = ()
    residency: dict[str, Decimal] = field(default_factory=dict)
    residency_source: str | None = None
    entries: dict[str, Price] = field(default_factory=dict)  # canonical name -> price
    index: dict[str, str] = field(default_factory=dict)  # lowercased name or alias -> canonical

    def copy(self) -> _Family:
        return replace(self, entries=dict(self.entries), index=dict(self.index))

    def add(self, price: Price) -> None:
        self.entries[price.model] = price
        for name in (price.model, *price.aliases):
            self.index[name.lower()] = price.model

    def find(self, model: str, *, exact: bool = False) -> Price | None:
        name = model.strip().lower()
        canonical = self.index.get(name)
        if canonical is None and not exact:
            undated = _DATED.sub("", name)
            canonical = self.index.get(undated) if undated != name else None
            if canonical is None:
                canonical = self.index.get(WILDCARD)
        return self.entries[canonical] if canonical is not None else None


class PriceCatalog:
    """Prices by family and model; ``lookup`` resolves aliases and dated snapshot names."""

    def __init__(
        self, families: Mapping[str, _Family], dataset: CatalogDataset | None = None
    ) -> None:
        self._families = dict(families)
        self.dataset = dataset

    @classmethod
    def shipped(cls) -> PriceCatalog:
        """The catalog shipped with the package (read once per process)."""
        return _shipped()

    @classmethod
    def from_file(cls, path: str | Path) -> PriceCatalog:
        """A catalog from a file in the ``prices.yaml`` format."""
        return cls.from_text(Path(path).read_text(encoding="utf-8"), str(path))

    @classmethod
    def from_text(
        cls, text: str, origin: str = "<text>", *, base: str | None = None
    ) -> PriceCatalog:
        """A catalog from a file's text; ``base`` is another file's text (the generated
        catalog) whose entries and family defaults this one's add to or replace."""
        data = parse(text, origin)
        files_ = [(data, origin)]
        if base is not None:
            files_.insert(0, (parse(base, "generated catalog"), "generated catalog"))
        families: dict[str, _Family] = {}
        defaults: dict[str, CatalogFamily] = {}
        for parsed, _ in files_:
            for name, fam in parsed.families.items():
                merged = merge_family(defaults.get(name), fam)
                defaults[name] = merged
                family = families.get(name) or _Family(name)
                family.title, family.note = merged.title, merged.note
                family.cached_input_ratio = merged.cached_input_ratio
                family.tier_multipliers = tuple(merged.service_tiers.items())
                family.residency = dict(merged.residency)
                family.residency_source = merged.residency_source
                families[name] = family
        for parsed, _ in files_:
            for name, fam in parsed.families.items():
                for model, entry in fam.models.items():
                    families[name].add(_catalog_price(name, model, entry, fam))
        for name, fam in defaults.items():
            child = families[name]
            child.entries = {
                m: replace(
                    p,
                    cached_input_ratio=child.cached_input_ratio,
                    tier_multipliers=child.tier_multipliers,
                )
                for m, p in child.entries.items()
            }
            if fam.inherit is None:
                continue
            parent = families.get(fam.inherit)
            if parent is None:
                raise ConfigError(
                    f"price catalog {origin}: families.{name}.inherit: "
                    f"no family named {fam.inherit!r}"
                )
            for model, price in parent.entries.items():
                if model not in child.entries and not any(
                    n.lower() in child.index for n in (model, *price.aliases)
                ):
                    child.add(_inherited(price, child, fam))
        today = datetime.now(UTC).date()
        for family in families.values():
            family.entries = {m: p.resolved(today) for m, p in family.entries.items()}
        dataset = next((p.dataset for p, _ in files_ if p.dataset is not None), None)
        order = [*data.families, *families]  # the hand-kept file's order first
        return cls({name: families[name] for name in dict.fromkeys(order)}, dataset)

    def with_entries(self, prices: Mapping[str, Mapping[str, PriceEntryConfig]]) -> PriceCatalog:
        """A new catalog with config entries (``prices:``) added, or merged over same-named ones."""
        if not prices:
            return self
        families = {name: f.copy() for name, f in self._families.items()}
        for family_name, entries in prices.items():
            family = families.setdefault(family_name, _Family(family_name))
            for model, entry in entries.items():
                existing = family.index.get(model.lower())
                if existing is not None:
                    base = family.entries[existing]
                    merged = base.overridden(entry, "config")
                    family.add(_with_metadata(merged, entry))
                else:
                    family.add(
                        replace(
                            _price(family_name, model, entry, None, "config"),
                            cached_input_ratio=family.cached_input_ratio,
                            tier_multipliers=family.tier_multipliers,
                        )
                    )
        return PriceCatalog(families, self.dataset)

    def lookup(self, family: str, model: str, *, exact: bool = False) -> Price | None:
        """The price of ``model`` in ``family`` (a provider type or ``azure-ai``), or None.

        Resolves an exact name or alias, then (unless ``exact``) the name without a trailing
        snapshot date, then the family's ``*`` entry. No looser matching, so
        ``gpt-4o-mini-…`` is never ``gpt-4o``.
        """
        fam = self._families.get(family)
        return fam.find(model, exact=exact) if fam is not None else None

    def families(self) -> list[str]:
        """Family names in the hand-kept file's order, then the others, then the config's."""
        return list(self._families)

    def family_title(self, family: str) -> str | None:
        fam = self._families.get(family)
        return fam.title if fam is not None else None

    def family_note(self, family: str) -> str | None:
        fam = self._families.get(family)
        return fam.note if fam is not None else None

    def cached_input_ratio(self, family: str) -> Decimal | None:
        fam = self._families.get(family)
        return fam.cached_input_ratio if fam is not None else None

    def tier_multipliers(self, family: str) -> tuple[tuple[str, Decimal], ...]:
        fam = self._families.get(family)
        return fam.tier_multipliers if fam is not None else ()

    def residency_uplift(self, family: str, residency: str) -> tuple[Decimal, str | None] | None:
        """The documented price multiplier of a residency in a family, and its source."""
        fam = self._families.get(family)
        if fam is None:
            return None
        if residency == "global":
            return Decimal(1), None
        factor = fam.residency.get(residency)
        return (factor, fam.residency_source) if factor is not None else None

    def entries(self, family: str | None = None) -> Iterator[Price]:
        """Every entry (of one family), in family then file order."""
        for name in [family] if family is not None else self.families():
            fam = self._families.get(name)
            if fam is not None:
                yield from fam.entries.values()


GENERATED = "prices-genai.yaml"
HAND_KEPT = "prices.yaml"


@cache
def _shipped() -> PriceCatalog:
    here = files("gateway.costs")
    return PriceCatalog.from_text(
        here.joinpath(HAND_KEPT).read_text(encoding="utf-8"),
        f"gateway/costs/{HAND_KEPT}",
        base=here.joinpath(GENERATED).read_text(encoding="utf-8"),
    )


def generated_text() -> str:
    """The shipped generated catalog's text (for ``llm-gateway prices diff``)."""
    return files("gateway.costs").joinpath(GENERATED).read_text(encoding="utf-8")


def _price_set(spec: CatalogPriceSet) -> PriceSet:
    return PriceSet(spec.effective, spec.rates(), tiers_of(spec.tiers))


def _catalog_price(family: str, model: str, entry: CatalogEntry, fam: CatalogFamily) -> Price:
    price = _price(family, model, entry, fam, "catalog")
    rates = RateFields.model_validate(entry.model_dump(include=set(DATASET_FIELDS))).rates()
    base = PriceSet(entry.effective, rates, price.tiers)
    history = (base, *(_price_set(c) for c in entry.changes)) if entry.changes else ()
    return replace(
        price,
        history=history,
        service_tiers=tuple((t, _price_set(s)) for t, s in entry.service_tiers.items()),
    )


def _price(
    family: str,
    model: str,
    entry: PriceEntryConfig,
    defaults: CatalogFamily | None,
    origin: Origin,
) -> Price:
    effective = getattr(entry, "effective", None)
    tiers = getattr(entry, "tiers", None) or []
    return Price(
        family=family,
        model=model,
        input=entry.input,
        cached_input=entry.cached_input,
        cache_write=entry.cache_write,
        output=entry.output,
        reasoning=entry.reasoning,
        embedding=entry.embedding,
        input_audio=entry.input_audio,
        output_audio=entry.output_audio,
        context_window=entry.context_window,
        max_output_tokens=entry.max_output_tokens,
        aliases=tuple(entry.aliases),
        source=entry.source or (defaults.source if defaults else None),
        checked=entry.checked or (defaults.checked if defaults else None),
        effective=effective,
        tiers=tiers_of(tiers),
        note=entry.note,
        origin=origin,
    )


def _inherited(price: Price, family: _Family, fam: CatalogFamily) -> Price:
    return replace(
        price,
        family=family.name,
        cached_input_ratio=fam.cached_input_ratio,
        tier_multipliers=family.tier_multipliers,
        note=f"{price.family}'s list price, which {family.name} charges too"
        + (f"; {price.note}" if price.note else ""),
    )


def _with_metadata(price: Price, entry: PriceEntryConfig) -> Price:
    """Config metadata that replaces the catalog's where given."""
    return replace(
        price,
        aliases=tuple(dict.fromkeys((*price.aliases, *entry.aliases))),
        context_window=entry.context_window or price.context_window,
        max_output_tokens=entry.max_output_tokens or price.max_output_tokens,
        source=entry.source or "config",
        checked=entry.checked,
        note=entry.note,
    )
