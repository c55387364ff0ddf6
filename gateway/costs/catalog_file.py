"""The catalog files' format: what ``prices.yaml`` and ``prices-genai.yaml`` may say.

Numbers are read as exact decimals from their text (``DecimalLoader``), never through a
float; the pydantic models below refuse anything else, naming the key that is wrong.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway.config import PriceEntryConfig
from gateway.errors import ConfigError

# Price fields the dataset manages: a dated change replaces all of them at once.
DATASET_FIELDS = (
    "input",
    "cached_input",
    "cache_write",
    "output",
    "embedding",
    "input_audio",
    "output_audio",
)
Rates = tuple[tuple[str, Decimal], ...]  # (field, USD per 1M tokens)
Tiers = tuple[tuple[str, int, Decimal], ...]  # (field, above this many prompt tokens, price)


class RateFields(BaseModel):
    """The token prices a catalog entry, tier or price change may set (USD per 1M tokens)."""

    model_config = ConfigDict(extra="forbid")

    input: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False)
    cached_input: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False)
    cache_write: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False)
    output: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False)
    embedding: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False)
    input_audio: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False)
    output_audio: Decimal | None = Field(default=None, ge=0, allow_inf_nan=False)

    def rates(self) -> Rates:
        return tuple(
            (name, value) for name in DATASET_FIELDS if (value := getattr(self, name)) is not None
        )


class CatalogTier(RateFields):
    """Prices for calls with more than ``above`` prompt tokens (every token, not the excess)."""

    above: int = Field(ge=0)


class CatalogPriceSet(RateFields):
    """A dated price change, or a service tier's prices."""

    effective: str | None = None
    tiers: list[CatalogTier] = Field(default_factory=list)

    @field_validator("effective", mode="before")
    @classmethod
    def _date_as_text(cls, value: Any) -> Any:
        return value.isoformat() if isinstance(value, date) else value


class CatalogEntry(PriceEntryConfig):
    """One model in a catalog file: a config price entry plus tiers, dates and tier prices."""

    effective: str | None = None
    tiers: list[CatalogTier] = Field(default_factory=list)
    changes: list[CatalogPriceSet] = Field(default_factory=list)
    service_tiers: dict[str, CatalogPriceSet] = Field(default_factory=dict)

    @field_validator("effective", mode="before")
    @classmethod
    def _effective_as_text(cls, value: Any) -> Any:
        return value.isoformat() if isinstance(value, date) else value


class CatalogFamily(BaseModel):
    """One family in a catalog file; its fields are defaults for its entries."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = None
    source: str | None = None
    checked: str | None = None
    note: str | None = None
    dataset_provider: str | None = None
    cached_input_ratio: Decimal | None = Field(default=None, ge=0, le=1)
    inherit: str | None = None
    service_tiers: dict[str, Decimal] = Field(default_factory=dict)
    service_tiers_source: str | None = None
    residency: dict[str, Decimal] = Field(default_factory=dict)
    residency_source: str | None = None
    models: dict[str, CatalogEntry] = Field(default_factory=dict)

    @field_validator("checked", mode="before")
    @classmethod
    def _date_as_text(cls, value: Any) -> Any:
        return value.isoformat() if isinstance(value, date) else value


class CatalogDataset(BaseModel):
    """Where a generated catalog comes from."""

    name: str
    version: str
    data_date: str | None = None
    generated: str | None = None
    url: str | None = None
    license: str | None = None


class CatalogFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1, 2]
    dataset: CatalogDataset | None = None
    families: dict[str, CatalogFamily]


class DecimalLoader(yaml.SafeLoader):
    """YAML numbers with a fraction become Decimals from their text: 0.275 stays 0.275."""


def _decimal(loader: yaml.SafeLoader, node: yaml.Node) -> Decimal | float:
    assert isinstance(node, yaml.ScalarNode)
    try:
        return Decimal(loader.construct_scalar(node).replace("_", ""))
    except InvalidOperation:  # .inf, .nan: left for validation to refuse
        return loader.construct_yaml_float(node)


DecimalLoader.add_constructor("tag:yaml.org,2002:float", _decimal)


def parse(text: str, origin: str) -> CatalogFile:
    try:
        raw = yaml.load(text, Loader=DecimalLoader)
        return CatalogFile.model_validate(raw)
    except (yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"price catalog {origin} is invalid: {exc}") from exc


def merge_family(old: CatalogFamily | None, new: CatalogFamily) -> CatalogFamily:
    """Family defaults of a later file over an earlier one's (models are added separately)."""
    if old is None:
        return new
    fields = new.model_dump(exclude={"models"}, exclude_unset=True)
    return old.model_copy(update=fields)


def tiers_of(tiers: list[CatalogTier]) -> Tiers:
    return tuple(
        (name, tier.above, value)
        for tier in tiers
        for name in DATASET_FIELDS
        if (value := getattr(tier, name)) is not None
    )
