"""Every model a config example in README.md or docs/*.md deploys has a price in the shipped
catalog — a documented setup never bills at an unknown cost (unless it gives its own price)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.costs.catalog import PriceCatalog

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```ya?ml\n(.*?)```", re.DOTALL)
CATALOG = PriceCatalog.shipped()


def family_of(provider: str, settings: dict[str, Any] | None) -> str:
    """The price family of a provider named in an example (its type, else its name's hint)."""
    kind = (settings or {}).get("type")
    if kind == "mistral" and (settings or {}).get("platform", "").startswith("azure"):
        return "azure-ai"
    if kind:
        return str(kind)
    for hint in ("azure", "mistral", "mock", "openai"):
        if hint in provider:
            return hint
    return "openai"


def deployments_in_docs() -> Iterator[tuple[str, str, str, dict[str, Any]]]:
    """(doc, family, model name, deployment) for each deployment of each YAML example."""
    for doc in DOCS:
        for block in BLOCK.findall(doc.read_text(encoding="utf-8")):
            try:
                config = yaml.safe_load(re.sub(r"\$\{[^}]*\}", "x", block))
            except yaml.YAMLError:
                continue
            if not isinstance(config, dict) or not isinstance(config.get("models"), dict):
                continue
            providers = config.get("providers") or {}
            own_prices = config.get("prices") or {}
            for model in config["models"].values():
                for dep in (model or {}).get("deployments") or []:
                    family = family_of(dep["provider"], providers.get(dep["provider"]))
                    name = dep.get("base_model") or dep.get("model")
                    if not name or dep.get("price") or name in own_prices.get(family, {}):
                        continue  # priced by the example itself
                    yield doc.name, family, name, dep


DEPLOYMENTS = list(deployments_in_docs())


def test_the_docs_have_config_examples_to_check() -> None:
    assert len(DEPLOYMENTS) >= 5
    assert {"README.md", "costs.md"} <= {doc for doc, *_ in DEPLOYMENTS}


@pytest.mark.parametrize(
    ("doc", "family", "model", "deployment"),
    DEPLOYMENTS,
    ids=[f"{doc}:{family}/{model}" for doc, family, model, _ in DEPLOYMENTS],
)
def test_every_model_in_a_doc_example_resolves_to_a_price(
    doc: str, family: str, model: str, deployment: dict[str, Any]
) -> None:
    price = CATALOG.lookup(family, model)
    assert price is not None, f"{doc}: {family} model {model!r} has no price"
    assert price.input is not None or price.embedding is not None, (doc, model)
