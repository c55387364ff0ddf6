"""``SpendRecord``: the facts about one finished request that the ledger keeps."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Literal, NamedTuple

Operation = Literal["chat", "fim", "completions", "embeddings", "responses", "batch"]
# The API a request came through: the OpenAI-compatible routes, Azure OpenAI's or Mistral's
# own (gateway/server/native.py), or an in-process library call.
Surface = Literal["openai", "azure", "mistral", "library"]
# Where a record's token counts come from: the provider's usage, the gateway's offline count,
# or an offline count known to be short (a reasoning model's hidden tokens are not counted).
UsageBasis = Literal["reported", "estimated", "lower_bound"]
# A record of a call, or an adjustment of an earlier record's cost (``llm-gateway reprice``):
# history is never edited, a corrected price is a new row that says what it adjusts.
RecordKind = Literal["call", "adjustment"]

# Costs are kept to 1e-10 USD, the precision of the ``cost_usd`` column (and of the budget
# counters in gateway.limits), rounded the same way (half-even) wherever they are summed.
COST_QUANTUM = Decimal("1e-10")
ERROR_STATUS = 400  # a record whose status is at least this counts as an error


def quantize_cost(cost: Decimal | int | None) -> Decimal | None:
    """``cost`` at the ledger's precision; None (unknown) stays None, never 0."""
    if cost is None:
        return None
    return Decimal(cost).quantize(COST_QUANTUM, rounding=ROUND_HALF_EVEN)


def as_utc(moment: datetime) -> datetime:
    """An aware UTC datetime; a naive one is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


@dataclass(slots=True, frozen=True)
class AttemptEntry:
    """One upstream attempt of a request, as the ledger keeps it beside the request's record:
    which deployment, what came back (``status`` None: no HTTP answer), how long it took,
    and whether the provider bills it (an answer, or a prompt sent and left unanswered)."""

    deployment: str
    started_at: datetime
    latency_ms: float
    provider: str | None = None
    model: str | None = None  # the deployment's upstream model
    status: int | None = None
    error_type: str | None = None
    billed: bool = False

    @property
    def failed(self) -> bool:
        return self.error_type is not None or self.status is None or self.status >= ERROR_STATUS


@dataclass(slots=True)
class SpendRecord:
    """One request as the ledger stores it: who asked, what answered, what it used and cost.

    ``cost_usd`` is exact (Decimal) or None when the price is unknown — never 0 for unknown.
    ``status`` is the HTTP status returned to the caller; ``usage_estimated`` says the token
    counts were estimated because the provider sent none (or none the gateway could read),
    ``usage_basis`` whether such an estimate is a lower bound.

    Provenance: ``price_family``/``price_model``/``price_source``/``price_effective`` name the
    catalog entry that priced the record; ``cost_note`` says why its cost is unknown or
    estimated. An ``adjustment`` record (``kind``) re-prices the record ``adjusts``: its
    ``cost_usd`` is the difference, ``adjusted_cost_usd`` the cost it replaces (None: unknown).
    """

    request_id: str
    started_at: datetime
    finished_at: datetime
    model: str  # the public model name the caller asked for
    status: int
    operation: Operation = "chat"
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    key_id: str | None = None
    team: str | None = None
    end_user: str | None = None  # OpenAI ``user`` field or the end-user header
    tags: dict[str, Any] = field(default_factory=dict)
    provider: str | None = None
    deployment: str | None = None
    upstream_model: str | None = None  # what the upstream said it ran
    region: str | None = None
    attempts: int = 0
    fallback_used: bool = False
    error_type: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: Decimal | None = None
    usage_estimated: bool = False
    stream: bool = False
    surface: Surface = "openai"
    usage_basis: UsageBasis = "reported"
    cost_note: str | None = None
    price_family: str | None = None
    price_model: str | None = None
    price_source: str | None = None
    price_effective: str | None = None
    kind: RecordKind = "call"
    adjusts: str | None = None
    adjusted_cost_usd: Decimal | None = None
    # Answered from the response cache (cost 0). ``saved_usd``: what the answer would otherwise
    # have cost minus what it cost -- for a hit, what the answer cost when it was produced; for
    # a batch line, its cost at live prices minus its batch cost (None: neither, or unknown).
    cache_hit: bool = False
    saved_usd: Decimal | None = None
    # The prompt and the answer, kept only for keys (or teams) with ``log_content: true``.
    content: dict[str, Any] | None = None
    # Every upstream attempt, in order; stored in ``spend_attempts``, not a column.
    attempt_log: tuple[AttemptEntry, ...] = ()

    @property
    def is_error(self) -> bool:
        return self.status >= ERROR_STATUS

    @property
    def is_adjustment(self) -> bool:
        return self.kind == "adjustment"

    @property
    def day(self) -> date:
        """The UTC day the request started on (the roll-up's day)."""
        return as_utc(self.started_at).date()


class TokenCounts(NamedTuple):
    prompt: int
    cached: int  # part of prompt served from the provider's cache
    completion: int
    reasoning: int  # part of completion spent reasoning


def token_counts(usage: Mapping[str, Any] | None) -> TokenCounts:
    """The four token counts of an OpenAI-shaped ``usage`` object (missing parts are 0)."""
    usage = usage or {}
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return TokenCounts(
        _count(usage.get("prompt_tokens")),
        _count(prompt_details.get("cached_tokens")),
        _count(usage.get("completion_tokens")),
        _count(completion_details.get("reasoning_tokens")),
    )


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
