"""Prompt-prefix affinity: requests that share a prompt prefix go to the same deployment, so
the provider's own prompt cache (OpenAI, Azure OpenAI, Mistral bill cached prefix tokens at a
fraction of the input price, on the deployment that saw the prefix) can serve them.

The ``prefix-affinity`` strategy orders a model's deployments by rendezvous (highest random
weight) hashing of the request's affinity key: every replica computes the same order without
sharing state, a deployment added or removed moves only the keys that it wins or won, and when
the first deployment is unhealthy the Plan goes on to the key's second choice, as usual.
"""

from __future__ import annotations

import hashlib
import math

import orjson

from gateway.types import (
    ChatCompletionRequest,
    EmbeddingRequest,
    FimCompletionRequest,
    TextCompletionRequest,
)
from providers.base import Deployment

# How much of a FIM prompt names its prefix (a file's head, in practice).
FIM_PREFIX_CHARS = 2048


def affinity_key(
    request: ChatCompletionRequest
    | FimCompletionRequest
    | TextCompletionRequest
    | EmbeddingRequest,
) -> str | None:
    """What names the request's shared prefix: its ``prompt_cache_key`` (OpenAI's field) if
    it sends one; else its tools and leading system/developer messages (or, without any, its
    first message); for FIM, the head of the prompt. None: no affinity (embeddings)."""
    extra = request.model_extra or {}
    named = extra.get("prompt_cache_key")
    if isinstance(named, str) and named:
        return "key:" + named
    if isinstance(request, FimCompletionRequest):
        data = request.prompt[:FIM_PREFIX_CHARS].encode()
    elif isinstance(request, TextCompletionRequest):
        if not isinstance(request.prompt, str):
            return None
        data = request.prompt[:FIM_PREFIX_CHARS].encode()
    elif isinstance(request, ChatCompletionRequest):
        head = []
        for message in request.messages:
            if message.role not in ("system", "developer"):
                break
            head.append(message)
        head = head or request.messages[:1]
        data = orjson.dumps(
            [request.tools or [], [m.model_dump(exclude_none=True) for m in head]],
            option=orjson.OPT_SORT_KEYS,
        )
    else:
        return None
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def rendezvous_order(key: str, deployments: list[Deployment]) -> list[Deployment]:
    """``deployments`` in the order ``key`` prefers them: weighted rendezvous hashing (each
    deployment scores ``-weight / ln(u)`` for a uniform ``u`` drawn from hash(key, id))."""
    if len(deployments) <= 1:
        return list(deployments)

    def score(dep: Deployment) -> float:
        digest = hashlib.blake2b(f"{key}\0{dep.id}".encode(), digest_size=8).digest()
        u = (int.from_bytes(digest, "big") + 1) / (2**64 + 2)  # in (0, 1)
        return -dep.weight / math.log(u)

    return sorted(deployments, key=score, reverse=True)
