"""``Call``: the facts of one call as it runs, and the observers told when it ends.

The server or the library makes a ``Call`` when a request arrives; every stage of the engine
writes what it learns into it (who is calling, the Plan's attempts, usage and cost). Its
``headers()`` become the answer's ``x-gateway-*`` headers, its ``facts()`` the library's
``GatewayFacts``, and it becomes one ledger record when it ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from gateway.auth import Principal
from gateway.cache import CacheTicket
from gateway.costs import Cost
from gateway.costs.reasoning import is_reasoning_model
from gateway.errors import GatewayError
from gateway.facts import GatewayFacts
from gateway.ledger.records import Operation, Surface, UsageBasis
from gateway.limits import Admission
from gateway.resilience import AttemptRecord, Attempts
from gateway.types import CompletionRequest
from gateway.wire import JSON
from providers.base import Deployment


@dataclass(slots=True)
class Call:
    """Gateway facts about one call, filled in as it runs (they become x-gateway-* headers)."""

    request_id: str
    started: float = field(default_factory=time.perf_counter)
    client_request_id: str | None = None  # the caller's own id, echoed back
    model: str | None = None
    tries: Attempts = field(default_factory=Attempts)  # the upstream attempts (resilience)
    continued: bool = False  # a cut stream was finished by another deployment
    usage: JSON | None = None
    dropped_params: tuple[str, ...] = ()
    malformed_events: int = 0
    operation: Operation = "chat"
    surface: Surface = "openai"  # the API the caller spoke (gateway.ledger.records.Surface)
    stream: bool = False
    upstream_model: str | None = None  # the model the upstream said answered
    service_tier: str | None = None  # the tier that served it (the response's, else asked)
    ttft_seconds: float | None = None
    cost: Cost | None = None
    key_id: str | None = None
    team: str | None = None
    end_user: str | None = None
    tags: dict[str, Any] = field(default_factory=dict)
    principal: Principal | None = None
    regions: frozenset[str] | None = None  # narrowed by the request (x-gateway-regions)
    # A continued conversation (Responses API ``previous_response_id``): the regions its
    # earlier turns were answered in (None: a deployment without region), each of which the
    # caller's regions must allow, and the regions those turns were restricted to, which
    # keep restricting the conversation.
    history_regions: frozenset[str | None] = frozenset()
    history_policy: frozenset[str] | None = None
    admission: Admission | None = None
    # The prompt and the answer, kept only for callers whose key or team has the metadata
    # ``log_content: true`` (for the access log); never otherwise.
    content: JSON | None = None
    # Billing: why the cost is estimated (or unknown), the output cap a budget imposed, the
    # request and the deployments of its Plan (to bill attempts that got no answer).
    cost_note: str | None = None
    capped_max_tokens: int | None = None
    request: CompletionRequest | None = None
    candidates: dict[str, Deployment] = field(default_factory=dict)
    unanswered_billed: bool = False
    # What a cancellation of this call means, as the face that runs it knows: the caller
    # left (499) or the server is stopping (503). None: the caller cancelled it (499).
    cancelled_by: Callable[[], GatewayError] | None = None
    # PII redaction: the placeholders of this call's prompt and what they stand for
    # (a gateway.governance.pii.Vault), None when its prompt was not redacted.
    pii: Any = None
    observed: bool = False  # the observers have been told the call ended
    ended: bool = False  # recorded and settled (``gateway.calls``): it happens once
    # The response cache's part (None: the cache is off): the ticket of the request, and on
    # a hit what the call that produced the answer cost.
    cache: CacheTicket | None = None
    cache_directive: str | None = None  # the caller's x-gateway-cache header
    saved_usd: Decimal | None = None

    # -- what the attempts say -----------------------------------------------------------
    @property
    def attempts(self) -> int:
        return self.tries.count

    @property
    def attempt_log(self) -> list[AttemptRecord]:
        return self.tries.log

    @property
    def provider(self) -> str | None:
        """The provider of the last attempt (the one that answered, if any did)."""
        return self.tries.provider

    @property
    def deployment(self) -> str | None:
        return self.tries.deployment

    @property
    def fallback_used(self) -> bool:
        return self.tries.fallback_used

    @property
    def served_by(self) -> Deployment | None:
        """The deployment whose answer the caller got."""
        return self.tries.served_by

    @served_by.setter
    def served_by(self, deployment: Deployment | None) -> None:
        self.tries.served_by = deployment

    @property
    def upstream_seconds(self) -> float:
        return self.tries.upstream_seconds

    @property
    def usage_basis(self) -> UsageBasis:
        """Where the billed token counts come from: reported, estimated, or estimated for a
        reasoning model (a lower bound: its hidden reasoning cannot be counted offline)."""
        if self.cost is None or not self.cost.estimated:
            return "reported"
        dep = self.served_by
        names: tuple[str | None, ...] = (self.upstream_model, self.model)
        if dep is not None:
            names += (dep.base_model, dep.model)
        return "lower_bound" if is_reasoning_model(*names) else "estimated"

    # -- the caller ----------------------------------------------------------------------
    @property
    def keeps_content(self) -> bool:
        """Whether the caller's key (or team) asked for its prompts and answers to be logged."""
        principal = self.principal
        return principal is not None and principal.tags.get("log_content") in (True, "true")

    def tag_with(self, metadata: object) -> None:
        """Add a request's ``metadata`` (when it is a mapping) to the ledger record's tags."""
        if isinstance(metadata, dict):
            self.tags.update({str(k): v for k, v in metadata.items()})

    # -- time ----------------------------------------------------------------------------
    def elapsed_seconds(self) -> float:
        return time.perf_counter() - self.started

    def overhead_ms(self) -> float:
        """Time spent in the gateway so far, excluding time waiting on upstream."""
        elapsed = time.perf_counter() - self.started
        return max(0.0, (elapsed - self.tries.upstream_seconds) * 1000.0)

    # -- what the caller is told ---------------------------------------------------------
    def headers(self) -> dict[str, str]:
        tries = self.tries
        headers = {
            "x-request-id": self.request_id,
            "x-gateway-provider": tries.provider or "",
            "x-gateway-deployment": tries.deployment or "",
            "x-gateway-attempts": str(len(tries.log)),
            "x-gateway-fallback-used": "true" if tries.fallback_used else "false",
            "x-gateway-overhead-ms": f"{self.overhead_ms():.2f}",
        }
        region = self.region
        if region:
            headers["x-gateway-region"] = region
        if self.dropped_params:
            headers["x-gateway-dropped-params"] = ",".join(self.dropped_params)
        if self.client_request_id:
            headers["x-client-request-id"] = self.client_request_id
        if self.admission is not None:
            headers.update(self.admission.headers)
        if self.cost is not None:
            headers["x-gateway-cost"] = self.cost.usd_str()
            if self.cost.estimated:
                basis = self.usage_basis
                headers["x-gateway-usage-estimated"] = (
                    "lower_bound" if basis == "lower_bound" else "true"
                )
        if self.capped_max_tokens is not None:
            headers["x-gateway-budget-capped-max-tokens"] = str(self.capped_max_tokens)
        if self.cache is not None:
            headers["x-gateway-cache"] = self.cache.status
        return headers

    @property
    def region(self) -> str | None:
        """The region of the deployment that answered (on a cache hit: that produced the
        kept answer)."""
        served = self.tries.served_by
        if served is not None:
            return served.region
        return self.cache.region if self.cache is not None else None

    @property
    def cache_hit(self) -> bool:
        return self.cache is not None and self.cache.status == "hit"

    def facts(self) -> GatewayFacts:
        """The facts of the call as they stand now, as the library hands them out."""
        cost = self.cost
        return GatewayFacts(
            request_id=self.request_id,
            provider=self.provider,
            deployment=self.deployment,
            attempts=self.attempts,
            fallback_used=self.fallback_used,
            cost=cost.total if cost is not None else None,
            usage_estimated=bool(cost is not None and cost.estimated),
            overhead_ms=round(self.overhead_ms(), 2),
            dropped_params=self.dropped_params,
            cache=self.cache.status if self.cache is not None else None,
            region=self.region,
        )


# The name this type had before it moved here.
CallInfo = Call

# Told once when a call ends, with its facts and its error (None: it succeeded). Observers
# (metrics, access log, traces) run on the request path: they must be quick and not raise.
Observer = Callable[[Call, GatewayError | None], None]
