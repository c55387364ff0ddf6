"""The pipeline: a validated request → who is calling → admission → a Plan → attempts through
adapters and transport → cost → ledger → limits settled → the answer.

``Engine`` is what the HTTP server and the in-process library both call; neither re-implements
any step. Each public operation reads like the path in docs/architecture.md, one stage a line;
upstream answers stay plain dicts in the OpenAI shape on this path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from gateway.accounting import unreadable_usage_note
from gateway.auth import Authenticator
from gateway.cache import (
    CachedAnswer,
    CacheTicket,
    Directive,
    ResponseCache,
    StreamCapture,
    Tenant,
    replay_chunks,
)
from gateway.call import Call, Observer
from gateway.calls import Calls
from gateway.config import GatewayConfig
from gateway.costs import Cost, served_tier, usage_readable
from gateway.costs.reasoning import is_reasoning_model
from gateway.errors import GatewayError, PermissionDeniedError
from gateway.governance.residency import allowed, narrow
from gateway.keys.store import KeyStore
from gateway.ledger.ledger import Ledger
from gateway.limits import BudgetShortfall, Limits, limits_for, period_start
from gateway.resilience import read_answer, run_plan, within
from gateway.routing import HealthBoard, Plan, Router, Ticket
from gateway.routing.affinity import affinity_key
from gateway.setup import Setup
from gateway.streams import (
    ChunkStream,
    ReplayStream,
    StreamOpener,
    unencodable,
    upstream_answer,
    upstream_request,
)
from gateway.transport import AiohttpTransport
from gateway.types import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    FimCompletionRequest,
    TextCompletionRequest,
    embeddings_encoded,
)
from gateway.wire import JSON, Transport
from providers.base import Deployment

if TYPE_CHECKING:
    from gateway.accounting import Accountant
    from gateway.routing.shared_circuits import RedisCircuits

log = logging.getLogger("gateway.engine")


class Engine:
    """One gateway: its setup (config, routing, prices), keys, limits, ledger and transport."""

    def __init__(self, config: GatewayConfig, *, transport: Transport | None = None) -> None:
        # The redis client (~6 MiB of modules) is imported only when Redis is configured.
        self.shared_circuits: RedisCircuits | None = None
        if config.redis is not None:
            from gateway.routing.shared_circuits import RedisCircuits

            self.shared_circuits = RedisCircuits.from_url(
                config.redis.url, prefix=config.redis.key_prefix
            )
        self.health = HealthBoard(config.routing.circuit, shared=self.shared_circuits)
        self.ledger = Ledger(config.ledger) if config.ledger.enabled else None
        self.setup = Setup.build(config, self.health, self.ledger)
        if self.shared_circuits is not None:
            self.shared_circuits.track(self.setup.deployment_ids())
        self.transport: Transport = transport or AiohttpTransport()
        # Virtual keys live in the ledger's database and need a master key to manage them.
        self.keys = KeyStore(self.ledger.engine) if self.ledger is not None else None
        master = config.auth.master_key
        self.auth = Authenticator(
            master.get_secret_value() if master else None,
            self.keys if master else None,
            config.auth.key_cache_seconds,
            config.auth.failed_lookups_per_minute,
        )
        self.limits: Limits = limits_for(config, seed=self._seed_spend)
        self.calls = Calls(self._ended)
        # The response cache (docs/caching.md); None when no model uses it, which is all the
        # request path then checks.
        self.cache = ResponseCache.build(config) if cache_wanted(config) else None
        self.observers: list[Observer] = []
        self._started = False

    # The setup in force; a request reads it once and keeps it to its end.
    @property
    def config(self) -> GatewayConfig:
        return self.setup.config

    @property
    def router(self) -> Router:
        return self.setup.router

    @property
    def accountant(self) -> Accountant:
        return self.setup.accountant

    # -- the pipeline ----------------------------------------------------------------------
    async def chat(self, request: CompletionRequest, call: Call) -> JSON:
        """A complete (non-streaming) chat completion; a FIM request is answered the same way."""
        setup = self._begin(request, call)
        self._redact(setup, request, call)
        if self.cache is not None and call.pii is None:  # a redacted prompt is never cached
            return await self.calls.run(call, self._chat_cached(setup, request, call))
        return await self.calls.run(call, self._chat(setup, request, call))

    async def _chat_cached(self, setup: Setup, request: CompletionRequest, call: Call) -> JSON:
        plan = self._plan(setup, request, call)  # the caller may use the model: or no answer
        hit = await self._look_up(request, call)
        if hit is not None:
            return self._answer_from_cache(call, hit)
        return await self._chat(setup, request, call, plan)

    async def _chat(
        self, setup: Setup, request: CompletionRequest, call: Call, plan: Plan | None = None
    ) -> JSON:
        result = await self._complete(setup, request, call, plan)
        call.upstream_model = result.get("model")
        call.service_tier = served_tier(result, request)
        usage = result.get("usage")
        if not usage_readable(usage):  # some servers send none, or in another shape
            call.cost_note = unreadable_usage_note(usage)
            texts = [
                str((c.get("message") or {}).get("content") or "")
                for c in result.get("choices") or ()
            ]
            usage = await setup.accountant.estimate(
                call.served_by, call.upstream_model, request.prompt_messages(), texts, request.tools
            )
        call.usage = usage
        call.cost = setup.accountant.cost(
            call.served_by, call.upstream_model, usage, service_tier=call.service_tier
        )
        await setup.accountant.bill_unanswered(call)
        self._correct_quota(call, request.estimated_tokens())
        if call.keeps_content:
            call.content = {"messages": request.prompt_messages(), "choices": result.get("choices")}
        if call.cache is not None and call.cache.writes:
            call.cache.answer = result  # kept once the call has ended well
        self.calls.end(call)
        if call.pii is not None:
            from gateway.governance.pii import restore_choices

            return restore_choices(result, call.pii)
        return result

    async def _complete(
        self, setup: Setup, request: CompletionRequest, call: Call, plan: Plan | None = None
    ) -> JSON:
        plan = plan or self._plan(setup, request, call)
        deadline = plan.policy.deadline(request.gateway_timeout)
        await self._admit(setup, call, plan, request.estimated_tokens(), request)

        async def attempt(dep: Deployment, ticket: Ticket) -> JSON:
            native = request.native_request(dep)  # e.g. a Responses API request, as it came
            upstream = native or upstream_request(
                request, request.upstream_body(), dep, stream=False
            )
            call.dropped_params = upstream.dropped_params
            timeouts = plan.policy.upstream_timeouts(dep, stream=False)
            raw = await read_answer(self.transport, dep, upstream, timeouts, call.tries)
            if native is not None:
                return request.native_answer(raw, dep)
            return upstream_answer(request, raw, dep, upstream)

        return await within(
            deadline,
            run_plan(
                plan,
                attempt,
                call.tries,
                self.health,
                deadline=deadline,
                tokens=request.estimated_tokens(),
                fallback_on_content_filter=setup.config.routing.fallback_on_content_filter,
            ),
        )

    async def chat_stream(self, request: CompletionRequest, call: Call) -> ChunkStream:
        """Open a streaming chat (or FIM) completion. Returns once an upstream has produced its
        first output, so a failure before anything reached the caller is retried or failed over."""
        setup = self._begin(request, call)
        self._redact(setup, request, call)
        call.stream = True
        call.service_tier = served_tier({}, request)
        opener = StreamOpener(self.transport, self.health, setup.config.routing, request, call)

        async def open_first() -> ChunkStream:
            plan = self._plan(setup, request, call)
            if self.cache is not None and call.pii is None:  # a redacted prompt: never cached
                hit = await self._look_up(request, call)
                if hit is not None:
                    self._answer_from_cache(call, hit)
                    include_usage = request.wants_stream_usage
                    return ReplayStream(replay_chunks(hit.response, include_usage=include_usage))
            deadline = plan.policy.deadline(request.gateway_timeout)
            estimate = request.estimated_tokens()
            await self._admit(setup, call, plan, estimate, request)
            opened = await opener.open(
                plan, plan.attempts, request.upstream_body, deadline, estimate
            )
            stream = ChunkStream(opener, plan, deadline, opened, setup.accountant, self.calls)
            if self.cache is not None and call.cache is not None and call.cache.writes:
                stream.capture = StreamCapture(self.cache.settings.max_entry_bytes)
            if call.pii is not None:
                from gateway.governance.pii import StreamRestorer

                stream.restorer = StreamRestorer(call.pii)
            return stream

        return await self.calls.run(call, open_first())

    async def embeddings(self, request: EmbeddingRequest, call: Call) -> JSON:
        """Embeddings for one or more inputs."""
        setup = self._begin(request, call)
        if self.cache is not None:
            return await self.calls.run(call, self._embeddings_cached(setup, request, call))
        return await self.calls.run(call, self._embeddings(setup, request, call))

    async def _embeddings_cached(self, setup: Setup, request: EmbeddingRequest, call: Call) -> JSON:
        plan = self._plan(setup, request, call)
        hit = await self._look_up(request, call)
        if hit is not None:
            return self._answer_from_cache(call, hit)
        return await self._embeddings(setup, request, call, plan)

    async def _embeddings(
        self, setup: Setup, request: EmbeddingRequest, call: Call, plan: Plan | None = None
    ) -> JSON:
        result = embeddings_encoded(
            await self._embed(setup, request, call, plan), request.encoding_format
        )
        call.upstream_model = result.get("model")
        call.usage = result.get("usage")
        if not usage_readable(call.usage, embedding=True):
            call.cost_note = unreadable_usage_note(call.usage)
            call.usage = await setup.accountant.estimate_embedding(
                call.served_by, call.upstream_model, request.input
            )
        call.cost = setup.accountant.cost(
            call.served_by, call.upstream_model, call.usage, embedding=True
        )
        if call.keeps_content:
            call.content = {"input": request.input}
        if call.cache is not None and call.cache.writes:
            call.cache.answer = result
        self.calls.end(call)
        return result

    async def _embed(
        self, setup: Setup, request: EmbeddingRequest, call: Call, plan: Plan | None = None
    ) -> JSON:
        plan = plan or self._plan(setup, request, call)
        deadline = plan.policy.deadline(request.gateway_timeout)
        await self._admit(setup, call, plan, len(str(request.input).encode()), None)

        async def attempt(dep: Deployment, ticket: Ticket) -> JSON:
            try:
                upstream = dep.provider.embeddings_request(request.upstream_body(), dep)
            except TypeError as exc:  # orjson's encode error
                raise unencodable(exc) from exc
            call.dropped_params = upstream.dropped_params
            timeouts = plan.policy.upstream_timeouts(dep, stream=False)
            raw = await read_answer(self.transport, dep, upstream, timeouts, call.tries)
            return dep.provider.embeddings_response(raw, dep)

        return await within(
            deadline, run_plan(plan, attempt, call.tries, self.health, deadline=deadline)
        )

    def models(self) -> list[JSON]:
        """The public models, in the OpenAI ``/v1/models`` shape."""
        return [
            {"id": name, "object": "model", "created": 0, "owned_by": "llm-gateway"}
            for name in self.router.models()
        ]

    # -- the stages ------------------------------------------------------------------------
    @staticmethod
    def _redact(setup: Setup, request: CompletionRequest, call: Call) -> None:
        """Replace personal data in a chat prompt with placeholders before it leaves, when the
        caller's key or team (metadata ``redact_pii: true``) or the model asks for it."""
        principal = call.principal
        wanted = principal is not None and principal.tags.get("redact_pii") in (True, "true")
        if not wanted:
            config = setup.router.configs.get(request.model)
            wanted = config is not None and config.redact_pii
        if not wanted or not isinstance(request, ChatCompletionRequest):
            return  # FIM and legacy completions carry a prompt, not messages
        from gateway.governance.pii import Vault, name_finder, redact_messages  # when used

        detector = setup.config.pii.names_detector
        vault = Vault(names=name_finder(detector) if detector else None)
        redact_messages(request.messages, vault)
        if vault:
            call.pii = vault
            request.drop_native()  # a native Responses body would carry the data unredacted
            # Prompts of different people redact alike: an answer kept for one would give the
            # next one the first one's data.
            if cache_wanted(setup.config):
                call.cache = CacheTicket("bypass", reason="personal data was redacted")

    def _begin(self, request: CompletionRequest | EmbeddingRequest, call: Call) -> Setup:
        call.model = request.model
        call.operation = request.operation
        call.end_user = call.end_user or request.user
        return self.setup

    def _plan(
        self, setup: Setup, request: CompletionRequest | EmbeddingRequest, call: Call
    ) -> Plan:
        """The Plan, within what the caller may use: its models (fallbacks included) and its
        regions, narrowed further by the request's own ``x-gateway-regions``."""
        router = setup.router
        regions = narrow(call.regions, call.history_policy)
        may_use = None
        if call.principal is not None:
            may_use, regions = call.principal.authorize(
                request.model,
                regions,
                router.deployments,  # (its names, if refused)
            )
        call.regions = regions  # the residency exporters of this call's facts keep to
        plan = router.plan(
            request.model,
            request.fallbacks,
            request.needs(),
            regions,
            may_use,
            affinity=lambda: affinity_key(request),
        )
        call.regions = plan.regions  # the model's own regions too
        check_history_regions(call)
        return plan

    # -- the response cache ----------------------------------------------------------------
    async def _look_up(
        self, request: CompletionRequest | EmbeddingRequest, call: Call
    ) -> CachedAnswer | None:
        """The request's cache ticket (in ``call.cache``) and, if it may read, the answer
        kept for it. A store that cannot be read (Redis away) is a miss, never a failure."""
        cache = self.cache
        assert cache is not None
        tenant = Tenant(call.key_id, call.team, call.end_user)
        directive = Directive.parse(call.cache_directive)
        if isinstance(request, EmbeddingRequest):
            ticket = cache.embeddings_ticket(request, tenant, directive)
        elif isinstance(request, FimCompletionRequest):
            ticket = cache.fim_ticket(request, tenant, directive)
        elif isinstance(request, TextCompletionRequest):
            ticket = cache.completions_ticket(request, tenant, directive)
        else:
            ticket = cache.chat_ticket(request, tenant, directive)
        call.cache = ticket
        if not ticket.reads:
            return None
        try:
            hit = await cache.get(ticket)
        except Exception as exc:
            log.warning("response cache unreadable, answering afresh: %s", type(exc).__name__)
            return None
        if hit is None:
            return None
        if not allowed(hit.region, call.regions):
            # Kept from a deployment outside the caller's regions: answered afresh in them
            # (and that answer kept in its place), as if nothing had been kept.
            return None
        ticket.status = "hit"
        ticket.writes = False
        ticket.region = hit.region
        return hit

    def _answer_from_cache(self, call: Call, hit: CachedAnswer) -> JSON:
        """End a call answered from the cache: it cost nothing, and saved what the answer
        cost when it was produced."""
        call.cost = Cost(total=Decimal(0))
        call.saved_usd = hit.cost
        call.upstream_model = hit.response.get("model")
        self.calls.end(call)
        return hit.response

    def _keep(self, call: Call) -> None:
        """Keep the answer of a call that ended well, with what it cost."""
        cache, ticket = self.cache, call.cache
        if cache is None or ticket is None:
            return
        cost = call.cost.total if call.cost is not None else None
        served = call.served_by
        try:
            work = cache.keep(ticket, cost, call.usage, served.region if served else None)
        except Exception:
            log.exception("request %s: its answer could not be cached", call.request_id)
            return
        if work is not None:
            self.calls.spawn(self._keep_later(call.request_id, work))

    async def _keep_later(self, request_id: str, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except Exception as exc:  # the answer went out; only a later hit is lost
            log.warning("request %s: its answer was not cached (%s)", request_id, exc)

    async def _admit(
        self,
        setup: Setup,
        call: Call,
        plan: Plan,
        tokens: int,
        request: CompletionRequest | None,  # None: embeddings of ``tokens`` bytes at most
    ) -> None:
        """Reserve rate-limit room and, at the dearest price of the Plan, budget for the
        caller's key and team, or refuse."""
        deployments = plan.attempts + plan.context_attempts
        call.request = request
        call.candidates = {dep.id: dep for dep in deployments}
        principal = call.principal
        if principal is None or not principal.limits:
            return
        accountant = setup.accountant
        limits = setup.config.limits
        if any(s.budget_usd is not None for s in principal.limits):
            unpriced = accountant.unpriced(deployments, request)
            if unpriced:
                raise accountant.unpriced_refusal(plan.model, unpriced)
        capped = 0
        while True:
            worst = accountant.worst_case_cost(
                deployments,
                request,
                default_max_output=limits.default_max_output_tokens,
                embedding_tokens=tokens if request is None else 0,
            )
            try:
                call.admission = await self.limits.admit(
                    call.request_id, principal.limits, tokens=tokens, cost=worst
                )
                return
            except BudgetShortfall as short:
                # What the remainder pays for: a smaller output cap, if a minimal answer fits
                # (once per scope: the key's budget, then its team's).
                if request is None or capped >= len(principal.limits):
                    raise
                current = accountant.output_cap(
                    deployments, request, limits.default_max_output_tokens
                )
                cap = accountant.budget_output_cap(deployments, request, short.remaining)
                if cap is not None and cap < limits.min_output_tokens:
                    short.message += (
                        f" What is left pays for {max(cap, 0)} output tokens, fewer than a "
                        f"minimal answer (limits.min_output_tokens: {limits.min_output_tokens})."
                    )
                if cap is None or cap < limits.min_output_tokens or cap >= current:
                    raise
                cap_output(request, cap, deployments)
                call.capped_max_tokens = cap
                tokens = request.estimated_tokens()
                capped += 1

    def _correct_quota(self, call: Call, estimate: int) -> None:
        total = (call.usage or {}).get("total_tokens")
        if call.deployment and isinstance(total, int):
            self.health.add_tokens(call.deployment, total - estimate)

    def _ended(self, call: Call, error: GatewayError | None) -> None:
        """A call has ended (``Calls.end``, once): record it, settle its limits, tell the
        observers. Attempts that got no answer are billed first (an offline estimate)."""
        if call.cache is not None and call.cache.answer is not None and error is None:
            self._keep(call)
        if self.accountant.unanswered(call):
            self.calls.spawn(self._book_unanswered(call, error))
        else:
            self._book(call, error)
        self.observe(call, error)

    def _book(self, call: Call, error: GatewayError | None) -> None:
        try:
            self.accountant.record(call, error)
        except Exception:  # its limits are still settled and its observers told
            log.exception("request %s could not be recorded", call.request_id)
        if call.admission is not None and not call.admission.done:
            self.calls.spawn(self._settle(call, error))

    async def _book_unanswered(self, call: Call, error: GatewayError | None) -> None:
        try:
            await self.accountant.bill_unanswered(call)
        except Exception:  # the record is written all the same, with what is known
            log.exception(
                "request %s: its unanswered attempts could not be billed", call.request_id
            )
        self._book(call, error)

    async def _settle(self, call: Call, error: GatewayError | None) -> None:
        admission = call.admission
        assert admission is not None
        usage = call.usage if isinstance(call.usage, dict) else {}  # unreadable: none
        tokens = usage.get("total_tokens")
        if error is not None and call.cost is None:
            await self.limits.release(admission)
        else:
            await self.limits.settle(
                admission,
                tokens=tokens if isinstance(tokens, int) else admission.tokens,
                cost=None if call.cost is None else call.cost.total,
            )

    def observe(self, call: Call, error: GatewayError | None = None) -> None:
        """Tell the observers that a call ended (once; the server also tells them of requests
        refused before they reached the engine). An observer's failure never fails a call."""
        if call.observed:
            return
        call.observed = True
        for observer in self.observers:
            try:
                observer(call, error)
            except Exception:
                log.exception("observer %r failed on request %s", observer, call.request_id)

    async def _seed_spend(self, scope: str, period: str) -> Decimal:
        """A budget's starting point: what the ledger says the scope spent this period."""
        if self.ledger is None:
            return Decimal(0)
        kind, _, ident = scope.partition(":")
        return await self.ledger.scope_spend(
            "key" if kind == "key" else "team", ident, period_start(period)
        )

    # -- life ------------------------------------------------------------------------------
    def swap(self, setup: Setup) -> None:
        """Put a new setup in force (a reload): requests from now on use it, those running
        keep theirs. A deployment whose id is unchanged keeps its circuit and counts."""
        old = self.setup.deployment_ids()
        new = setup.deployment_ids()
        self.setup = setup
        circuit = setup.config.routing.circuit
        self.health.circuit = circuit
        self.health.shared = self.shared_circuits if circuit.enabled else None
        self.health.forget(old - new)
        if self.shared_circuits is not None:
            self.shared_circuits.track(new)
        self._swap_cache(setup.config)

    def _swap_cache(self, config: GatewayConfig) -> None:
        """The response cache a reload asks for: the same store while its backend stays."""
        cache = self.cache
        if not cache_wanted(config):
            self.cache = None
        elif cache is not None and cache.settings.backend == config.cache.backend:
            cache.reconfigure(config)
        else:
            self.cache = ResponseCache.build(config)
        if cache is not None and self.cache is not cache:
            try:
                asyncio.get_running_loop()
            except RuntimeError:  # a swap outside a running server: left to the collector
                return
            self.calls.spawn(cache.aclose())

    async def start(self) -> None:
        """Bring the ledger's schema up to date and start its writer (idempotent)."""
        if self._started:
            return
        self._started = True
        if self.ledger is not None:
            await self.ledger.start()

    async def aclose(self) -> None:
        """Let calls still ending account for themselves (within the ledger's shutdown time),
        finish bookkeeping, flush the ledger, close pooled upstream connections."""
        await self.calls.drain(self.config.ledger.shutdown_timeout)
        if self.ledger is not None:
            await self.ledger.aclose()
        await self.limits.aclose()
        if self.cache is not None:
            await self.cache.aclose()
        await self.transport.close()
        if self.shared_circuits is not None:
            await self.shared_circuits.aclose()
        for provider in self.router.providers.values():
            if provider.transport is not None:
                await provider.transport.close()


def check_history_regions(call: Call) -> None:
    """403 ``region_not_allowed`` when a continued conversation's earlier turns were answered
    in a region this call may not use: their data would otherwise come under a policy that
    does not allow where it was."""
    outside = sorted(
        r or "a deployment without region"
        for r in call.history_regions
        if not allowed(r, call.regions)
    )
    if outside:
        raise PermissionDeniedError(
            "this conversation's earlier turns were answered in regions this request may not "
            f"use ({', '.join(outside)}; it may use "
            f"{', '.join(sorted(call.regions or ())) or 'none'})",
            param="previous_response_id",
            code="region_not_allowed",
        )


def cache_wanted(config: GatewayConfig) -> bool:
    """Whether any model uses the response cache."""
    if config.cache.enabled:
        return True
    return any(m.cache is not None and m.cache.enabled for m in config.models.values())


def cap_output(request: CompletionRequest, cap: int, deployments: list[Deployment]) -> None:
    """Lower ``request``'s output cap to ``cap``, in the field the caller used; else
    ``max_completion_tokens`` for reasoning models (which refuse ``max_tokens``) and
    ``max_tokens`` for others (every OpenAI-compatible server knows it)."""
    if isinstance(request, FimCompletionRequest | TextCompletionRequest):
        request.max_tokens = cap
    elif request.max_completion_tokens is None and request.max_tokens is None:
        if any(is_reasoning_model(d.base_model, d.model) for d in deployments):
            request.max_completion_tokens = cap
        else:
            request.max_tokens = cap
    else:
        if request.max_completion_tokens is not None:
            request.max_completion_tokens = cap
        if request.max_tokens is not None:
            request.max_tokens = cap


__all__ = ["Call", "ChunkStream", "Engine"]
