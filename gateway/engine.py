"""The pipeline: validated request → Plan → attempts through adapters and transport → answer.

``Engine`` is what the HTTP server and the in-process library both call; neither re-implements
any step. Upstream responses stay plain dicts in the OpenAI shape on this path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.accounting import Accountant
from gateway.auth import Authenticator, Principal
from gateway.config import GatewayConfig
from gateway.costs import Cost
from gateway.errors import ClientDisconnectedError, GatewayError, UpstreamTimeoutError
from gateway.health import HealthBoard, Ticket
from gateway.keys import KeyStore
from gateway.ledger import Ledger, Operation, Surface
from gateway.limits import Admission, Limits, MemoryLimits, period_start
from gateway.resilience import AttemptRecord, run_plan
from gateway.routing import Plan, Router
from gateway.stream_guard import UpstreamStream, has_output
from gateway.transport import (
    AiohttpTransport,
    Timeouts,
    Transport,
    UpstreamRequest,
    UpstreamResponse,
)
from gateway.types import CompletionRequest, EmbeddingRequest
from providers.base import Deployment, Provider

if TYPE_CHECKING:
    from gateway.shared_circuits import RedisCircuits

JSON = dict[str, Any]
T = TypeVar("T")
log = logging.getLogger("gateway.engine")


@dataclass(slots=True)
class CallInfo:
    """Gateway facts about one call, filled in as it runs (they become x-gateway-* headers)."""

    request_id: str
    started: float = field(default_factory=time.perf_counter)
    client_request_id: str | None = None  # the caller's own id, echoed back
    model: str | None = None
    provider: str | None = None
    deployment: str | None = None
    attempts: int = 0
    fallback_used: bool = False
    continued: bool = False  # a cut stream was finished by another deployment
    upstream_seconds: float = 0.0
    usage: JSON | None = None
    dropped_params: tuple[str, ...] = ()
    malformed_events: int = 0
    attempt_log: list[AttemptRecord] = field(default_factory=list)
    operation: Operation = "chat"
    surface: Surface = "openai"  # the API the caller spoke (gateway.ledger.Surface)
    stream: bool = False
    served_by: Deployment | None = None  # the deployment whose answer the caller got
    upstream_model: str | None = None  # the model the upstream said answered
    ttft_seconds: float | None = None
    cost: Cost | None = None
    key_id: str | None = None
    team: str | None = None
    end_user: str | None = None
    tags: dict[str, Any] = field(default_factory=dict)
    principal: Principal | None = None
    regions: frozenset[str] | None = None  # narrowed by the request (x-gateway-regions)
    admission: Admission | None = None
    # The prompt and the answer, kept only for callers whose key or team has the metadata
    # ``log_content: true`` (for the access log); never otherwise.
    content: JSON | None = None
    observed: bool = False  # the observers have been told the call ended

    @property
    def keeps_content(self) -> bool:
        """Whether the caller's key (or team) asked for its prompts and answers to be logged."""
        principal = self.principal
        return principal is not None and principal.tags.get("log_content") in (True, "true")

    def tag_with(self, metadata: object) -> None:
        """Add a request's ``metadata`` (when it is a mapping) to the ledger record's tags."""
        if isinstance(metadata, dict):
            self.tags.update({str(k): v for k, v in metadata.items()})

    def elapsed_seconds(self) -> float:
        return time.perf_counter() - self.started

    def overhead_ms(self) -> float:
        """Time spent in the gateway so far, excluding time waiting on upstream."""
        elapsed = time.perf_counter() - self.started
        return max(0.0, (elapsed - self.upstream_seconds) * 1000.0)

    def headers(self) -> dict[str, str]:
        headers = {
            "x-request-id": self.request_id,
            "x-gateway-provider": self.provider or "",
            "x-gateway-deployment": self.deployment or "",
            "x-gateway-attempts": str(self.attempts),
            "x-gateway-fallback-used": "true" if self.fallback_used else "false",
            "x-gateway-overhead-ms": f"{self.overhead_ms():.2f}",
        }
        if self.dropped_params:
            headers["x-gateway-dropped-params"] = ",".join(self.dropped_params)
        if self.client_request_id:
            headers["x-client-request-id"] = self.client_request_id
        if self.admission is not None:
            headers.update(self.admission.headers)
        if self.cost is not None:
            headers["x-gateway-cost"] = self.cost.usd_str()
            if self.cost.estimated:
                headers["x-gateway-usage-estimated"] = "true"
        return headers


# Told once when a call ends, with its facts and its error (None: it succeeded). Observers
# (metrics, access log, traces) run on the request path: they must be quick and not raise.
Observer = Callable[[CallInfo, GatewayError | None], None]


class Engine:
    """One gateway: routing, attempts, adapters and transport, built from a GatewayConfig."""

    def __init__(self, config: GatewayConfig, *, transport: Transport | None = None) -> None:
        self.config = config
        # The redis client (~6 MiB of modules) is imported only when Redis is configured.
        self.shared_circuits: RedisCircuits | None = None
        if config.redis is not None:
            from gateway.shared_circuits import RedisCircuits

            self.shared_circuits = RedisCircuits.from_url(
                config.redis.url, prefix=config.redis.key_prefix
            )
        self.health = HealthBoard(config.routing.circuit, shared=self.shared_circuits)
        self.router = Router(config, health=self.health, price_of=self._list_price)
        if self.shared_circuits is not None:
            self.shared_circuits.track(
                d.id for deps in self.router.deployments.values() for d in deps
            )
        self.transport: Transport = transport or AiohttpTransport()
        self.ledger = Ledger(config.ledger) if config.ledger.enabled else None
        self.accountant = Accountant(config, self.ledger)
        # Virtual keys live in the ledger's database and need a master key to manage them.
        self.keys = KeyStore(self.ledger.engine) if self.ledger is not None else None
        master = config.auth.master_key
        self.auth = Authenticator(
            master.get_secret_value() if master else None,
            self.keys if master else None,
            config.auth.key_cache_seconds,
        )
        self.limits: Limits = MemoryLimits(seed=self._seed_spend)
        if config.limits.backend == "redis" and config.redis is not None:
            from gateway.limits.redis import RedisLimits

            self.limits = RedisLimits.from_url(
                config.redis.url,
                prefix=config.redis.key_prefix + "limits:",
                seed=self._seed_spend,
            )
            self.limits.reservation_ttl = config.limits.reservation_ttl
        self._background: set[asyncio.Task[None]] = set()
        self._open_calls: set[str] = set()  # request ids not yet accounted for
        self._all_accounted = asyncio.Event()
        self._streams: set[ChunkStream] = set()  # streams handed out and not yet accounted
        self._started = False
        self.observers: list[Observer] = []

    # -- public operations -------------------------------------------------------------
    async def chat(self, request: CompletionRequest, info: CallInfo) -> JSON:
        """A complete (non-streaming) chat completion; a FIM request is answered the same way."""
        info.model = request.model
        info.operation = request.operation
        info.end_user = info.end_user or request.user
        result = await self._accounted(info, self._chat(request, info))
        info.upstream_model = result.get("model")
        usage = result.get("usage")
        if not usage:  # some OpenAI-compatible servers send none
            texts = [
                str((c.get("message") or {}).get("content") or "")
                for c in result.get("choices") or ()
            ]
            usage = await self.accountant.estimate(
                info.served_by,
                info.upstream_model,
                request.prompt_messages(),
                texts,
                request.tools,
            )
        info.usage = usage
        info.cost = self.accountant.cost(info.served_by, info.upstream_model, usage)
        self._settle_tokens(info, request.estimated_tokens())
        if info.keeps_content:
            info.content = {
                "messages": request.prompt_messages(),
                "choices": result.get("choices"),
            }
        self.finish(info)
        return result

    async def _chat(self, request: CompletionRequest, info: CallInfo) -> JSON:
        plan = self._plan(request, info)
        deadline = self._deadline(plan, request.gateway_timeout)
        await self._admit(
            info, plan, request.estimated_tokens(), self._worst_case_cost(plan, request)
        )

        async def attempt(dep: Deployment, ticket: Ticket) -> JSON:
            provider = dep.provider
            upstream = _upstream_request(provider, info, request.upstream_body(), dep, stream=False)
            info.dropped_params = upstream.dropped_params
            timeouts = self._timeouts(plan, dep, stream=False)
            raw = await self._exchange(provider, dep, upstream, info, timeouts)
            return provider.chat_response(raw, dep)

        return await self._within(
            deadline,
            run_plan(
                plan,
                attempt,
                info,
                self.health,
                deadline=deadline,
                tokens=request.estimated_tokens(),
                fallback_on_content_filter=self.config.routing.fallback_on_content_filter,
            ),
        )

    async def chat_stream(self, request: CompletionRequest, info: CallInfo) -> ChunkStream:
        """Open a streaming chat (or FIM) completion. Returns once an upstream has produced its
        first output, so a failure before anything reached the caller is retried or failed over."""
        info.model = request.model
        info.operation = request.operation
        info.stream = True
        info.end_user = info.end_user or request.user
        plan, deadline, opened = await self._accounted(info, self._open_first(request, info))
        return ChunkStream(self, plan, request, info, deadline, opened)

    async def embeddings(self, request: EmbeddingRequest, info: CallInfo) -> JSON:
        """Embeddings for one or more inputs."""
        info.model = request.model
        info.operation = "embeddings"
        info.end_user = info.end_user or request.user
        result = await self._accounted(info, self._embeddings(request, info))
        info.upstream_model = result.get("model")
        info.usage = result.get("usage")
        info.cost = self.accountant.cost(
            info.served_by, info.upstream_model, info.usage, embedding=True
        )
        if info.keeps_content:
            info.content = {"input": request.input}
        self.finish(info)
        return result

    async def _embeddings(self, request: EmbeddingRequest, info: CallInfo) -> JSON:
        plan = self._plan(request, info)
        deadline = self._deadline(plan, request.gateway_timeout)
        tokens = len(str(request.input).encode())
        await self._admit(info, plan, tokens, self._worst_case_cost(plan, None, tokens))

        async def attempt(dep: Deployment, ticket: Ticket) -> JSON:
            provider = dep.provider
            upstream = provider.embeddings_request(request.upstream_body(), dep)
            info.dropped_params = upstream.dropped_params
            timeouts = self._timeouts(plan, dep, stream=False)
            raw = await self._exchange(provider, dep, upstream, info, timeouts)
            return provider.embeddings_response(raw, dep)

        return await self._within(
            deadline, run_plan(plan, attempt, info, self.health, deadline=deadline)
        )

    def models(self) -> list[JSON]:
        """The public models, in the OpenAI ``/v1/models`` shape."""
        return [
            {"id": name, "object": "model", "created": 0, "owned_by": "llm-gateway"}
            for name in self.router.models()
        ]

    async def start(self) -> None:
        """Bring the ledger's schema up to date and start its writer (idempotent)."""
        if self._started:
            return
        self._started = True
        if self.ledger is not None:
            await self.ledger.start()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run bookkeeping after the answer has gone out; ``aclose`` waits for it."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def aclose(self) -> None:
        """Let calls still ending account for themselves (within the ledger's shutdown time),
        finish bookkeeping, flush the ledger, close pooled upstream connections."""
        for stream in list(self._streams):  # abandoned by their readers: bill what they got
            await stream.aclose()
        if self._open_calls:  # cancelled calls record themselves as they unwind
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.ledger.shutdown_timeout):
                    await self._all_accounted.wait()
        if self._open_calls:
            log.error("%d calls ended without a ledger record at shutdown", len(self._open_calls))
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self.ledger is not None:
            await self.ledger.aclose()
        await self.limits.aclose()
        await self.transport.close()
        if self.shared_circuits is not None:
            await self.shared_circuits.aclose()
        for provider in self.router.providers.values():
            if provider.transport is not None:
                await provider.transport.close()

    def _list_price(self, dep: Deployment) -> Decimal | None:
        """A deployment's price per 1M input + output tokens (for the ``cost`` strategy)."""
        price = self.accountant.prices.price(dep)
        if price is None or price.input is None or price.output is None:
            return None
        return price.input + price.output

    async def _open_first(
        self, request: CompletionRequest, info: CallInfo
    ) -> tuple[Plan, float, OpenedStream]:
        plan = self._plan(request, info)
        deadline = self._deadline(plan, request.gateway_timeout)
        await self._admit(
            info, plan, request.estimated_tokens(), self._worst_case_cost(plan, request)
        )
        opened = await self._open_stream(
            plan,
            plan.attempts,
            request.upstream_body,
            info,
            deadline,
            request.estimated_tokens(),
        )
        return plan, deadline, opened

    async def _accounted(self, info: CallInfo, work: Awaitable[T]) -> T:
        """Run one call's work; if it fails or is cancelled, the call is recorded as such."""
        self._opened(info)
        try:
            return await work
        except GatewayError as exc:
            self.finish(info, exc)
            raise
        except asyncio.CancelledError:
            self.finish(info, _cancelled())
            raise

    # -- admission and bookkeeping -----------------------------------------------------
    def _plan(self, request: CompletionRequest | EmbeddingRequest, info: CallInfo) -> Plan:
        """The Plan, within what the caller may use: its models (fallbacks included) and its
        regions, narrowed further by the request's own ``x-gateway-regions``."""
        principal = info.principal
        fallbacks = request.fallbacks
        regions = info.regions
        if principal is not None and not principal.is_master:
            principal.check_model(request.model, self.router.models())
            chain = (
                fallbacks
                if fallbacks is not None
                else (
                    self.router.configs[request.model].fallbacks
                    if request.model in self.router.configs
                    else []
                )
            )
            fallbacks = [m for m in chain if principal.may_use(m)]
            if principal.regions is not None:
                regions = principal.regions if regions is None else regions & principal.regions
        return self.router.plan(request.model, fallbacks, request.needs(), regions)

    async def _admit(self, info: CallInfo, plan: Plan, tokens: int, cost: Decimal) -> None:
        """Reserve rate-limit room and budget for the caller's key and team, or refuse."""
        principal = info.principal
        if principal is None or not principal.limits:
            return
        info.admission = await self.limits.admit(
            info.request_id, principal.limits, tokens=tokens, cost=cost
        )

    def _worst_case_cost(
        self, plan: Plan, request: CompletionRequest | None, embedding_tokens: int = 0
    ) -> Decimal:
        """The most this request can cost on any deployment of its Plan: an upper bound of
        its prompt plus its output cap (or the model's), at the dearest price."""
        worst = Decimal(0)
        prompt = request.prompt_token_bound() if request is not None else 0
        for dep in [*plan.attempts, *plan.context_attempts]:
            price = self.accountant.prices.price(dep)
            if price is None:
                continue  # an unpriced model cannot be budgeted: its calls count as unknown
            if request is None:
                rate = price.embedding_rate or Decimal(0)
                worst = max(worst, embedding_tokens * rate / 10**6)
                continue
            cap = (
                request.max_completion_tokens
                or request.max_tokens
                or price.max_output_tokens
                or self.config.limits.default_max_output_tokens
            )
            out = cap * (request.n or 1)
            rate_out = max(price.output or Decimal(0), price.reasoning_rate or Decimal(0))
            cost = (prompt * (price.input or Decimal(0)) + out * rate_out) / 10**6
            worst = max(worst, cost)
        return worst

    def _opened(self, info: CallInfo) -> None:
        self._open_calls.add(info.request_id)
        self._all_accounted.clear()

    def finish(self, info: CallInfo, error: GatewayError | None = None) -> None:
        """A call has ended: record it in the ledger and settle its reservation."""
        self._open_calls.discard(info.request_id)
        if not self._open_calls:
            self._all_accounted.set()
        self.accountant.record(info, error)
        if info.admission is not None and not info.admission.done:
            self.spawn(self._settle(info, error))
        self.observe(info, error)

    def observe(self, info: CallInfo, error: GatewayError | None = None) -> None:
        """Tell the observers that a call ended (once; the server also tells them of requests
        refused before they reached the engine). An observer's failure never fails a call."""
        if info.observed:
            return
        info.observed = True
        for observer in self.observers:
            try:
                observer(info, error)
            except Exception:
                log.exception("observer %r failed on request %s", observer, info.request_id)

    async def _settle(self, info: CallInfo, error: GatewayError | None) -> None:
        admission = info.admission
        assert admission is not None
        usage = info.usage or {}
        tokens = usage.get("total_tokens")
        if error is not None and info.cost is None:
            await self.limits.release(admission)
        else:
            await self.limits.settle(
                admission,
                tokens=tokens if isinstance(tokens, int) else admission.tokens,
                cost=None if info.cost is None else info.cost.total,
            )

    async def _seed_spend(self, scope: str, period: str) -> Decimal:
        """A budget's starting point: what the ledger says the scope spent this period."""
        if self.ledger is None:
            return Decimal(0)
        kind, _, ident = scope.partition(":")
        since = period_start(period)
        until = datetime.now(UTC) + timedelta(minutes=1)
        rows = await self.ledger.spend_report(
            "key" if kind == "key" else "team",
            since,
            until,
            key_id=ident if kind == "key" else None,
        )
        return sum((r.cost_usd for r in rows if r.group == ident), Decimal(0))

    # -- steps -------------------------------------------------------------------------
    def _deadline(self, plan: Plan, override: float | None) -> float:
        return time.monotonic() + (override or plan.policy.timeouts.total)

    def _timeouts(self, plan: Plan, dep: Deployment, *, stream: bool) -> Timeouts:
        """Connect, and the longest silence allowed: between chunks for a stream, before the
        (whole) answer otherwise."""
        t = plan.policy.timeouts
        own = dep.provider.timeouts
        silence = (t.idle if stream else t.first_token) or own.read
        return Timeouts(connect=t.connect or own.connect, read=silence)

    async def _within(self, deadline: float, work: Awaitable[T]) -> T:
        seconds = deadline - time.monotonic()
        try:
            async with asyncio.timeout(max(0.0, seconds)):
                return await work
        except TimeoutError as exc:
            raise GatewayError(
                "the request did not complete within its total time "
                "(routing.timeouts.total, or the request's gateway_timeout)",
                status=504,
                type="timeout_error",
                code="request_timeout",
                retryable=False,
            ) from exc

    def _settle_tokens(self, info: CallInfo, estimate: int) -> None:
        usage = info.usage or {}
        total = usage.get("total_tokens")
        if info.deployment and isinstance(total, int):
            self.health.add_tokens(info.deployment, total - estimate)

    async def _open_stream(
        self,
        plan: Plan,
        deployments: list[Deployment],
        body: Any,
        info: CallInfo,
        deadline: float,
        estimate: int,
    ) -> OpenedStream:
        """Run ``deployments`` until one stream produces output; ``body()`` builds the body."""

        async def attempt(dep: Deployment, ticket: Ticket) -> OpenedStream:
            provider = dep.provider
            upstream = _upstream_request(provider, info, body(), dep, stream=True)
            info.dropped_params = upstream.dropped_params
            response = await self._open(
                provider, dep, upstream, info, self._timeouts(plan, dep, stream=True)
            )
            stream = UpstreamStream(response, provider.chat_stream(dep), dep, deadline)
            first_token = plan.policy.timeouts.first_token or provider.timeouts.read
            started = time.perf_counter()
            try:
                async with asyncio.timeout(min(first_token, max(0.0, deadline - time.monotonic()))):
                    prelude = await stream.until_output()
            except TimeoutError:
                await stream.aclose()
                raise UpstreamTimeoutError(
                    f"no first token within {first_token:g}s (routing.timeouts.first_token)"
                ) from None
            except BaseException:
                await stream.aclose()
                raise
            finally:
                info.upstream_seconds += time.perf_counter() - started
            if info.ttft_seconds is None:
                info.ttft_seconds = info.elapsed_seconds()
            return OpenedStream(stream, prelude, ticket, time.perf_counter() - started)

        sub = Plan(plan.model, plan.policy, deployments, plan.context_attempts)
        return await self._within(
            deadline,
            run_plan(
                sub,
                attempt,
                info,
                self.health,
                deadline=deadline,
                tokens=estimate,
                fallback_on_content_filter=self.config.routing.fallback_on_content_filter,
                settle_on_success=False,
            ),
        )

    async def _open(
        self,
        provider: Provider,
        dep: Deployment,
        upstream: UpstreamRequest,
        info: CallInfo,
        timeouts: Timeouts,
    ) -> UpstreamResponse:
        """Send; return the response if its status is a success, else raise its error."""
        transport = provider.transport or self.transport
        start = time.perf_counter()
        try:
            response = await transport.send(upstream, timeouts)
            if response.status >= 400:
                raw = await response.read()
                raise provider.error(response.status, response.headers, raw, dep)
            return response
        except GatewayError as exc:
            exc.attribute(provider.name, dep.id)
            raise
        finally:
            info.upstream_seconds += time.perf_counter() - start

    async def _exchange(
        self,
        provider: Provider,
        dep: Deployment,
        upstream: UpstreamRequest,
        info: CallInfo,
        timeouts: Timeouts,
    ) -> bytes:
        """Send and read the whole successful body."""
        response = await self._open(provider, dep, upstream, info, timeouts)
        start = time.perf_counter()
        try:
            return await response.read()
        finally:
            info.upstream_seconds += time.perf_counter() - start


@dataclass(slots=True)
class OpenedStream:
    """An upstream stream that has produced output, the chunks read so far, and its ticket."""

    stream: UpstreamStream
    prelude: list[JSON]
    ticket: Ticket
    first_output_seconds: float


class ChunkStream:
    """The canonical chunks of one streaming answer, as the caller receives them.

    Usage is always recorded in ``info.usage``; the usage chunk reaches the caller only if
    they asked for it (``stream_options.include_usage``), as OpenAI does, with the call's cost
    added to it. When the upstream breaks after output has reached the caller, the answer is
    continued on a later deployment of the Plan that supports assistant prefill, if any;
    otherwise the original error is raised, so a cut answer is never presented as complete.
    However the stream ends — complete, broken, or abandoned by the caller — it is accounted
    once: what was generated is billed (estimated offline when the provider sent no usage).
    """

    def __init__(
        self,
        engine: Engine,
        plan: Plan,
        request: CompletionRequest,
        info: CallInfo,
        deadline: float,
        opened: OpenedStream,
    ) -> None:
        self._engine = engine
        self._plan = plan
        self._request = request
        self._info = info
        self._deadline = deadline
        self._current: OpenedStream | None = opened
        self._messages: list[JSON] = request.prompt_messages()
        self._generated: dict[int, str] = {}  # by choice, this attempt's text and arguments
        self._broken: list[tuple[Deployment, str | None, list[JSON], list[str]]] = []
        self._usage: JSON | None = None  # the last attempt's reported usage
        self._accounted = False
        engine._streams.add(self)

    def __aiter__(self) -> AsyncIterator[JSON]:
        return self._chunks()

    async def _chunks(self) -> AsyncGenerator[JSON, None]:
        async for batch in self.batches():
            for chunk in batch:
                yield chunk

    async def batches(self) -> AsyncGenerator[list[JSON], None]:
        """The chunks as lists, one per upstream read (never an empty one): what arrived
        together can be sent on together."""
        include_usage = self._request.wants_stream_usage
        health = self._engine.health
        info = self._info
        generated = self._generated
        text = ""  # what choice 0 has said so far, for a continuation
        other_output = False  # tool calls or other choices: cannot be continued
        stream_id: str | None = None
        echo: EchoedPrefix | None = None
        while self._current is not None:
            opened = self._current
            try:
                async for batch in _prelude_then_rest(opened):
                    out: list[JSON] = []
                    for chunk in batch:
                        if echo is not None:
                            if not chunk.get("usage") and not has_output(chunk):
                                continue
                            echo.strip(chunk)
                            chunk["id"] = stream_id or chunk.get("id")
                        stream_id = stream_id or chunk.get("id")
                        info.upstream_model = info.upstream_model or chunk.get("model")
                        for choice in chunk.get("choices") or ():
                            index = choice.get("index", 0)
                            delta = choice.get("delta") or {}
                            calls = delta.get("tool_calls")
                            if index != 0 or calls:
                                other_output = True
                            content = delta.get("content") or ""
                            if index == 0:
                                text += content
                            if calls:
                                content += "".join(
                                    str((call.get("function") or {}).get("arguments") or "")
                                    for call in calls
                                )
                            generated[index] = generated.get(index, "") + content
                        usage = chunk.get("usage")
                        if usage:
                            self._usage = usage
                            if include_usage:
                                cost = await self._cost_with_usage(opened, usage)
                                chunk["usage"] = {**usage, "cost": cost.usd_str()}
                        if "usage" in chunk and not include_usage:
                            if not chunk.get("choices"):
                                continue
                            del chunk["usage"]
                        out.append(chunk)
                    if out:
                        yield out
            except GatewayError as exc:
                health.finish(opened.ticket, exc)
                self._current = None
                if other_output or not text:
                    self._account_later(exc)
                    raise
                try:
                    self._current = await self._continuation(opened, text, exc)
                except GatewayError:
                    self._account_later(exc)
                    raise
                generated = self._generated  # _continuation set the broken attempt's aside
                echo = EchoedPrefix(text)
                continue
            finally:
                info.malformed_events += opened.stream.malformed_events
            health.finish(opened.ticket, latency=opened.first_output_seconds)
            self._current = None
            usage = self._usage or {}
            if isinstance(usage.get("total_tokens"), int):
                health.add_tokens(
                    opened.ticket.deployment.id, usage["total_tokens"] - opened.ticket.tokens
                )
        self._account_later(None)

    def _break(
        self, opened: OpenedStream, served_by: Deployment | None, upstream_model: str | None
    ) -> None:
        """Set aside what a broken attempt generated (to bill it) as another continues."""
        texts = [self._generated[i] for i in sorted(self._generated)]
        dep = served_by or opened.ticket.deployment
        self._broken.append((dep, upstream_model, list(self._messages), texts))
        self._generated = {}
        self._usage = None
        self._info.upstream_model = None

    async def _cost_with_usage(self, opened: OpenedStream, usage: JSON) -> Cost:
        accountant = self._engine.accountant
        cost = accountant.cost(opened.ticket.deployment, self._info.upstream_model, usage)
        for part in await self._broken_costs():
            cost = part + cost
        return cost

    async def _broken_costs(self) -> list[Cost]:
        accountant = self._engine.accountant
        costs = []
        for dep, model, messages, texts in self._broken:
            estimate = await accountant.estimate(dep, model, messages, texts, self._request.tools)
            costs.append(accountant.cost(dep, model, estimate))
        return costs

    def _account_later(self, error: GatewayError | None) -> None:
        """Account for the stream once; estimation (if needed) runs in the background."""
        if self._accounted:
            return
        self._accounted = True
        self._engine._streams.discard(self)
        if self._usage is not None and not self._broken:  # the common case: no waiting
            self._settle(self._usage, [], error)
            return
        self._engine.spawn(self._account(error))

    async def _account(self, error: GatewayError | None) -> None:
        usage = self._usage
        if usage is None and self._generated:
            texts = [self._generated[i] for i in sorted(self._generated)]
            usage = await self._engine.accountant.estimate(
                self._info.served_by,
                self._info.upstream_model,
                self._messages,
                texts,
                self._request.tools,
            )
        self._settle(usage, await self._broken_costs(), error)

    def _settle(self, usage: JSON | None, broken: list[Cost], error: GatewayError | None) -> None:
        info = self._info
        info.usage = usage
        cost = self._engine.accountant.cost(info.served_by, info.upstream_model, usage)
        for part in broken:
            cost = part + cost
        info.cost = cost
        if info.keeps_content:
            info.content = {
                "messages": self._messages,
                "output": [self._generated[i] for i in sorted(self._generated)],
            }
        self._engine.finish(info, error)

    async def _continuation(
        self, broken: OpenedStream, text: str, error: GatewayError
    ) -> OpenedStream:
        """Open a stream that continues ``text`` on a later, prefill-capable deployment;
        if there is none, or it fails too, the original error stands."""
        if not self._engine.config.routing.continue_streams or self._info.operation != "chat":
            raise error  # a FIM answer would continue its prompt, not the messages
        attempts = self._plan.attempts
        later = (
            attempts[attempts.index(broken.ticket.deployment) + 1 :]
            if broken.ticket.deployment in attempts
            else []
        )
        able = [d for d in later if d.provider.capabilities.assistant_prefill]
        if not able:
            raise error
        prefix = {"role": "assistant", "content": text, "prefix": True}

        def body() -> JSON:
            b = self._request.upstream_body()
            b["messages"] = [*b["messages"], prefix]
            return b

        served_by, upstream_model = self._info.served_by, self._info.upstream_model
        try:
            opened = await self._engine._open_stream(
                self._plan, able, body, self._info, self._deadline, broken.ticket.tokens
            )
        except GatewayError:
            # The broken attempt stays the one to account for.
            self._info.served_by, self._info.upstream_model = served_by, upstream_model
            raise error from None
        self._break(broken, served_by, upstream_model)
        self._messages = [*self._messages, prefix]
        self._info.continued = True
        return opened

    async def aclose(self) -> None:
        """Stop reading (the caller went away): cancel the upstream request and bill what
        was generated so far."""
        if self._current is not None:
            self._engine.health.finish(self._current.ticket)
            await self._current.stream.aclose()
            self._current = None
            self._account_later(
                ClientDisconnectedError(
                    "the caller closed the connection before the answer was complete"
                )
            )


def _upstream_request(
    provider: Provider, info: CallInfo, body: JSON, dep: Deployment, *, stream: bool
) -> UpstreamRequest:
    """This call's upstream request, built by the adapter method for its operation."""
    build = provider.fim_request if info.operation == "fim" else provider.chat_request
    return build(body, dep, stream=stream)


def _cancelled() -> ClientDisconnectedError:
    return ClientDisconnectedError(
        "the call was cancelled before it completed (the caller went away or the gateway shut down)"
    )


async def _prelude_then_rest(opened: OpenedStream) -> AsyncGenerator[list[JSON], None]:
    # The prelude and the rest of its read go together: they are all here already.
    first = opened.prelude + opened.stream.take_held()
    opened.prelude = []
    if first:
        yield first
    async for batch in opened.stream.batches():
        yield batch


class EchoedPrefix:
    """Removes the already-sent text when a continuing provider repeats it (Mistral's
    ``prefix: true`` answers start with the prefix); passes other answers unchanged."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.seen = ""
        self.done = False

    def strip(self, chunk: JSON) -> None:
        if self.done:
            return
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            delta.pop("role", None)
            content = delta.get("content")
            if not content and not choice.get("finish_reason"):
                continue
            self.seen += content or ""
            still_echoing = self.prefix.startswith(self.seen) and len(self.seen) < len(self.prefix)
            if still_echoing and not choice.get("finish_reason"):
                delta["content"] = ""
                continue
            self.done = True
            rest = (
                self.seen[len(self.prefix) :]
                if self.seen.startswith(self.prefix)
                else ("" if self.prefix.startswith(self.seen) else self.seen)
            )
            delta["content"] = rest
