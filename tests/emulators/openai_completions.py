"""The OpenAI emulator with OpenAI's legacy ``/v1/completions`` route, strict like the real one.

Quirks kept from the real API: an argument the route does not know is a 400 ("Unrecognized
request argument supplied"); a chat model is a 404 ("This is a chat model and not supported
in the v1/completions endpoint"); ``max_tokens`` defaults to 16; ``stream_options`` needs
``stream``; answers and chunks are ``text_completion`` objects (the same shape streamed or
not), with ``usage: null`` on each chunk and a last ``choices: []`` chunk carrying the usage
when ``include_usage`` is set.

The completion of a prompt is ``" echo: <prompt>"`` (``" echo: <prompt> ... <suffix>"`` with
a suffix), one token a word; ``echo`` puts the prompt in front, ``logprobs`` adds a
``-0.1`` for every token.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.emulators.common import fault_response, json_response, sse, sse_response
from tests.emulators.openai_api import OpenAIEmulator, error

# CreateCompletionRequest's properties in OpenAI's spec.
COMPLETION_FIELDS = frozenset(
    {
        "model", "prompt", "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs",
        "max_tokens", "n", "presence_penalty", "seed", "stop", "stream", "stream_options",
        "suffix", "temperature", "top_p", "user",
    }
)  # fmt: skip
CHAT_MODELS = ("gpt-4", "gpt-5", "o1", "o3", "o4", "chatgpt")


def prompts_of(prompt: Any) -> list[str]:
    """The prompts as text (token ids written as numbers)."""
    if isinstance(prompt, str):
        return [prompt]
    if prompt and isinstance(prompt[0], int):
        return [" ".join(map(str, prompt))]
    return [p if isinstance(p, str) else " ".join(map(str, p)) for p in prompt]


def text_completion(body: dict[str, Any]) -> dict[str, Any]:
    """The deterministic answer to a /completions ``body``."""
    limit = body.get("max_tokens", 16)
    choices: list[dict[str, Any]] = []
    prompt_tokens = completion_tokens = 0
    for prompt in prompts_of(body["prompt"]):
        prompt_tokens += len(prompt.split())
        for _ in range(body.get("n") or 1):
            words = f"echo: {prompt}".split()
            if body.get("suffix"):
                words += ["...", body["suffix"]]
            finish = "stop"
            if limit is not None and len(words) > limit:
                words, finish = words[:limit], "length"
            completion_tokens += len(words) * max(body.get("best_of") or 1, 1)
            text = " " + " ".join(words)
            logprobs = None
            if body.get("logprobs") is not None:
                logprobs = {
                    "tokens": [" " + w for w in words],
                    "token_logprobs": [-0.1] * len(words),
                    "top_logprobs": [{" " + w: -0.1} for w in words],
                    "text_offset": list(range(len(words))),
                }
            if body.get("echo"):
                text = prompt + text
            choices.append(
                {"text": text, "index": len(choices), "logprobs": logprobs, "finish_reason": finish}
            )
    return {
        "id": "cmpl-emulated",
        "object": "text_completion",
        "created": int(time.time()),
        "model": body["model"],
        "system_fingerprint": "fp_emulated",
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def text_chunks(answer: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """The SSE chunks OpenAI would send for ``answer``: a word at a time."""
    head = {k: answer[k] for k in ("id", "object", "created", "model", "system_fingerprint")}
    extra = {"usage": None} if include_usage else {}
    out = []
    for choice in answer["choices"]:
        pieces = choice["text"].split(" ")
        for k, piece in enumerate(pieces):
            text = piece if k == 0 else " " + piece
            item = {"text": text, "index": choice["index"], "logprobs": None}
            out.append({**head, "choices": [{**item, "finish_reason": None}], **extra})
        out.append(
            {
                **head,
                "choices": [
                    {
                        "text": "",
                        "index": choice["index"],
                        "logprobs": None,
                        "finish_reason": choice["finish_reason"],
                    }
                ],
                **extra,
            }
        )
    if include_usage:
        out.append({**head, "choices": [], "usage": answer["usage"]})
    return out


class CompletionsEmulator(OpenAIEmulator):
    """The OpenAI API under /v1, with ``/v1/completions`` too."""

    def __init__(self, model_suffix: str = "-2024-08-06") -> None:
        super().__init__(model_suffix)
        self.app.router.routes.append(Route("/v1/completions", self.completions, methods=["POST"]))

    async def completions(self, request: Request) -> Response:
        rec = await self.record(request)
        if (denied := self.check_auth(request)) is not None:
            return denied
        fault = await self.take_fault()
        if fault is not None and fault.cut_after is None:
            return fault_response(fault)
        body = rec.body
        if not isinstance(body, dict) or "prompt" not in body or "model" not in body:
            return error(400, "Missing required parameter: 'prompt'.", "invalid_request_error")
        unknown = sorted(set(body) - COMPLETION_FIELDS)
        if unknown:
            return error(
                400,
                f"Unrecognized request argument supplied: {unknown[0]}",
                "invalid_request_error",
            )
        model = str(body["model"])
        if model.startswith(CHAT_MODELS) or model == "gpt-3.5-turbo":
            return error(
                404,
                "This is a chat model and not supported in the v1/completions endpoint. "
                "Did you mean to use v1/chat/completions?",
                "invalid_request_error",
                param="model",
            )
        if body.get("stream_options") is not None and not body.get("stream"):
            return error(
                400,
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                "invalid_request_error",
                param="stream_options",
            )
        answer = text_completion(body)
        if body.get("stream"):
            include = bool((body.get("stream_options") or {}).get("include_usage"))
            events = [sse(c) for c in text_chunks(answer, include)] + [b"data: [DONE]\n\n"]
            return sse_response(events, fault=fault)
        return json_response(answer)
