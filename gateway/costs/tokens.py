"""Offline token counting, to estimate usage when a stream ends without one.

Every table ships inside an installed package, so nothing is downloaded, ever:

- OpenAI and Azure OpenAI models: ``bpe-openai`` (a Rust BPE with OpenAI's ``o200k_base`` and
  ``cl100k_base`` tables in its wheel) — ``o200k_base`` for gpt-4o, gpt-4.1, gpt-5 and the
  o-series, ``cl100k_base`` for gpt-4, gpt-3.5 and the embedding models.
- Mistral models: ``mistral-common``'s bundled tokenizer files. It bundles one Tekken table
  (``tekken_240718``: Nemo, Ministral, Small 24.09, Pixtral 12B) and the SentencePiece ones of
  older models (v7: Large 24.11; v3: Large 24.07, Codestral 24.05, Mixtral 8x22B; v2; v1).
  Newer models (Small 3.x, Medium 3, Codestral 25.x, Magistral, Devstral, Large 3) use later
  Tekken versions that it does not bundle; they are counted with ``tekken_240718``, the
  closest table, so their counts are close but not exact. ``mistral-embed`` is counted with
  v1 (Mistral 7B's table), a guess.

Tokenizers load on first use (the Tekken table takes about a second) and stay loaded. If one
cannot load, counting falls back to characters / 4 and says so (``estimated_by: "chars/4"``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from importlib.resources import files
from typing import Any, Protocol

import orjson

log = logging.getLogger("gateway.costs")

# Texts longer than this (characters) are counted in a worker thread.
THREAD_THRESHOLD = 4096
# OpenAI's documented chat overhead (the cookbook's num_tokens_from_messages): 3 tokens per
# message besides its role, name and content, 1 more for a name, and 3 priming the reply.
# Mistral's chat template is of the same size, so the same figures serve there.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
TOKENS_PER_REPLY = 3
FALLBACK = "chars/4"

_O200K = re.compile(r"^(?:gpt-4o|chatgpt-4o|gpt-4\.1|gpt-4\.5|gpt-5|o\d|gpt-oss|codex)")
_CL100K = re.compile(r"^(?:gpt-4|gpt-3\.5|gpt-35|text-embedding-3|text-embedding-ada)")
_MISTRAL = re.compile(
    r"^(?:mistral|codestral|ministral|magistral|devstral|pixtral|voxtral|open-mi[sx]tral)"
)
# mistral-common's bundled files, by the models that use them (the rest: tekken_240718).
_MISTRAL_FILES: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"^(?:mistral-large-2411|mistral-large-latest|pixtral-large)"),
        "mistral_instruct_tokenizer_241114.model.v7",
    ),
    (
        re.compile(
            r"^(?:mistral-large-2407|codestral-2405|codestral-22b|codestral-mamba"
            r"|open-codestral-mamba|open-mixtral-8x22b|mistral-tiny-2407)"
        ),
        "mistral_instruct_tokenizer_240323.model.v3",
    ),
    (
        re.compile(
            r"^(?:mistral-large-2402|mistral-small-2402|mistral-small-2312|open-mixtral-8x7b)"
        ),
        "mistral_instruct_tokenizer_240216.model.v2",
    ),
    (
        re.compile(r"^(?:mistral-embed|open-mistral-7b|mistral-tiny-2312|mistral-medium-2312)"),
        "tokenizer.model.v1",
    ),
)
_TEKKEN = "tekken_240718.json"
# bpe-openai refuses pieces over 200k tokens; one character is at most 4 tokens.
_BPE_PIECE = 48_000


class Tokenizer(Protocol):
    """Counts the tokens of a text with one table."""

    name: str

    def count(self, text: str) -> int: ...


def tokenizer_name(family: str, model: str) -> str:
    """Which table counts ``model``'s tokens: o200k_base, cl100k_base or mistral:<file>.

    The model name decides where it is recognisable (an OpenAI-compatible server may serve a
    Mistral model); otherwise ``family``, the provider's (``Provider.tokenizer``: ``openai``
    or ``mistral``), does, defaulting to o200k_base.
    """
    name = model.strip().lower()
    if _O200K.match(name):
        return "o200k_base"
    if _CL100K.match(name):
        return "cl100k_base"
    if _MISTRAL.match(name) or family == "mistral":
        for pattern, filename in _MISTRAL_FILES:
            if pattern.match(name):
                return f"mistral:{filename}"
        return f"mistral:{_TEKKEN}"
    return "o200k_base"


_loaded: dict[str, Tokenizer] = {}
_loading = threading.Lock()


def load_tokenizer(family: str, model: str) -> Tokenizer:
    """The (cached) tokenizer for a model; the chars/4 fallback if its table cannot load."""
    name = tokenizer_name(family, model)
    tokenizer = _loaded.get(name)
    if tokenizer is not None:
        return tokenizer
    with _loading:
        tokenizer = _loaded.get(name)
        if tokenizer is None:
            try:
                tokenizer = _build(name)
            except Exception as exc:  # a broken install must not break requests
                log.warning(
                    "tokenizer %s cannot be loaded (%s: %s); estimating tokens as characters/4",
                    name,
                    type(exc).__name__,
                    exc,
                )
                tokenizer = CharsPerToken()
            _loaded[name] = tokenizer
    return tokenizer


def is_loaded(family: str, model: str) -> bool:
    return tokenizer_name(family, model) in _loaded


def count_tokens_sync(text: str, family: str, model: str) -> int:
    """Tokens in ``text`` for ``model`` (blocking; see ``count_tokens``)."""
    return load_tokenizer(family, model).count(text) if text else 0


async def count_tokens(text: str, family: str, model: str) -> int:
    """Tokens in ``text`` for ``model``, counted in a worker thread when the text is long or
    the tokenizer still has to load, so the event loop is never blocked for long."""
    if len(text) > THREAD_THRESHOLD or not is_loaded(family, model):
        return await asyncio.to_thread(count_tokens_sync, text, family, model)
    return count_tokens_sync(text, family, model)


def estimate_usage(
    messages: Sequence[Mapping[str, Any]],
    completion_text: str | Sequence[str],
    family: str,
    model: str,
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """A usage dict in OpenAI's shape, counted offline, plus ``estimated_by`` (the table used).

    Prompt: each message's role, name and text (content parts of type text, tool-call names
    and arguments) plus OpenAI's per-message overhead, and the tool definitions as JSON;
    images and audio are not counted. Completion: ``completion_text`` (one string per choice).
    """
    tokenizer = load_tokenizer(family, model)
    prompt = TOKENS_PER_REPLY
    for message in messages:
        prompt += TOKENS_PER_MESSAGE + sum(tokenizer.count(t) for t in _message_texts(message))
        if isinstance(message.get("role"), str):
            prompt += tokenizer.count(message["role"])
        if isinstance(message.get("name"), str):
            prompt += tokenizer.count(message["name"]) + TOKENS_PER_NAME
    if tools:
        prompt += tokenizer.count(orjson.dumps(list(tools)).decode())
    texts = [completion_text] if isinstance(completion_text, str) else list(completion_text)
    completion = sum(tokenizer.count(t) for t in texts if t)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "estimated_by": tokenizer.name,
    }


async def estimate_usage_async(
    messages: Sequence[Mapping[str, Any]],
    completion_text: str | Sequence[str],
    family: str,
    model: str,
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """``estimate_usage`` in a worker thread when there is much text or a table to load."""
    size = sum(len(t) for m in messages for t in _message_texts(m))
    size += (
        len(completion_text) if isinstance(completion_text, str) else sum(map(len, completion_text))
    )
    if size > THREAD_THRESHOLD or not is_loaded(family, model):
        return await asyncio.to_thread(
            estimate_usage, messages, completion_text, family, model, tools=tools
        )
    return estimate_usage(messages, completion_text, family, model, tools=tools)


def _message_texts(message: Mapping[str, Any]) -> Iterator[str]:
    content = message.get("content")
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                yield part["text"]
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(function, Mapping):
            for key in ("name", "arguments"):
                if isinstance(function.get(key), str):
                    yield function[key]


# -- the tables --------------------------------------------------------------------------------


class CharsPerToken:
    """The fallback: one token per four characters, rounded up."""

    name = FALLBACK

    def count(self, text: str) -> int:
        return math.ceil(len(text) / 4)


class BpeOpenAITokenizer:
    """OpenAI's BPE tables through bpe-openai's Rust implementation."""

    def __init__(self, encoding: str) -> None:
        self.name = encoding
        # Importing bpe_openai reads its tables with a deprecated importlib call.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import bpe_openai

            self._encoding = bpe_openai.get_encoding(encoding)

    def count(self, text: str) -> int:
        return sum(len(self._encoding.encode_ordinary(piece)) for piece in _pieces(text))


class MistralTokenizer:
    """A tokenizer file bundled with mistral-common (Tekken JSON or SentencePiece model)."""

    def __init__(self, filename: str) -> None:
        path = str(files("mistral_common").joinpath("data", filename))
        self.name = f"mistral:{filename}"
        if filename.startswith("tekken"):
            from mistral_common.tokens.tokenizers.tekken import Tekkenizer

            self._tokenizer: Any = Tekkenizer.from_file(path)
        else:
            from mistral_common.tokens.tokenizers.sentencepiece import SentencePieceTokenizer

            self._tokenizer = SentencePieceTokenizer(path)

    def count(self, text: str) -> int:
        try:
            return len(self._tokenizer.encode(text, bos=False, eos=False))
        except UnicodeEncodeError:  # lone surrogates from a JSON escape
            clean = text.encode("utf-8", "replace").decode("utf-8")
            return len(self._tokenizer.encode(clean, bos=False, eos=False))


def _build(name: str) -> Tokenizer:
    if name.startswith("mistral:"):
        return MistralTokenizer(name.removeprefix("mistral:"))
    return BpeOpenAITokenizer(name)


def _pieces(text: str, size: int = _BPE_PIECE) -> Iterator[str]:
    """``text`` in pieces of at most ``size`` characters, cut before a space where possible
    (a word's leading space belongs to it, so such a cut does not change the count)."""
    start = 0
    while len(text) - start > size:
        cut = text.rfind(" ", start + size // 2, start + size)
        if cut <= start:
            cut = start + size
        yield text[start:cut]
        start = cut
    yield text[start:]
