"""The engine in-process: ``AsyncGateway`` and ``Gateway`` with the OpenAI SDK's call shapes.

``gw.chat.completions.create(...)`` returns typed ``ChatCompletion`` objects, or an iterator of
``ChatCompletionChunk`` when ``stream=True``; errors are the gateway's own exception types.
``Gateway`` (sync) drives an ``AsyncGateway`` on a private event-loop thread, so it also works
where a loop is already running (notebooks). Both share the resources of ``gateway.sdk``
with the remote clients; only the backend here differs: it calls the engine.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Protocol, Self, TypeVar, cast

from pydantic import PrivateAttr

from gateway.call import Call
from gateway.config import GatewayConfig, resolve_config
from gateway.engine import Engine
from gateway.errors import GatewayError, InvalidRequestError, check_json_depth, validated
from gateway.facts import GatewayFacts
from gateway.governance.keys import AuditedKeyAdmin
from gateway.keys.admin import KeyAdmin, KeySpec, key_store_disabled
from gateway.ledger.ledger import Ledger, ledger_disabled
from gateway.ledger.periods import PeriodError, report_period
from gateway.ledger.reports import GROUPS, MAX_PAGE, GroupBy, SpendRow
from gateway.responses.convert import ResponsesChatRequest, ResponsesRequest
from gateway.responses.service import ResponseStream, owner_of, responses_for
from gateway.sdk.admin import (
    AsyncKeys,
    AsyncSpend,
    CreatedKey,
    KeyInfo,
    Keys,
    Moment,
    Page,
    Spend,
    SpendReport,
    SpendReportRow,
    moment_text,
)
from gateway.sdk.batches import AsyncBatches, AsyncFiles, BatchCall, Batches, Files
from gateway.sdk.resources import (
    AsyncChat,
    AsyncEmbeddings,
    AsyncModels,
    AsyncResponses,
    Chat,
    Embeddings,
    ModelRequest,
    Models,
    Responses,
)
from gateway.streams import ChunkStream
from gateway.types import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    CreateEmbeddingResponse,
    EmbeddingRequest,
    Model,
    ResponseDeleted,
    ResponseObject,
    ResponseStreamEvent,
)
from gateway.wire import Transport

if TYPE_CHECKING:
    from gateway.batch import Batches as BatchService

ConfigSource = str | Path | dict[str, Any] | GatewayConfig | None
R = TypeVar("R")
Item = TypeVar("Item")
Item_co = TypeVar("Item_co", covariant=True)


class LocalChatCompletion(ChatCompletion):
    """A chat completion made in-process: also the engine's full record of the call."""

    _call: Call | None = PrivateAttr(default=None)

    @property
    def gateway(self) -> Call | None:
        """The engine's record of the call (attempt log, usage, cost)."""
        return self._call


class LocalEmbeddings(CreateEmbeddingResponse):
    """Embeddings made in-process: also the engine's full record of the call."""

    _call: Call | None = PrivateAttr(default=None)

    @property
    def gateway(self) -> Call | None:
        """The engine's record of the call (attempt log, usage, cost)."""
        return self._call


class LocalResponse(ResponseObject):
    """A Responses API response made in-process: also the engine's record of the call (for
    one just created; a retrieved one has none)."""

    _call: Call | None = PrivateAttr(default=None)

    @property
    def gateway(self) -> Call | None:
        """The engine's record of the call (attempt log, usage, cost)."""
        return self._call


class AsyncResponseEvents:
    """The events of one streamed response; ``facts`` says who answers it and, once it has
    ended, what it cost. A failure mid-stream is raised as the gateway's exception."""

    def __init__(self, opened: ResponseStream, info: Call) -> None:
        self._opened = opened
        self.info = info
        self._events = self._iterate()

    @property
    def facts(self) -> GatewayFacts:
        return self.info.facts()

    def __aiter__(self) -> AsyncIterator[ResponseStreamEvent]:
        return self._events

    async def _iterate(self) -> AsyncIterator[ResponseStreamEvent]:
        error: GatewayError | None = None
        try:
            async for event in self._opened.events:
                yield ResponseStreamEvent.model_validate(event)
        except GatewayError as exc:
            error = exc
            raise
        finally:
            await self._opened.chunks.aclose(error)

    async def aclose(self) -> None:
        await self._opened.chunks.aclose()

    async def __aenter__(self) -> AsyncResponseEvents:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class AsyncChunkStream:
    """Chunks of one streaming answer; ``facts`` says who answers it and, once it has ended,
    what it cost (``info`` is the engine's full record of the call)."""

    def __init__(self, stream: ChunkStream, info: Call) -> None:
        self._stream = stream
        self.info = info

    @property
    def facts(self) -> GatewayFacts:
        return self.info.facts()

    def __aiter__(self) -> AsyncIterator[ChatCompletionChunk]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[ChatCompletionChunk]:
        async for chunk in self._stream:
            yield ChatCompletionChunk.model_validate(chunk)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def __aenter__(self) -> AsyncChunkStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class LocalBackend:
    """The engine itself, for ``AsyncGateway`` (and, run on its loop thread, ``Gateway``):
    models, and the engine's own ledger and key store, with the HTTP routes' checks."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._batches: BatchService | None = None

    # -- models ----------------------------------------------------------------------------
    def _call(self, request: ModelRequest) -> tuple[dict[str, Any], Call]:
        """The body and a new call's facts, with the gateway's options placed where the HTTP
        proxy puts them: ``regions`` narrows routing, ``metadata`` tags the ledger record,
        ``timeout`` is the whole call's deadline in seconds."""
        body = dict(request.body)
        check_json_depth(body, self.engine.config.server.max_json_depth, "request")
        if request.timeout is not None:
            body.setdefault("gateway_timeout", request.timeout)
        call = Call(request_id=uuid.uuid4().hex, surface="library")
        if request.regions is not None:
            call.regions = frozenset(request.regions)
        call.tag_with(body.get("metadata"))
        return body, call

    async def complete(self, request: ModelRequest) -> LocalChatCompletion:
        body, call = self._call(request)
        parsed = ChatCompletionRequest.model_validate(body)
        await self.engine.start()
        completion = LocalChatCompletion.model_validate(await self.engine.chat(parsed, call))
        completion._call = call
        completion._facts = call.facts()
        return completion

    async def stream(self, request: ModelRequest) -> AsyncChunkStream:
        body, call = self._call(request)
        parsed = ChatCompletionRequest.model_validate(body)
        await self.engine.start()
        return AsyncChunkStream(await self.engine.chat_stream(parsed, call), call)

    async def embed(self, request: ModelRequest) -> LocalEmbeddings:
        body, call = self._call(request)
        parsed = EmbeddingRequest.model_validate(body)
        await self.engine.start()
        result = LocalEmbeddings.model_validate(await self.engine.embeddings(parsed, call))
        result._call = call
        result._facts = call.facts()
        return result

    async def _responses_call(
        self, request: ModelRequest
    ) -> tuple[ResponsesRequest, ResponsesChatRequest, Call]:
        body, call = self._call(request)
        parsed = ResponsesRequest.model_validate(body)
        service = responses_for(self.engine)
        await self.engine.start()
        history = await service.history(owner_of(call), parsed.previous_response_id, call)
        return parsed, service.prepare(parsed, history), call

    async def respond(self, request: ModelRequest) -> LocalResponse:
        parsed, chat, call = await self._responses_call(request)
        answer = await responses_for(self.engine).create(parsed, chat, call)
        response = LocalResponse.model_validate(answer)
        response._call = call
        response._facts = call.facts()
        return response

    async def respond_stream(self, request: ModelRequest) -> AsyncResponseEvents:
        parsed, chat, call = await self._responses_call(request)
        opened = await responses_for(self.engine).stream(parsed, chat, call)
        return AsyncResponseEvents(opened, call)

    async def stored_response(
        self,
        method: str,
        response_id: str,
        timeout: object = None,  # noqa: ASYNC109
    ) -> LocalResponse | ResponseDeleted:
        service = responses_for(self.engine)
        await self.engine.start()
        owner = owner_of(Call(request_id=uuid.uuid4().hex, surface="library"))
        if method == "DELETE":
            return ResponseDeleted.model_validate(await service.delete(owner, response_id))
        return LocalResponse.model_validate(await service.retrieve(owner, response_id))

    async def models(self, timeout: object = None) -> list[Model]:  # noqa: ASYNC109
        # In-process the list is at hand: there is nothing to wait for.
        return [Model.model_validate(m) for m in self.engine.models()]

    # -- files and batches -----------------------------------------------------------------
    async def batch_api(self, call: BatchCall) -> Any:
        """A Files or Batches operation on the engine's batch service, as the master key
        (in-process, the caller owns the gateway); a job not yet ended is looked at upstream
        when it is read, as the HTTP route does."""
        from gateway.auth import MASTER
        from gateway.batch import batch_object, file_object

        await self.engine.start()
        if self._batches is None:
            from gateway.batch import Batches

            if self.engine.ledger is None:
                raise ledger_disabled()
            self._batches = Batches(self.engine)
        batches, args = self._batches, call.args
        op = call.op
        if op == "files.create":
            return await batches.upload(MASTER, args["filename"], args["purpose"], args["content"])
        if op == "files.list":
            return {"object": "list", "data": await batches.files(MASTER)}
        if op == "files.retrieve":
            return file_object(await batches.file(MASTER, args["file_id"]))
        if op == "files.content":
            return await batches.content(MASTER, args["file_id"])
        if op == "files.delete":
            return await batches.delete_file(MASTER, args["file_id"])
        if op == "batches.create":
            row = await batches.create(
                MASTER,
                args["input_file_id"],
                args["endpoint"],
                args["completion_window"],
                args.get("metadata"),
            )
        elif op == "batches.list":
            rows = await batches.list(MASTER, args["limit"])
            return {"object": "list", "data": [batch_object(r) for r in rows]}
        elif op == "batches.cancel":
            row = await batches.cancel(MASTER, args["batch_id"])
        else:  # batches.retrieve
            row = await batches.get(MASTER, args["batch_id"])
            if not row.settled:
                await batches.sync(row.id)
                row = await batches.get(MASTER, args["batch_id"])
        return batch_object(row)

    # -- spend -----------------------------------------------------------------------------
    async def _ledger(self) -> Ledger:
        ledger = self.engine.ledger
        if ledger is None:
            raise ledger_disabled()
        await self.engine.start()
        await ledger.caught_up()  # include the requests just answered, as the routes do
        return ledger

    @staticmethod
    def _period(since: Moment, until: Moment) -> tuple[datetime, datetime]:
        try:
            return report_period(moment_text(since), moment_text(until))
        except PeriodError as exc:
            raise InvalidRequestError(str(exc), param=exc.param) from None

    async def report(
        self, group_by: str, since: Moment, until: Moment, key_id: str | None
    ) -> SpendReport:
        if group_by not in GROUPS:
            raise InvalidRequestError(
                f"group_by must be one of {', '.join(GROUPS)}, not {group_by!r}", param="group_by"
            )
        start, end = self._period(since, until)
        ledger = await self._ledger()
        rows = await ledger.spend_report(cast(GroupBy, group_by), start, end, key_id)
        views = [SpendReportRow.from_sums(row) for row in rows]
        total = SpendReportRow.from_sums(SpendRow.total(rows))
        return SpendReport(group_by, start, end, views, total)

    async def page(
        self, since: Moment, until: Moment, key_id: str | None, size: int, cursor: str | None
    ) -> Page:
        if not 1 <= size <= MAX_PAGE:
            raise InvalidRequestError(f"page_size must be from 1 to {MAX_PAGE}", param="limit")
        start, end = self._period(since, until)
        ledger = await self._ledger()
        try:
            got = await ledger.spend_records(start, end, key_id, size, cursor)
        except ValueError as exc:  # an unreadable cursor
            raise InvalidRequestError(str(exc), param="cursor") from None
        return list(got.records), got.next_cursor

    # -- keys ------------------------------------------------------------------------------
    async def _admin(self) -> KeyAdmin:
        store = self.engine.keys
        if store is None:
            raise key_store_disabled()
        await self.engine.start()
        return AuditedKeyAdmin(store, "library", self.engine.auth.forget)

    async def create_key(self, spec: dict[str, Any]) -> CreatedKey:
        checked = validated(KeySpec, spec, "key")
        key, plaintext = await (await self._admin()).new_key(checked)
        return CreatedKey(plaintext, KeyInfo.from_json(key.public()))

    async def list_keys(self) -> list[KeyInfo]:
        admin = await self._admin()
        return [KeyInfo.from_json(k.public()) for k in await admin.store.list_keys()]

    async def revoke_key(self, key_id: str) -> KeyInfo:
        key = await (await self._admin()).revoke(key_id)
        return KeyInfo.from_json(key.public())

    async def rotate_key(self, key_id: str) -> CreatedKey:
        key, plaintext = await (await self._admin()).rotate(key_id)
        return CreatedKey(plaintext, KeyInfo.from_json(key.public()))


class AsyncGateway:
    """The gateway engine in-process, for asyncio code."""

    def __init__(self, config: ConfigSource = None, *, transport: Transport | None = None) -> None:
        self.engine = Engine(resolve_config(config), transport=transport)
        backend = LocalBackend(self.engine)
        self.chat: AsyncChat[LocalChatCompletion, AsyncChunkStream, float] = AsyncChat(backend)
        self.responses: AsyncResponses[LocalResponse, AsyncResponseEvents, float] = AsyncResponses(
            backend
        )
        self.embeddings: AsyncEmbeddings[LocalEmbeddings, float] = AsyncEmbeddings(backend)
        self.models: AsyncModels[float] = AsyncModels(backend)
        self.spend = AsyncSpend(backend)
        self.keys = AsyncKeys(backend)
        self.files: AsyncFiles[float] = AsyncFiles(backend)
        self.batches: AsyncBatches[float] = AsyncBatches(backend)

    async def aclose(self) -> None:
        await self.engine.aclose()

    async def __aenter__(self) -> AsyncGateway:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


# --- sync facade ----------------------------------------------------------------------------


class _LoopThread:
    """An event loop on a daemon thread; coroutines are run there and awaited from here."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="llm-gateway", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, R]) -> R:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self.loop.close()


class _AsyncItems(Protocol[Item_co]):
    """What a blocking iterator drives: ``AsyncChunkStream`` or ``AsyncResponseEvents``."""

    info: Call

    @property
    def facts(self) -> GatewayFacts: ...

    def __aiter__(self) -> AsyncIterator[Item_co]: ...

    async def aclose(self) -> None: ...


class BlockingStream(Generic[Item]):
    """Synchronous iterator over a streamed answer's items, run on the gateway's loop thread."""

    def __init__(self, stream: _AsyncItems[Item], runner: _LoopThread) -> None:
        self._aiter = aiter(stream)
        self._stream = stream
        self._runner = runner
        self.info = stream.info

    @property
    def facts(self) -> GatewayFacts:
        """Who answers the stream and, once it has ended, what it cost."""
        return self._stream.facts

    def __iter__(self) -> Iterator[Item]:
        return self

    def __next__(self) -> Item:
        try:
            return self._runner.run(anext(self._aiter))  # type: ignore[arg-type]
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        self._runner.run(self._stream.aclose())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class ChunkIterator(BlockingStream[ChatCompletionChunk]):
    """Synchronous iterator over a streaming answer's chunks."""


class ResponseEventIterator(BlockingStream[ResponseStreamEvent]):
    """Synchronous iterator over a streamed response's events."""


class BlockingBackend:
    """``LocalBackend`` driven from synchronous code: each call runs on the loop thread."""

    def __init__(self, inner: LocalBackend, runner: _LoopThread) -> None:
        self._inner = inner
        self._runner = runner
        self._run = runner.run

    def complete(self, request: ModelRequest) -> LocalChatCompletion:
        return self._run(self._inner.complete(request))

    def stream(self, request: ModelRequest) -> ChunkIterator:
        return ChunkIterator(self._run(self._inner.stream(request)), self._runner)

    def embed(self, request: ModelRequest) -> LocalEmbeddings:
        return self._run(self._inner.embed(request))

    def models(self, timeout: object = None) -> list[Model]:
        return self._run(self._inner.models(timeout))

    def respond(self, request: ModelRequest) -> LocalResponse:
        return self._run(self._inner.respond(request))

    def respond_stream(self, request: ModelRequest) -> ResponseEventIterator:
        return ResponseEventIterator(self._run(self._inner.respond_stream(request)), self._runner)

    def stored_response(
        self, method: str, response_id: str, timeout: object = None
    ) -> LocalResponse | ResponseDeleted:
        return self._run(self._inner.stored_response(method, response_id, timeout))

    def report(self, group_by: str, since: Moment, until: Moment, key_id: str | None) -> Any:
        return self._run(self._inner.report(group_by, since, until, key_id))

    def page(
        self, since: Moment, until: Moment, key_id: str | None, size: int, cursor: str | None
    ) -> Any:
        return self._run(self._inner.page(since, until, key_id, size, cursor))

    def create_key(self, spec: dict[str, Any]) -> Any:
        return self._run(self._inner.create_key(spec))

    def list_keys(self) -> Any:
        return self._run(self._inner.list_keys())

    def revoke_key(self, key_id: str) -> Any:
        return self._run(self._inner.revoke_key(key_id))

    def rotate_key(self, key_id: str) -> Any:
        return self._run(self._inner.rotate_key(key_id))

    def batch_api(self, call: BatchCall) -> Any:
        return self._run(self._inner.batch_api(call))


class Gateway:
    """The gateway engine in-process, for synchronous code."""

    def __init__(self, config: ConfigSource = None, *, transport: Transport | None = None) -> None:
        self._runner = _LoopThread()
        self._async = AsyncGateway(config, transport=transport)
        self.engine = self._async.engine
        backend = BlockingBackend(LocalBackend(self.engine), self._runner)
        self.chat: Chat[LocalChatCompletion, ChunkIterator, float] = Chat(backend)
        self.responses: Responses[LocalResponse, ResponseEventIterator, float] = Responses(backend)
        self.embeddings: Embeddings[LocalEmbeddings, float] = Embeddings(backend)
        self.models: Models[float] = Models(backend)
        self.spend = Spend(backend)
        self.keys = Keys(backend)
        self.files: Files[float] = Files(backend)
        self.batches: Batches[float] = Batches(backend)

    def close(self) -> None:
        """Close upstream connections and stop the loop thread; safe to call twice."""
        if self._runner.loop.is_closed():
            return
        self._runner.run(self._async.aclose())
        self._runner.stop()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
