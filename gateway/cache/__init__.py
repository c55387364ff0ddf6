"""The response cache: an exact cache of answers keyed by the canonical form of their request
(docs/caching.md)."""

from gateway.cache.keys import (
    cache_key,
    canonical_bytes,
    chat_form,
    embeddings_form,
    fim_form,
    responses_form,
)
from gateway.cache.replay import StreamCapture, replay_chunks
from gateway.cache.stage import (
    HEADER,
    CachedAnswer,
    CacheStatus,
    CacheTicket,
    Directive,
    ResponseCache,
    Tenant,
)
from gateway.cache.store import CacheStore, MemoryStore, RedisStore

__all__ = [
    "HEADER",
    "CacheStatus",
    "CacheStore",
    "CacheTicket",
    "CachedAnswer",
    "Directive",
    "MemoryStore",
    "RedisStore",
    "ResponseCache",
    "StreamCapture",
    "Tenant",
    "cache_key",
    "canonical_bytes",
    "chat_form",
    "embeddings_form",
    "fim_form",
    "replay_chunks",
    "responses_form",
]
