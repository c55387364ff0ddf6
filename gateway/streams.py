"""Streaming answers: opening one on the first deployment that produces output, then handing
its chunks to the caller — continued elsewhere if it is cut — and billing it once.

``StreamOpener`` runs a Plan until an upstream stream has produced its first output, so a
failure before anything reached the caller is retried or failed over like any call.
``ChunkStream`` is what the caller reads. When the upstream breaks after output has reached the
caller, the answer is continued on a later deployment of the Plan that supports assistant
prefill, if any; otherwise the error is raised, so a cut answer is never presented as complete.
However the stream ends — complete, broken, or abandoned — it is accounted once: what was
generated is billed (estimated offline when the provider sent no usage).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from gateway.accounting import Accountant, add_usage, unreadable_usage_note
from gateway.cache import StreamCapture
from gateway.call import Call
from gateway.calls import Calls
from gateway.config import RoutingConfig
from gateway.costs import Cost, usage_readable
from gateway.costs.reasoning import is_reasoning_model
from gateway.costs.tally import TextTally
from gateway.errors import (
    ClientDisconnectedError,
    GatewayError,
    InternalError,
    InvalidRequestError,
    UpstreamTimeoutError,
)
from gateway.resilience import UpstreamStream, has_output, open_response, run_plan, within
from gateway.routing import HealthBoard, Plan, Ticket
from gateway.types import CompletionRequest
from gateway.wire import JSON, Transport, UpstreamRequest
from providers.base import Deployment, EchoFilter, StreamTranslator

if TYPE_CHECKING:
    from gateway.governance.pii import StreamRestorer

BodyFactory = Callable[[], JSON]
log = logging.getLogger("gateway.streams")


@dataclass(slots=True)
class OpenedStream:
    """An upstream stream that has produced output, and its admission ticket."""

    stream: UpstreamStream
    ticket: Ticket
    first_output_seconds: float


def upstream_request(
    request: CompletionRequest, body: JSON, dep: Deployment, *, stream: bool
) -> UpstreamRequest:
    """The request's upstream request, built by the adapter method for its operation."""
    provider = dep.provider
    build = provider.chat_request
    if request.operation == "fim":
        build = provider.fim_request
    elif request.operation == "completions":
        build = provider.completions_request
    try:
        return build(body, dep, stream=stream)
    except TypeError as exc:  # orjson's encode error: over 254 levels, a lone surrogate
        raise unencodable(exc) from exc


def upstream_answer(
    request: CompletionRequest, raw: bytes, dep: Deployment, upstream: UpstreamRequest
) -> JSON:
    """The answer to ``upstream`` as a chat.completion, parsed by the adapter for its operation."""
    if request.operation == "completions":
        return dep.provider.completions_response(raw, dep, upstream)
    return dep.provider.chat_response(raw, dep, upstream)


def stream_translator(
    request: CompletionRequest, dep: Deployment, upstream: UpstreamRequest
) -> StreamTranslator:
    """A translator of the streamed answer to ``upstream`` into chat chunks."""
    if request.operation == "completions":
        return dep.provider.completions_stream(dep, upstream)
    return dep.provider.chat_stream(dep, upstream)


def unencodable(exc: TypeError) -> InvalidRequestError:
    """The 400 for a request that cannot be written as JSON for the upstream."""
    return InvalidRequestError(
        f"the request cannot be sent upstream as JSON ({exc}); send text as valid UTF-8 "
        "(no lone surrogates) and nest objects and arrays less deeply",
        code="unencodable_request",
        retryable=False,
    )


class StreamOpener:
    """Opens a request's stream on the first deployment that produces output."""

    def __init__(
        self,
        transport: Transport,
        health: HealthBoard,
        routing: RoutingConfig,
        request: CompletionRequest,
        call: Call,
    ) -> None:
        self.transport = transport
        self.health = health
        self.routing = routing
        self.request = request
        self.call = call

    async def open(
        self,
        plan: Plan,
        deployments: list[Deployment],
        body: BodyFactory,
        deadline: float,
        estimate: int,
    ) -> OpenedStream:
        """Run ``deployments`` until one stream produces output; ``body()`` builds the body."""
        call = self.call
        policy = plan.policy

        async def attempt(dep: Deployment, ticket: Ticket) -> OpenedStream:
            native = self.request.native_request(dep)  # e.g. a Responses API request
            upstream = native or upstream_request(self.request, body(), dep, stream=True)
            call.dropped_params = upstream.dropped_params
            timeouts = policy.upstream_timeouts(dep, stream=True)
            left = deadline - time.monotonic()
            if left < timeouts.read:  # a stall must not outlast the request's deadline
                timeouts = replace(timeouts, read=max(left, 0.001))
            first_token = policy.first_token(dep, last=dep is deployments[-1])
            started: float | None = None  # once the headers are in (open_response counts before)
            stream: UpstreamStream | None = None
            try:
                # One limit from sending to the first output: a route silent before its
                # headers is as slow to start as one silent after them.
                async with asyncio.timeout(min(first_token, max(0.0, deadline - time.monotonic()))):
                    response = await open_response(
                        self.transport, dep, upstream, timeouts, call.tries
                    )
                    started = time.perf_counter()
                    translator = (
                        dep.provider.responses_stream(dep, upstream)
                        if native is not None
                        else stream_translator(self.request, dep, upstream)
                    )
                    stream = UpstreamStream(response, translator, dep, deadline)
                    await stream.until_output()
            except TimeoutError:
                if stream is not None:
                    await stream.aclose()
                raise UpstreamTimeoutError(
                    f"no first token within {first_token:g}s (routing.timeouts.first_token)"
                ) from None
            except BaseException:
                if stream is not None:
                    await stream.aclose()
                raise
            finally:
                if started is not None:
                    call.tries.upstream_seconds += time.perf_counter() - started
            assert started is not None and stream is not None
            if call.ttft_seconds is None:
                call.ttft_seconds = call.elapsed_seconds()
            return OpenedStream(stream, ticket, time.perf_counter() - started)

        sub = Plan(plan.model, policy, deployments, plan.context_attempts)
        return await within(
            deadline,
            run_plan(
                sub,
                attempt,
                call.tries,
                self.health,
                deadline=deadline,
                tokens=estimate,
                fallback_on_content_filter=self.routing.fallback_on_content_filter,
                settle_on_success=False,
            ),
        )


@dataclass(slots=True)
class _Broken:
    """What a broken attempt generated before another continued it: billed on its own."""

    deployment: Deployment
    upstream_model: str | None
    messages: list[JSON]
    texts: list[TextTally]


class ChunkStream:
    """The canonical chunks of one streaming answer, as the caller receives them.

    Usage is always recorded in ``call.usage``; the usage chunk reaches the caller only if
    they asked for it (``stream_options.include_usage``), as OpenAI does, with the call's cost
    added to it.
    """

    def __init__(
        self,
        opener: StreamOpener,
        plan: Plan,
        deadline: float,
        opened: OpenedStream,
        accountant: Accountant,
        calls: Calls,
    ) -> None:
        self._opener = opener
        self._plan = plan
        self._request = opener.request
        self._call = opener.call
        self._deadline = deadline
        self._accountant = accountant
        self._calls = calls
        self._current: OpenedStream | None = opened
        self._messages: list[JSON] = self._request.prompt_messages()
        # By choice, this attempt's text and arguments, as a running token count and a
        # bounded tail (whole only when the call's content is recorded).
        self._generated: dict[int, TextTally] = {}
        # The text so far is kept for a continuation only if the Plan has a deployment that
        # could continue it; otherwise nothing grows with the answer.
        self._continuable = (
            opener.routing.continue_streams
            and self._call.operation in ("chat", "responses")
            and any(d.can_prefill for d in plan.attempts)
        )
        self._broken: list[_Broken] = []
        self._usage: JSON | None = None  # the last attempt's reported usage
        self._accounted = False
        # The answer folded up for the response cache (None: it is not to be kept).
        self.capture: StreamCapture | None = None
        # Puts a redacted prompt's placeholders back in what the caller receives.
        self.restorer: StreamRestorer | None = None
        calls.streams.add(self)

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
        health = self._opener.health
        call = self._call
        text = ""  # what choice 0 has said so far, for a continuation
        said = False  # whether choice 0 has said anything
        other_output = False  # tool calls or other choices: cannot be continued
        stream_id: str | None = None
        created: object = None
        echo: EchoFilter | None = None
        continued = False
        while self._current is not None:
            opened = self._current
            generated = self._generated
            upstream = opened.stream
            batch = upstream.take_held()
            read_next = upstream.reads.__anext__
            try:
                while True:
                    if not batch:
                        try:
                            batch = await read_next()
                        except StopAsyncIteration:
                            break
                    out: list[JSON] = []
                    for chunk in batch:
                        if continued:
                            if not chunk.get("usage") and not has_output(chunk):
                                continue
                            _continue_chunk(chunk, echo)
                            chunk["id"] = stream_id or chunk.get("id")
                        stream_id = stream_id or chunk.get("id")
                        created = created or chunk.get("created")
                        call.upstream_model = call.upstream_model or chunk.get("model")
                        tier = chunk.get("service_tier")
                        if isinstance(tier, str) and tier:
                            call.service_tier = tier
                        for choice in chunk.get("choices") or ():
                            index = choice.get("index", 0)
                            delta = choice.get("delta") or {}
                            calls = delta.get("tool_calls")
                            if index != 0 or calls:
                                other_output = True
                            content = delta.get("content") or ""
                            if index == 0 and content:
                                said = True
                                if self._continuable:
                                    text += content
                            if calls:
                                content += "".join(
                                    str((c.get("function") or {}).get("arguments") or "")
                                    for c in calls
                                )
                            tally = generated.get(index)
                            if tally is None:
                                tally = generated[index] = TextTally(keep_all=call.keeps_content)
                            if tally.add(content):
                                await self._fold(opened, tally)
                        usage = chunk.get("usage")
                        readable = usage_readable(usage)
                        if readable and usage is not None:
                            self._usage = usage
                            if include_usage:
                                cost = await self._cost_with_usage(opened, usage)
                                chunk["usage"] = {**usage, "cost": cost.usd_str()}
                        elif usage:  # another shape: the gateway's estimate replaces it
                            call.cost_note = unreadable_usage_note(usage)
                        if "usage" in chunk and (not include_usage or (usage and not readable)):
                            if not chunk.get("choices"):
                                continue
                            del chunk["usage"]
                        if self.restorer is not None:
                            self.restorer.chunk(chunk)
                        out.append(chunk)
                    batch = []
                    if out:
                        if self.capture is not None:
                            self.capture.add(out)
                        yield out
            except GatewayError as exc:
                health.finish(opened.ticket, exc)
                self._current = None
                if other_output or not said:
                    self._account_later(exc)
                    raise
                try:
                    self._current = await self._continuation(opened, text, exc)
                except GatewayError:
                    self._account_later(exc)
                    raise
                continued = True
                echo = self._current.ticket.deployment.provider.echo_filter(text)
                continue
            except Exception as exc:  # a fault of the gateway's own: the stream ends as 500
                health.finish(opened.ticket)
                await opened.stream.aclose()
                self._current = None
                error = InternalError(call.request_id, " mid-stream")
                log.exception("unexpected error in stream %s", call.request_id)
                self._account_later(error)
                raise error from exc
            finally:
                call.malformed_events += opened.stream.malformed_events
            health.finish(opened.ticket, latency=opened.first_output_seconds)
            self._current = None
            usage = self._usage or {}
            if isinstance(usage.get("total_tokens"), int):
                health.add_tokens(
                    opened.ticket.deployment.id, usage["total_tokens"] - opened.ticket.tokens
                )
        if self.restorer is not None:
            model = call.upstream_model
            rest = self.restorer.rest({"id": stream_id, "created": created, "model": model})
            if rest is not None:
                yield [rest]
        if include_usage and self._usage is None and not self._accounted:
            yield [await self._estimated_usage_chunk(stream_id, created)]
        if self.capture is not None and call.cache is not None and not continued:
            call.cache.answer = self.capture.completion(None)  # kept once the call is billed
        self._account_later(None)

    async def _estimated_usage_chunk(self, stream_id: str | None, created: object) -> JSON:
        """The usage chunk the caller asked for, when the provider sent none it could read:
        counted offline, priced, and flagged in ``x_gateway`` (an extra field, which the
        OpenAI SDKs keep) — a lower bound for a reasoning model's hidden tokens."""
        call = self._call
        dep = call.served_by
        texts = [self._generated[i] for i in sorted(self._generated)]
        usage = await self._estimate(dep, call.upstream_model, self._messages, texts)
        self._usage = usage
        cost = self._accountant.cost(
            dep, call.upstream_model, usage, service_tier=call.service_tier
        )
        for part in await self._broken_costs():
            cost = part + cost
        names = (call.upstream_model, dep.base_model, dep.model) if dep else ()
        shown = {k: v for k, v in (usage or {}).items() if k != "estimated_by"}
        return {
            "id": stream_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": call.upstream_model or self._request.model,
            "choices": [],
            "usage": {**shown, "cost": cost.usd_str()} if usage else None,
            "x_gateway": {
                "usage_estimated": "lower_bound" if is_reasoning_model(*names) else True,
                "estimated_by": (usage or {}).get("estimated_by"),
            },
        }

    def _break(
        self, opened: OpenedStream, served_by: Deployment | None, upstream_model: str | None
    ) -> None:
        """Set aside what a broken attempt generated (to bill it) as another continues."""
        texts = [self._generated[i] for i in sorted(self._generated)]
        dep = served_by or opened.ticket.deployment
        self._broken.append(_Broken(dep, upstream_model, list(self._messages), texts))
        self._generated = {}
        self._usage = None
        self._call.upstream_model = None

    async def _cost_with_usage(self, opened: OpenedStream, usage: JSON) -> Cost:
        cost = self._accountant.cost(
            opened.ticket.deployment,
            self._call.upstream_model,
            usage,
            service_tier=self._call.service_tier,
        )
        for part in await self._broken_costs():
            cost = part + cost
        return cost

    async def _broken_costs(self) -> list[Cost]:
        return [cost for _, cost in await self._broken_parts()]

    async def _broken_parts(self) -> list[tuple[JSON | None, Cost]]:
        """The estimated usage and cost of each broken attempt that another continued."""
        accountant = self._accountant
        parts = []
        for b in self._broken:
            estimate = await self._estimate(b.deployment, b.upstream_model, b.messages, b.texts)
            parts.append((estimate, accountant.cost(b.deployment, b.upstream_model, estimate)))
        return parts

    async def _fold(self, opened: OpenedStream, tally: TextTally) -> None:
        """Count the head of a long generated text with the tokenizer its estimate would use
        (``Accountant.estimate``), so that only a bounded tail stays in memory."""
        dep = self._call.served_by or opened.ticket.deployment
        model = self._call.upstream_model or dep.base_model or dep.model
        try:
            await tally.fold(dep.provider.tokenizer, model)
        except Exception:  # a tokenizer that cannot load: keep the text, estimate at the end
            tally.keep_all = True

    async def _estimate(
        self,
        dep: Deployment | None,
        upstream_model: str | None,
        messages: list[JSON],
        tallies: list[TextTally],
    ) -> JSON | None:
        """Usage counted offline: the tails' tokens plus what was folded away."""
        usage = await self._accountant.estimate(
            dep, upstream_model, messages, [t.tail for t in tallies], self._request.tools
        )
        folded = sum(t.counted for t in tallies)
        if usage is not None and folded:
            usage["completion_tokens"] += folded
            usage["total_tokens"] += folded
        return usage

    def _account_later(self, error: GatewayError | None) -> None:
        """Account for the stream once; estimation (if needed) runs in the background."""
        if self._accounted:
            return
        self._accounted = True
        self._calls.streams.discard(self)
        if self._usage is not None and not self._broken:  # the common case: no waiting
            self._settle(self._usage, [], error)
            return
        self._calls.spawn(self._account(error))

    async def _account(self, error: GatewayError | None) -> None:
        usage = self._usage
        call = self._call
        if usage is None and self._generated:
            call.cost_note = call.cost_note or unreadable_usage_note(None)
            texts = [self._generated[i] for i in sorted(self._generated)]
            usage = await self._estimate(call.served_by, call.upstream_model, self._messages, texts)
        self._settle(usage, await self._broken_parts(), error)

    def _settle(
        self, usage: JSON | None, broken: list[tuple[JSON | None, Cost]], error: GatewayError | None
    ) -> None:
        call = self._call
        cost = self._accountant.cost(
            call.served_by, call.upstream_model, usage, service_tier=call.service_tier
        )
        for part_usage, part in broken:  # a continued answer: every part's tokens count
            cost = part + cost
            usage = add_usage(part_usage, usage)
        call.usage = usage
        call.cost = cost
        if call.keeps_content:
            call.content = {
                "messages": self._messages,
                "output": [self._generated[i].tail for i in sorted(self._generated)],
            }
        self._calls.end(call, error)

    async def _continuation(
        self, broken: OpenedStream, text: str, error: GatewayError
    ) -> OpenedStream:
        """Open a stream that continues ``text`` on a later, prefill-capable deployment;
        if there is none, or it fails too, the original error stands."""
        call = self._call
        if not self._opener.routing.continue_streams or call.operation not in ("chat", "responses"):
            raise error  # a FIM answer would continue its prompt, not the messages
        attempts = self._plan.attempts
        later = (
            attempts[attempts.index(broken.ticket.deployment) + 1 :]
            if broken.ticket.deployment in attempts
            else []
        )
        able = [d for d in later if d.can_prefill]
        if not able:
            raise error
        prefix = {"role": "assistant", "content": text, "prefix": True}

        def body() -> JSON:
            b = self._request.upstream_body()
            b["messages"] = [*b["messages"], prefix]
            return b

        served_by, upstream_model = call.served_by, call.upstream_model
        tries = call.tries
        last = tries.provider, tries.deployment
        try:
            opened = await self._opener.open(
                self._plan, able, body, self._deadline, broken.ticket.tokens
            )
        except GatewayError:
            # The broken attempt stays the one to account for and to name (a deployment that
            # refused the prefill served nothing); its attempts still count.
            call.served_by, call.upstream_model = served_by, upstream_model
            tries.provider, tries.deployment = last
            raise error from None
        self._break(broken, served_by, upstream_model)
        self._messages = [*self._messages, prefix]
        call.continued = True
        return opened

    async def aclose(self, error: GatewayError | None = None) -> None:
        """Stop reading (the caller went away, or ``error`` stopped the answer): cancel the
        upstream request and bill what was generated so far."""
        if self._current is not None:
            self._opener.health.finish(self._current.ticket)
            await self._current.stream.aclose()
            self._current = None
            self._account_later(
                error
                or ClientDisconnectedError(
                    "the caller closed the connection before the answer was complete"
                )
            )


def _continue_chunk(chunk: JSON, echo: EchoFilter | None) -> None:
    """A chunk of a continued answer: no second opening role, and without the prefix if the
    continuing provider repeats it."""
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta")
        if isinstance(delta, dict):
            delta.pop("role", None)
    if echo is not None:
        echo.strip(chunk)


class ReplayStream(ChunkStream):
    """A kept answer replayed from the response cache as the chunks of a stream: nothing
    upstream to read, stop or bill (the call has ended already)."""

    def __init__(self, chunks: list[JSON]) -> None:
        self._replay = chunks
        self.capture = None

    async def batches(self) -> AsyncGenerator[list[JSON], None]:
        if self._replay:
            yield self._replay

    async def aclose(self, error: GatewayError | None = None) -> None:
        return None
