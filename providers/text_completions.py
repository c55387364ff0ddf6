"""Legacy text completions (OpenAI's ``/completions``) for every adapter.

Inside the gateway a text completion travels in the chat shape, like a FIM answer does: each
choice's ``text`` is its message's (or delta's) content, so the engine prices, limits, streams
and records it as it does chat. A deployment answers it in the first of three ways that serves
the request (``Deployment.completion_mode``):

- ``native``: the provider's own ``/completions`` route, the body unchanged (OpenAI's
  gpt-3.5-turbo-instruct, davinci-002 and babbage-002; any server declared with
  ``capabilities: {completions: true}``);
- ``fim``: fill-in-the-middle, ``prompt`` and ``suffix`` as they are (Mistral's codestral);
- ``chat``: the prompt as one user message.

Echo, ``best_of``, ``logprobs``, several prompts and token-id prompts need the native route; a
suffix needs the native route or FIM.
"""

from __future__ import annotations

from typing import Literal

from gateway.types import TEXT_COMPLETION, TEXT_COMPLETION_NATIVE, TEXT_COMPLETION_SUFFIX
from gateway.wire import JSON

CompletionMode = Literal["native", "fim", "chat"]
TEXT_COMPLETION_NEEDS = frozenset({TEXT_COMPLETION, TEXT_COMPLETION_NATIVE, TEXT_COMPLETION_SUFFIX})
# OpenAI's models with the /completions route (dated snapshots included).
NATIVE_MODELS = ("gpt-3.5-turbo-instruct", "gpt-35-turbo-instruct", "davinci-002", "babbage-002")
# Fields of /completions that neither chat nor FIM has (they need the native route).
_COMPLETIONS_ONLY = ("prompt", "suffix", "echo", "best_of", "logprobs")


class NativeCompletion:
    """The ``UpstreamRequest.context`` of a request sent to a provider's own ``/completions``
    route: its answer is in the text_completion shape."""


NATIVE_COMPLETION = NativeCompletion()


def has_native_route(model: str) -> bool:
    """Whether an OpenAI (or Azure OpenAI) model is served on the ``/completions`` route."""
    return model.lower().startswith(NATIVE_MODELS)


def serves(mode: CompletionMode, needs: frozenset[str]) -> bool:
    """Whether answering in ``mode`` honours a text completion that ``needs`` these."""
    if mode == "native":
        return True
    if TEXT_COMPLETION_NATIVE in needs:
        return False
    if mode == "fim":
        return "multiple_choices" not in needs
    return TEXT_COMPLETION_SUFFIX not in needs


def chat_body(body: JSON) -> JSON:
    """A text completion as a chat request: the prompt as one user message; the other fields
    (sampling, stop, ``n``, ``user``, …) have the same names in chat."""
    out = {k: v for k, v in body.items() if k not in _COMPLETIONS_ONLY}
    prompt = body.get("prompt")
    if isinstance(prompt, list):  # one prompt in a list (several need the native route)
        prompt = prompt[0] if prompt else ""
    out["messages"] = [{"role": "user", "content": prompt if isinstance(prompt, str) else ""}]
    return out


def fim_body(body: JSON) -> JSON:
    """A text completion as a FIM request: ``prompt`` and ``suffix`` as they are."""
    out = {k: v for k, v in body.items() if k not in ("echo", "best_of", "logprobs")}
    prompt = out.get("prompt")
    if isinstance(prompt, list):
        out["prompt"] = prompt[0] if prompt else ""
    if out.get("n") == 1:
        del out["n"]  # FIM answers once; asking once is no request to drop
    return out


def chat_shaped(answer: JSON) -> JSON:
    """A text_completion answer in the chat.completion shape, in place: ``text`` becomes the
    message's content; ``logprobs`` (in the completions form) stay on the choice."""
    for choice in answer.get("choices") or ():
        if isinstance(choice, dict) and "message" not in choice:
            choice["message"] = {"role": "assistant", "content": choice.pop("text", None) or ""}
    answer["object"] = "chat.completion"
    return answer


def chat_chunk(chunk: JSON) -> JSON:
    """A text_completion stream chunk as a chat.completion.chunk, in place."""
    for choice in chunk.get("choices") or ():
        if isinstance(choice, dict) and "delta" not in choice:
            choice["delta"] = {"content": choice.pop("text", None) or ""}
    chunk["object"] = "chat.completion.chunk"
    return chunk


__all__ = [
    "NATIVE_COMPLETION",
    "TEXT_COMPLETION_NEEDS",
    "CompletionMode",
    "chat_body",
    "chat_chunk",
    "chat_shaped",
    "fim_body",
    "has_native_route",
    "serves",
]
