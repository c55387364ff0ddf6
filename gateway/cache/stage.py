"""The response cache as a stage of the pipeline: for one request, a ``CacheTicket`` says
whether it may be answered from the cache, under which key, and whether its answer may be
kept; ``get`` reads an answer, ``keep`` stores one after its call ended well.

The engine asks for a ticket per operation (``chat_ticket``, the Responses API's too,
``fim_ticket``, ``embeddings_ticket``); another operation builds its canonical form
(``gateway.cache.keys``) and its reason not to cache, and calls ``ticket``. The rules are in
docs/caching.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

import orjson

from gateway.cache.keys import cache_key, chat_form, embeddings_form, fim_form, responses_form
from gateway.cache.store import CacheStore, MemoryStore, RedisStore
from gateway.config import CacheConfig, GatewayConfig
from gateway.errors import InvalidRequestError
from gateway.types import (
    ChatCompletionRequest,
    EmbeddingRequest,
    FimCompletionRequest,
    TextCompletionRequest,
)
from gateway.wire import JSON

CacheStatus = Literal["hit", "miss", "bypass"]
HEADER = "x-gateway-cache"
MAX_TTL = 30 * 86400.0
# Why an answer is not kept although the request could be: it is not the whole answer.
_UNFINISHED = frozenset({"content_filter", None})


@dataclass(slots=True)
class CacheTicket:
    """What the cache does for one request: ``reads`` (look it up), ``writes`` (keep its
    answer), under ``key`` for ``ttl`` seconds; ``status`` is what the caller is told."""

    status: CacheStatus
    key: str = ""
    ttl: float = 0.0
    reads: bool = False
    writes: bool = False
    reason: str | None = None  # why the request is not answered from the cache
    answer: JSON | None = None  # the answer to keep once the call has ended well
    stored_bytes: int = 0
    region: str | None = None  # on a hit: the region of the deployment that produced it


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """A kept answer, what the call that produced it cost (None: unknown) and the region of
    the deployment that produced it (None: it has none, or the entry predates regions)."""

    response: JSON
    cost: Decimal | None
    region: str | None = None


@dataclass(frozen=True, slots=True)
class Directive:
    """The caller's ``x-gateway-cache`` header: ``no-cache`` (answer afresh, keep the answer),
    ``no-store`` (neither read nor keep), ``ttl=<seconds>``, ``sampled`` (cache even though
    the answer is sampled); comma-separated."""

    read: bool = True
    write: bool = True
    ttl: float | None = None
    sampled: bool = False

    @classmethod
    def parse(cls, header: str | None) -> Directive:
        if not header:
            return _PLAIN
        read = write = True
        ttl: float | None = None
        sampled = False
        for part in header.lower().split(","):
            name, _, value = part.strip().partition("=")
            if name == "no-cache":
                read = False
            elif name == "no-store":
                read = write = False
            elif name == "sampled":
                sampled = True
            elif name == "ttl":
                try:
                    ttl = float(value)
                except ValueError:
                    ttl = 0.0
                if not 0 < ttl <= MAX_TTL:
                    raise InvalidRequestError(
                        f"{HEADER}: ttl must be a number of seconds above 0 and at most "
                        f"{int(MAX_TTL)}",
                        param=HEADER,
                    )
        return cls(read, write, ttl, sampled)


_PLAIN = Directive()


@dataclass(frozen=True, slots=True)
class Tenant:
    """Who is asking, as far as sharing answers goes."""

    key_id: str | None = None
    team: str | None = None
    end_user: str | None = None


class ResponseCache:
    """The exact response cache: the settings in force and where answers are kept."""

    def __init__(self, config: GatewayConfig, store: CacheStore) -> None:
        self.config = config
        self.settings: CacheConfig = config.cache
        self.store = store

    @classmethod
    def build(
        cls, config: GatewayConfig, clock: Callable[[], float] = time.monotonic
    ) -> ResponseCache:
        settings = config.cache
        store: CacheStore
        if settings.backend == "redis" and config.redis is not None:
            store = RedisStore.from_url(config.redis.url, config.redis.key_prefix + "cache:")
        else:
            store = MemoryStore(settings.memory_max_bytes, clock)
        return cls(config, store)

    def reconfigure(self, config: GatewayConfig) -> None:
        """Take the settings of a reloaded configuration (the store and what it holds stay)."""
        self.config = config
        self.settings = config.cache

    # -- tickets ---------------------------------------------------------------------------
    def chat_ticket(
        self, request: ChatCompletionRequest, tenant: Tenant, directive: Directive
    ) -> CacheTicket:
        """A chat completion, or a Responses API request (run as chat, ``operation:
        responses``), keyed by its Responses form and kept apart from chat's answers."""
        if request.operation == "responses":
            return self._responses_ticket(request, tenant, directive)
        refusal = None
        if request.n is not None and request.n > 1:
            refusal = "n > 1 asks for several different answers"
        elif "audio" in ((request.model_extra or {}).get("modalities") or ()):
            refusal = "audio answers are not cached"
        else:
            refusal = self._sampled(request.model, request.temperature, directive)
        return self.ticket(
            "chat",
            request.model,
            lambda: chat_form(request.upstream_body()),
            tenant,
            directive,
            refusal,
        )

    def _responses_ticket(
        self, request: ChatCompletionRequest, tenant: Tenant, directive: Directive
    ) -> CacheTicket:
        body = request.cache_body()
        builtin = sorted(
            {str(t.get("type")) for t in body.get("tools") or () if t.get("type") != "function"}
        )
        if builtin:
            refusal: str | None = (
                f"built-in tools ({', '.join(builtin)}) run by the provider give answers that "
                "change"
            )
        elif body.get("background"):
            refusal = "background responses are not cached"
        else:
            refusal = self._sampled(request.model, request.temperature, directive)
        return self.ticket(
            "responses",
            request.model,
            lambda: responses_form(body),
            tenant,
            directive,
            refusal,
        )

    def completions_ticket(
        self, request: TextCompletionRequest, tenant: Tenant, directive: Directive
    ) -> CacheTicket:
        """A legacy text completion: cached like FIM, by its whole body."""
        if request.n > 1:
            refusal: str | None = "several prompts, n or best_of ask for several answers"
        else:
            refusal = self._sampled(request.model, request.temperature, directive)
        return self.ticket(
            "completions",
            request.model,
            lambda: fim_form(request.model_dump(mode="json", exclude_none=True, by_alias=True)),
            tenant,
            directive,
            refusal,
        )

    def fim_ticket(
        self, request: FimCompletionRequest, tenant: Tenant, directive: Directive
    ) -> CacheTicket:
        refusal = self._sampled(request.model, request.temperature, directive)
        return self.ticket(
            "fim",
            request.model,
            lambda: fim_form(request.upstream_body()),
            tenant,
            directive,
            refusal,
        )

    def embeddings_ticket(
        self, request: EmbeddingRequest, tenant: Tenant, directive: Directive
    ) -> CacheTicket:
        return self.ticket(
            "embeddings",
            request.model,
            lambda: embeddings_form(request.upstream_body()),
            tenant,
            directive,
            None,
        )

    def ticket(
        self,
        operation: str,
        model: str,
        form: Callable[[], JSON],
        tenant: Tenant,
        directive: Directive,
        refusal: str | None,
    ) -> CacheTicket:
        """The ticket of a request of ``operation`` for ``model``: ``form`` makes its
        canonical form (only when it is needed), ``refusal`` says why it must not be cached."""
        enabled, ttl = self._model_settings(model)
        if not enabled:
            return CacheTicket("bypass", reason="the cache is off for this model")
        if refusal is not None:
            return CacheTicket("bypass", reason=refusal)
        if not directive.read and not directive.write:
            return CacheTicket("bypass", reason=f"{HEADER}: no-store")
        key = cache_key(self.scope(tenant), operation, form())
        return CacheTicket(
            "miss" if directive.read else "bypass",
            key,
            directive.ttl or ttl,
            reads=directive.read,
            writes=directive.write,
            reason=None if directive.read else f"{HEADER}: no-cache",
        )

    def scope(self, tenant: Tenant) -> str:
        """Who shares answers with this caller: its team (a key without one: the key), its
        key, or everyone; with ``per_user``, each end user apart."""
        mode = self.settings.scope
        key = f"key:{tenant.key_id or '-'}"
        if mode == "global":
            scope = "global"
        elif mode == "team" and tenant.team:
            scope = f"team:{tenant.team}"
        else:
            scope = key
        if self.settings.per_user:
            scope += f"|user:{tenant.end_user or '-'}"
        return scope

    def _model_settings(self, model: str) -> tuple[bool, float]:
        settings = self.settings
        own = self.config.models[model].cache if model in self.config.models else None
        if own is None:
            return settings.enabled, settings.ttl_seconds
        enabled = settings.enabled if own.enabled is None else own.enabled
        return enabled, own.ttl_seconds or settings.ttl_seconds

    def _sampled(self, model: str, temperature: float | None, directive: Directive) -> str | None:
        """Why a sampled answer is not cached (None: it may be). No temperature is the
        provider's default, which samples."""
        if temperature == 0 or directive.sampled:
            return None
        own = self.config.models[model].cache if model in self.config.models else None
        allowed = own.sampled if own is not None and own.sampled is not None else None
        if allowed if allowed is not None else self.settings.sampled:
            return None
        return "the answer is sampled (temperature above 0, or unset)"

    # -- reading and keeping ---------------------------------------------------------------
    async def get(self, ticket: CacheTicket) -> CachedAnswer | None:
        """The kept answer for ``ticket`` (None: none, or it is not to be read)."""
        if not ticket.reads:
            return None
        raw = await self.store.get(ticket.key)
        if raw is None:
            return None
        entry = orjson.loads(raw)
        cost = entry.get("cost")
        return CachedAnswer(
            entry["response"], None if cost is None else Decimal(cost), entry.get("region")
        )

    def keep(
        self,
        ticket: CacheTicket,
        cost: Decimal | None,
        usage: JSON | None,
        region: str | None = None,
    ) -> Coroutine[Any, Any, None] | None:
        """Keep ``ticket.answer`` (with what its call cost and the region of the deployment
        that produced it), if it is a whole answer within ``max_entry_bytes``. A memory store
        keeps it at once; for Redis, the coroutine to run in the background is returned."""
        answer = ticket.answer
        if answer is None or not ticket.writes or not ticket.key or not whole(answer):
            return None
        if answer.get("usage") is None and usage:
            answer = {**answer, "usage": usage}
        raw = orjson.dumps(
            {"response": answer, "cost": None if cost is None else str(cost), "region": region}
        )
        if len(raw) > self.settings.max_entry_bytes:
            return None
        ticket.stored_bytes = len(raw)
        store = self.store
        if isinstance(store, MemoryStore):
            store.put_now(ticket.key, raw, ticket.ttl)
            return None
        return store.put(ticket.key, raw, ticket.ttl)

    async def clear(self) -> int:
        """Forget every kept answer (an erasure: entries cannot be told apart by person)."""
        return await self.store.clear()

    async def aclose(self) -> None:
        await self.store.aclose()


def whole(answer: JSON) -> bool:
    """Whether ``answer`` is a complete one: an embeddings list, or choices that all finished
    for a reason other than a content filter."""
    if answer.get("object") == "list":
        return bool(answer.get("data"))
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices:
        return False
    return all(c.get("finish_reason") not in _UNFINISHED for c in choices)
