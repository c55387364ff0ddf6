"""The Responses API over the Engine: a request is run as the chat request it translates to
(so it is authorized, limited, routed, retried, priced and recorded exactly as chat is, as
``operation: responses``), and its answer is stored for ``previous_response_id`` and
``GET /v1/responses/{id}``, unless the caller sent ``store: false``.

Conversation state is the gateway's own: a later turn is sent to whichever provider serves
it with the earlier turns' items as messages, so a conversation may move between providers.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass

from gateway.call import Call
from gateway.engine import Engine
from gateway.errors import GatewayError, InvalidRequestError, NotFoundError
from gateway.governance.residency import narrow
from gateway.ledger.responses import (
    DatabaseResponseStore,
    MemoryResponseStore,
    Owner,
    ResponseStore,
    StoredResponse,
    retention,
)
from gateway.responses.convert import (
    NATIVE,
    EventWriter,
    ResponsesChatRequest,
    ResponsesRequest,
    chat_request,
    from_chat,
    from_native,
    new_id,
    stored_item,
)
from gateway.streams import ChunkStream
from gateway.wire import JSON

log = logging.getLogger("gateway.responses")
# Turns followed back through previous_response_id (a longer conversation is cut there).
MAX_TURNS = 1000
_services: weakref.WeakKeyDictionary[Engine, Responses] = weakref.WeakKeyDictionary()


def responses_for(engine: Engine) -> Responses:
    """The engine's Responses service (one per engine, shared by its server and library)."""
    service = _services.get(engine)
    if service is None:
        service = _services[engine] = Responses(engine)
    return service


def owner_of(call: Call) -> Owner:
    return Owner(call.key_id or "", call.team)


@dataclass(slots=True)
class ResponseStream:
    """An opened Responses stream: the chat stream under it and its typed events."""

    chunks: ChunkStream
    writer: EventWriter
    events: AsyncIterator[JSON]


class Responses:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.store: ResponseStore = (
            DatabaseResponseStore(engine.ledger.engine)
            if engine.ledger is not None
            else MemoryResponseStore()
        )

    def prepare(self, request: ResponsesRequest, history: list[JSON]) -> ResponsesChatRequest:
        return chat_request(request, history)

    async def history(
        self, owner: Owner, previous_id: str | None, call: Call | None = None
    ) -> list[JSON]:
        """The items of the conversation up to ``previous_id``: each earlier turn's input and
        output, oldest first. An id this caller cannot read is a 400 naming it.

        With ``call``, the residency of the earlier turns goes with it: the regions they were
        answered in (which the call's regions must allow, else 403 ``region_not_allowed``) and
        the regions they were restricted to (which restrict the call too)."""
        turns: list[StoredResponse] = []
        at = previous_id
        while at is not None and len(turns) < MAX_TURNS:
            stored = await self.store.get(owner, at)
            if stored is None:
                if not turns:
                    raise InvalidRequestError(
                        f"previous response with id '{at}' not found: it does not exist, has "
                        "expired, was deleted, was made with store: false, or belongs to "
                        "another key",
                        param="previous_response_id",
                        code="previous_response_not_found",
                    )
                break  # an earlier turn expired: the conversation starts after it
            turns.append(stored)
            at = stored.previous_id
        if call is not None:
            call.history_regions = frozenset(stored.region for stored in turns)
            call.history_policy = narrow(*(stored.regions for stored in turns))
        items: list[JSON] = []
        for stored in reversed(turns):
            items.extend(stored.input)
            items.extend(stored.response.get("output") or ())
        return items

    async def create(
        self, request: ResponsesRequest, chat: ResponsesChatRequest, call: Call
    ) -> JSON:
        """Run ``chat`` (``prepare``'s translation of ``request``) and answer with the
        response object, stored unless ``store`` is false."""
        created = int(time.time())
        result = await self.engine.chat(chat, call)
        native = result.pop(NATIVE, None)
        if isinstance(native, dict):
            response = from_native(new_id("resp"), request, native)
        else:
            response = from_chat(new_id("resp"), request, created, result)
        await self.save(request, response, call)
        return response

    async def stream(
        self, request: ResponsesRequest, chat: ResponsesChatRequest, call: Call
    ) -> ResponseStream:
        """Open ``chat`` as a stream; its events end with ``response.completed`` (the response
        is stored then). A failure is for the caller of ``events`` to report
        (``EventWriter.fail``)."""
        chunks = await self.engine.chat_stream(chat, call)
        writer = EventWriter(new_id("resp"), request, int(time.time()))

        async def events() -> AsyncIterator[JSON]:
            for event in writer.opening():
                yield event
            async for chunk in chunks:
                for event in writer.feed(chunk):
                    yield event
            closing = list(writer.finish())
            await self.save(request, writer.final(), call)
            for event in closing:
                yield event

        return ResponseStream(chunks, writer, events())

    async def save(self, request: ResponsesRequest, response: JSON, call: Call) -> None:
        if request.store is False:
            return
        items = [stored_item(item) for item in request.input_items()]
        created, expires = retention(self.engine.config.ledger.responses_retention_days)
        served = call.served_by
        stored = StoredResponse(
            response["id"],
            request.previous_response_id,
            items,
            response,
            end_user=call.end_user,
            tags=dict(call.tags) or None,
            region=served.region if served is not None else None,
            regions=call.regions,
        )
        try:
            await self.store.save(owner_of(call), stored, created, expires)
        except Exception:  # the answer stands; only a later turn cannot build on it
            log.exception("response %s could not be stored", response["id"])

    async def retrieve(self, owner: Owner, response_id: str) -> JSON:
        return (await self._stored(owner, response_id)).response

    async def input_items(self, owner: Owner, response_id: str) -> list[JSON]:
        return (await self._stored(owner, response_id)).input

    async def delete(self, owner: Owner, response_id: str) -> JSON:
        if not await self.store.delete(owner, response_id):
            raise not_found(response_id)
        return {"id": response_id, "object": "response.deleted", "deleted": True}

    async def _stored(self, owner: Owner, response_id: str) -> StoredResponse:
        stored = await self.store.get(owner, response_id)
        if stored is None:
            raise not_found(response_id)
        return stored


def not_found(response_id: str) -> GatewayError:
    return NotFoundError(
        f"response with id '{response_id}' not found", code="not_found", param="response_id"
    )
