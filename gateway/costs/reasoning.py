"""Which models think before they answer: their hidden reasoning tokens are billed as output
but cannot be counted offline, so an estimate of their usage is only a lower bound."""

from __future__ import annotations

import re

# OpenAI's o-series (o1, o3, o4-mini, …) and gpt-5 (not its chat variant), Mistral's Magistral.
_REASONING = re.compile(r"^(?:o\d(?:$|-)|gpt-5(?!(?:\.\d+)?-chat)|magistral)", re.IGNORECASE)


def is_reasoning_model(*names: str | None) -> bool:
    """Whether any of ``names`` (the answering model, a base model, …) is a reasoning model."""
    return any(name is not None and _REASONING.match(name.rsplit("/", 1)[-1]) for name in names)
