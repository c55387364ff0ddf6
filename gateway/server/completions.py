"""``POST /v1/completions``: OpenAI's legacy text completions, for every provider.

The engine answers a text completion in the chat shape (see providers/text_completions.py for
how each deployment is asked: its own /completions route, FIM, or chat); this route turns the
answer, or each streamed chunk, into the ``text_completion`` object clients expect. Keys,
limits, routing, retries, fallbacks, costs and the ledger (``operation: completions``) are the
chat route's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from starlette.responses import Response

from gateway.engine import Engine
from gateway.errors import GatewayError
from gateway.server.asgi import GatewayApp
from gateway.server.http import (
    Gatekeeper,
    apply_gateway_headers,
    call_response,
    error_response,
    new_call,
    stream_response,
)
from gateway.types import TEXT_COMPLETION_NATIVE, TEXT_COMPLETION_SUFFIX, TextCompletionRequest
from gateway.wire import JSON

# Chunk fields every stream has; a chunk with nothing else, no text and no finish says nothing.
_PLAIN_CHUNK = frozenset(
    {"id", "object", "created", "model", "system_fingerprint", "service_tier", "choices", "usage"}
)


def add_completions_routes(app: GatewayApp, engine: Engine, gate: Gatekeeper) -> None:
    """Register ``/v1/completions`` (and ``/completions``) on ``app``."""

    async def completions(request: Request) -> Response:
        call = new_call(request)
        call.operation = "completions"  # for metrics and logs, should it be refused early
        body: TextCompletionRequest | None = None
        try:
            body = await gate.parse(request, TextCompletionRequest, call)
            apply_gateway_headers(request, body, call)
            if body.stream:
                stream = await engine.chat_stream(body, call)
                return stream_response(stream, call, text_chunks(aiter(stream)))
            result = await engine.chat(body, call)
        except GatewayError as exc:
            engine.observe(call, exc)  # if refused before the engine saw it (auth, body, headers)
            if body is not None and exc.code == "unsupported_feature":
                exc.message += able_models(engine, body)
            return error_response(exc, call.headers())
        return call_response(text_completion(result), call)

    for prefix in ("/v1", ""):
        app.add_route(f"{prefix}/completions", completions, methods=["POST"])


def able_models(engine: Engine, body: TextCompletionRequest) -> str:
    """What a text completion no deployment could serve needs, and the models that can."""
    needs = body.needs()
    able = sorted(
        model
        for model, deployments in engine.router.deployments.items()
        if any(not dep.lacks(needs) for dep in deployments)
    )
    if TEXT_COMPLETION_NATIVE in needs:
        why = (
            "echo, best_of, logprobs, several prompts and token-id prompts need a deployment "
            "with its own /completions route (gpt-3.5-turbo-instruct, davinci-002, babbage-002, "
            "or capabilities: {completions: true})"
        )
    elif TEXT_COMPLETION_SUFFIX in needs:
        why = (
            "a suffix needs a deployment with its own /completions route or one that completes "
            "fill-in-the-middle (Mistral's codestral)"
        )
    else:
        why = "a text completion needs a deployment that serves chat or /completions"
    return f"; {why}; models that can serve this request: {', '.join(able) or 'none'}"


def text_completion(answer: JSON) -> JSON:
    """A chat.completion (the engine's shape) as a ``text_completion`` object."""
    out: JSON = {k: v for k, v in answer.items() if k != "choices"}
    out["object"] = "text_completion"
    out["choices"] = [
        text_choice(choice, choice.get("message"))
        for choice in answer.get("choices") or ()
        if isinstance(choice, dict)
    ]
    return out


def text_choice(choice: JSON, said: Any) -> JSON:
    """One chat choice (``said``: its message or delta) as a text completion choice. Log
    probabilities are kept only in the completions form (a provider's own route sent them)."""
    logprobs = choice.get("logprobs")
    text = said.get("content") if isinstance(said, dict) else None
    return {
        "text": text if isinstance(text, str) else "",
        "index": choice.get("index", 0),
        "logprobs": logprobs if isinstance(logprobs, dict) and "tokens" in logprobs else None,
        "finish_reason": choice.get("finish_reason"),
    }


def text_chunk(chunk: JSON) -> JSON | None:
    """A chat.completion.chunk as a streamed ``text_completion``; None for a chunk that says
    nothing a text completion has (the opening role, an empty delta)."""
    choices = [
        text_choice(choice, choice.get("delta"))
        for choice in chunk.get("choices") or ()
        if isinstance(choice, dict)
    ]
    said = any(c["text"] or c["finish_reason"] or c["logprobs"] for c in choices)
    if not said and not chunk.get("usage") and set(chunk) <= _PLAIN_CHUNK:
        return None
    out: JSON = {k: v for k, v in chunk.items() if k != "choices"}
    out["object"] = "text_completion"
    out["choices"] = choices
    return out


async def text_chunks(chunks: AsyncIterator[JSON]) -> AsyncIterator[JSON]:
    """A stream's chunks as streamed text completions."""
    async for chunk in chunks:
        out = text_chunk(chunk)
        if out is not None:
            yield out
