"""Prices: the shipped catalog (``prices.yaml``), the config's additions, per-deployment deals.

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
from decimal import Decimal, InvalidOperation
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.config import PriceConfig, PriceEntryConfig
from gateway.errors import ConfigError

Origin = Literal["catalog", "config", "deployment"]
WILDCARD = "*"
# A trailing snapshot date: OpenAI's -2024-08-06, Mistral's -2411 (YYMM).
_DATED = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{4})$")


@dataclass(frozen=True, slots=True)
class Price:
    """What one model costs, in USD per 1M tokens, and where that figure comes from.

    ``None`` means "not priced": tokens of that kind make the cost unknown, except where a
    documented default applies (see the ``*_rate`` properties).
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
    basis: str | None = None
    note: str | None = None
    origin: Origin = "catalog"

    @property
    def cached_input_rate(self) -> Decimal | None:
        """Explicit cached price; else the family's share of input (Mistral: 10%); else input."""
        if self.cached_input is not None:
            return self.cached_input
        if self.input is not None and self.cached_input_ratio is not None:
            return self.input * self.cached_input_ratio
        return self.input

    @property
    def reasoning_rate(self) -> Decimal | None:
        """Reasoning tokens cost the output price unless priced on their own."""
        return self.reasoning if self.reasoning is not None else self.output

    @property
    def embedding_rate(self) -> Decimal | None:
        """Embedding inputs cost the embedding price, else the input price."""
        return self.embedding if self.embedding is not None else self.input

    def overridden(self, override: PriceConfig, origin: Origin) -> Price:
        """This price with the fields ``override`` sets."""
        changes: dict[str, Any] = {
            name: value
            for name, value in override.model_dump(include=set(_PRICE_FIELDS)).items()
            if value is not None
        }
        return replace(self, origin=origin, **changes)


_PRICE_FIELDS = ("input", "cached_input", "output", "reasoning", "embedding")


class CatalogEntry(PriceEntryConfig):
    """One model in ``prices.yaml``: a config price entry plus how it was sourced."""

    basis: Literal["knowledge", "third-party", "page"] | None = None


class CatalogFamily(BaseModel):
    """One family in ``prices.yaml``; its fields are defaults for its entries."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = None
    source: str | None = None
    checked: str | None = None
    basis: Literal["knowledge", "third-party", "page"] | None = None
    note: str | None = None
    cached_input_ratio: Decimal | None = Field(default=None, ge=0, le=1)
    inherit: str | None = None
    models: dict[str, CatalogEntry] = Field(default_factory=dict)


class CatalogFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1]
    families: dict[str, CatalogFamily]


@dataclass(slots=True)
class _Family:
    name: str
    title: str | None = None
    note: str | None = None
    cached_input_ratio: Decimal | None = None
    entries: dict[str, Price] = field(default_factory=dict)  # canonical name -> price
    index: dict[str, str] = field(default_factory=dict)  # lowercased name or alias -> canonical

    def copy(self) -> _Family:
        return replace(self, entries=dict(self.entries), index=dict(self.index))

    def add(self, price: Price) -> None:
        self.entries[price.model] = price
        for name in (price.model, *price.aliases):
            self.index[name.lower()] = price.model

    def find(self, model: str) -> Price | None:
        name = model.strip().lower()
        canonical = self.index.get(name)
        if canonical is None:
            undated = _DATED.sub("", name)
            canonical = self.index.get(undated) if undated != name else None
        if canonical is None:
            canonical = self.index.get(WILDCARD)
        return self.entries[canonical] if canonical is not None else None


class PriceCatalog:
    """Prices by family and model; ``lookup`` resolves aliases and dated snapshot names."""

    def __init__(self, families: Mapping[str, _Family]) -> None:
        self._families = dict(families)

    @classmethod
    def shipped(cls) -> PriceCatalog:
        """The catalog shipped with the package (read once per process)."""
        return _shipped()

    @classmethod
    def from_file(cls, path: str | Path) -> PriceCatalog:
        """A catalog from a file in the ``prices.yaml`` format."""
        return cls.from_text(Path(path).read_text(encoding="utf-8"), str(path))

    @classmethod
    def from_text(cls, text: str, origin: str = "<text>") -> PriceCatalog:
        try:
            raw = yaml.load(text, Loader=_DecimalLoader)
            data = CatalogFile.model_validate(raw)
        except (yaml.YAMLError, ValidationError) as exc:
            raise ConfigError(f"price catalog {origin} is invalid: {exc}") from exc
        families: dict[str, _Family] = {}
        for name, fam in data.families.items():
            family = _Family(name, fam.title, fam.note, fam.cached_input_ratio)
            for model, entry in fam.models.items():
                family.add(
                    _price(
                        name,
                        model,
                        entry,
                        defaults=fam,
                        ratio=fam.cached_input_ratio,
                        origin="catalog",
                    )
                )
            families[name] = family
        for name, fam in data.families.items():
            if fam.inherit is None:
                continue
            parent = families.get(fam.inherit)
            if parent is None:
                raise ConfigError(
                    f"price catalog {origin}: families.{name}.inherit: "
                    f"no family named {fam.inherit!r}"
                )
            child = families[name]
            for model, price in parent.entries.items():
                if model not in child.entries:
                    child.add(_inherited(price, name, fam))
        return cls(families)

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
                        _price(
                            family_name,
                            model,
                            entry,
                            defaults=None,
                            ratio=family.cached_input_ratio,
                            origin="config",
                        )
                    )
        return PriceCatalog(families)

    def lookup(self, family: str, model: str) -> Price | None:
        """The price of ``model`` in ``family`` (a provider type or ``azure-ai``), or None.

        Resolves an exact name or alias, then the name without a trailing snapshot date, then
        the family's ``*`` entry. No looser matching, so ``gpt-4o-mini-…`` is never ``gpt-4o``.
        """
        fam = self._families.get(family)
        return fam.find(model) if fam is not None else None

    def families(self) -> list[str]:
        """Family names in file order, then those the config added."""
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

    def entries(self, family: str | None = None) -> Iterator[Price]:
        """Every entry (of one family), in family then file order."""
        for name in [family] if family is not None else self.families():
            fam = self._families.get(name)
            if fam is not None:
                yield from fam.entries.values()


class _DecimalLoader(yaml.SafeLoader):
    """YAML numbers with a fraction become Decimals from their text: 0.275 stays 0.275."""


def _decimal(loader: yaml.SafeLoader, node: yaml.Node) -> Decimal | float:
    assert isinstance(node, yaml.ScalarNode)
    try:
        return Decimal(loader.construct_scalar(node).replace("_", ""))
    except InvalidOperation:  # .inf, .nan: left for validation to refuse
        return loader.construct_yaml_float(node)


_DecimalLoader.add_constructor("tag:yaml.org,2002:float", _decimal)


@cache
def _shipped() -> PriceCatalog:
    text = files("gateway.costs").joinpath("prices.yaml").read_text(encoding="utf-8")
    return PriceCatalog.from_text(text, "gateway/costs/prices.yaml")


def _price(
    family: str,
    model: str,
    entry: PriceEntryConfig,
    *,
    defaults: CatalogFamily | None,
    ratio: Decimal | None,
    origin: Origin,
) -> Price:
    return Price(
        family=family,
        model=model,
        input=entry.input,
        cached_input=entry.cached_input,
        output=entry.output,
        reasoning=entry.reasoning,
        embedding=entry.embedding,
        cached_input_ratio=ratio,
        context_window=entry.context_window,
        max_output_tokens=entry.max_output_tokens,
        aliases=tuple(entry.aliases),
        source=entry.source or (defaults.source if defaults else None),
        checked=entry.checked or (defaults.checked if defaults else None),
        basis=getattr(entry, "basis", None) or (defaults.basis if defaults else None),
        note=entry.note,
        origin=origin,
    )


def _inherited(price: Price, family: str, fam: CatalogFamily) -> Price:
    return replace(
        price,
        family=family,
        cached_input_ratio=fam.cached_input_ratio,
        source=fam.source or price.source,
        checked=fam.checked or price.checked,
        basis=fam.basis or price.basis,
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
        basis=None,
        note=entry.note,
    )
