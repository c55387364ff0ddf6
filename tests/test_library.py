"""The in-process library: ``Gateway`` (sync) and ``AsyncGateway`` with the OpenAI SDK's shapes."""

from __future__ import annotations

import gc
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import AsyncGateway, Gateway, GatewayError, NotFoundError
from gateway.types import ChatCompletion, ChatCompletionChunk, CreateEmbeddingResponse, Model
from tests.conftest import SINGLE_ATTEMPT
from tests.emulators.common import Fault
from tests.emulators.openai_api import API_KEY, OpenAIEmulator

MOCK_MODELS = ["mock-echo", "mock-chat", "mock-embed"]
HTML_500 = Fault(status=500, body=b"<html>oops</html>", content_type="text/html")


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def text_of(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def emulator_config(emu: OpenAIEmulator) -> dict[str, Any]:
    return {
        "routing": SINGLE_ATTEMPT,
        "providers": {
            "openai": {"type": "openai", "api_key": API_KEY, "base_url": emu.url + "/v1"}
        },
        "models": {
            "gpt-4o": {"deployments": [{"provider": "openai", "model": "gpt-4o"}]},
            "embed-small": {
                "deployments": [{"provider": "openai", "model": "text-embedding-3-small"}]
            },
        },
    }


def gateway_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "llm-gateway"]


@pytest.fixture
def no_config_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEWAY_CONFIG", raising=False)
    monkeypatch.delenv("GATEWAY_MASTER_KEY", raising=False)


@pytest.fixture
def mock_gw(no_config_env: None) -> Iterator[Gateway]:
    """A sync Gateway on the built-in mock config."""
    with Gateway() as gw:
        yield gw


@pytest.fixture
def emu_gw(openai_emu: OpenAIEmulator) -> Iterator[Gateway]:
    """A sync Gateway routed to the OpenAI emulator."""
    with Gateway(emulator_config(openai_emu)) as gw:
        yield gw


# --- sync Gateway, built-in mock config -------------------------------------------------------


def test_gateway_without_config_lists_the_builtin_mock_models(mock_gw: Gateway) -> None:
    models = mock_gw.models.list()
    assert all(isinstance(m, Model) for m in models)
    assert [m.id for m in models] == MOCK_MODELS


def test_chat_returns_a_typed_chat_completion(mock_gw: Gateway) -> None:
    completion = mock_gw.chat.completions.create(model="mock-echo", messages=user("say this"))
    assert isinstance(completion, ChatCompletion)
    assert completion.choices[0].message.content == "say this"
    assert completion.usage is not None and completion.usage.prompt_tokens == 2


def test_stream_yields_typed_chunks_whose_text_joins_to_the_answer(mock_gw: Gateway) -> None:
    chunks = list(
        mock_gw.chat.completions.create(
            model="mock-echo", messages=user("one two three"), stream=True
        )
    )
    assert chunks and all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert text_of(chunks) == "one two three"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_stream_without_include_usage_has_no_usage_chunk(mock_gw: Gateway) -> None:
    chunks = list(
        mock_gw.chat.completions.create(model="mock-chat", messages=user("hi"), stream=True)
    )
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)


def test_stream_with_include_usage_ends_with_a_usage_chunk(mock_gw: Gateway) -> None:
    chunks = list(
        mock_gw.chat.completions.create(
            model="mock-chat",
            messages=user("hi there"),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 2
    assert chunks[-1].usage.completion_tokens == 16
    assert all(c.usage is None for c in chunks[:-1])


def test_embeddings_return_a_typed_response_with_one_vector_per_input(mock_gw: Gateway) -> None:
    result = mock_gw.embeddings.create(model="mock-embed", input=["a", "b c"])
    assert isinstance(result, CreateEmbeddingResponse)
    assert [d.index for d in result.data] == [0, 1]
    assert all(isinstance(d.embedding, list) and len(d.embedding) == 8 for d in result.data)


def test_unknown_model_raises_not_found_listing_the_available_models(mock_gw: Gateway) -> None:
    with pytest.raises(NotFoundError) as info:
        mock_gw.chat.completions.create(model="gpt-5", messages=user("hi"))
    assert info.value.status == 404
    assert "gpt-5" in info.value.message
    for name in MOCK_MODELS:
        assert name in info.value.message


def test_gateway_accepts_a_config_file_path(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "providers: {m: {type: mock}}\n"
        "models: {echo: {deployments: [{provider: m, model: mock-echo}]}}\n"
    )
    with Gateway(path) as gw:
        assert [m.id for m in gw.models.list()] == ["echo"]


# --- AsyncGateway, built-in mock config -------------------------------------------------------


async def test_async_chat_returns_a_typed_chat_completion(no_config_env: None) -> None:
    async with AsyncGateway() as gw:
        completion = await gw.chat.completions.create(model="mock-echo", messages=user("hello"))
    assert isinstance(completion, ChatCompletion)
    assert completion.choices[0].message.content == "hello"


async def test_async_stream_yields_typed_chunks_whose_text_joins_to_the_answer(
    no_config_env: None,
) -> None:
    async with AsyncGateway() as gw:
        stream = await gw.chat.completions.create(
            model="mock-echo", messages=user("four five six"), stream=True
        )
        chunks = [chunk async for chunk in stream]
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert text_of(chunks) == "four five six"


async def test_async_embeddings_and_models_are_typed(no_config_env: None) -> None:
    async with AsyncGateway() as gw:
        result = await gw.embeddings.create(model="mock-embed", input="x")
        models = await gw.models.list()
    assert isinstance(result, CreateEmbeddingResponse) and len(result.data) == 1
    assert [m.id for m in models] == MOCK_MODELS


async def test_async_unknown_model_raises_not_found(no_config_env: None) -> None:
    async with AsyncGateway() as gw:
        with pytest.raises(NotFoundError, match="mock-echo"):
            await gw.chat.completions.create(model="gpt-5", messages=user("hi"))


# --- routed to the OpenAI emulator ------------------------------------------------------------


def test_chat_reaches_the_upstream_and_returns_its_answer(
    emu_gw: Gateway, openai_emu: OpenAIEmulator
) -> None:
    completion = emu_gw.chat.completions.create(model="gpt-4o", messages=user("hello"))
    assert isinstance(completion, ChatCompletion)
    assert completion.choices[0].message.content == "echo: hello"
    assert completion.model == "gpt-4o-2024-08-06"
    assert openai_emu.requests[-1].body["model"] == "gpt-4o"


def test_upstream_stream_yields_chunks_whose_text_joins_to_the_answer(emu_gw: Gateway) -> None:
    chunks = list(
        emu_gw.chat.completions.create(model="gpt-4o", messages=user("one two"), stream=True)
    )
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert text_of(chunks) == "echo: one two"
    assert all(c.usage is None for c in chunks)


async def test_async_upstream_stream_passes_the_usage_chunk_when_asked(
    openai_emu: OpenAIEmulator,
) -> None:
    async with AsyncGateway(emulator_config(openai_emu)) as gw:
        stream = await gw.chat.completions.create(
            model="gpt-4o",
            messages=user("a b c"),
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert text_of(chunks) == "echo: a b c"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 3


def test_upstream_embeddings_are_typed(emu_gw: Gateway, openai_emu: OpenAIEmulator) -> None:
    result = emu_gw.embeddings.create(model="embed-small", input=["a", "bb"])
    assert isinstance(result, CreateEmbeddingResponse)
    assert [d.index for d in result.data] == [0, 1]
    assert openai_emu.requests[-1].body["model"] == "text-embedding-3-small"


def test_upstream_error_raises_gateway_error_naming_provider_and_deployment(
    emu_gw: Gateway, openai_emu: OpenAIEmulator
) -> None:
    openai_emu.fail_next(HTML_500)
    with pytest.raises(GatewayError) as info:
        emu_gw.chat.completions.create(model="gpt-4o", messages=user("hi"))
    err = info.value
    assert err.status == 500
    assert (err.provider, err.deployment) == ("openai", "openai/gpt-4o")
    assert "'openai'" in err.message and "'openai/gpt-4o'" in err.message
    assert "text/html" in err.message


async def test_async_upstream_error_raises_gateway_error_naming_provider_and_deployment(
    openai_emu: OpenAIEmulator,
) -> None:
    openai_emu.fail_next(HTML_500)
    async with AsyncGateway(emulator_config(openai_emu)) as gw:
        with pytest.raises(GatewayError) as info:
            await gw.chat.completions.create(model="gpt-4o", messages=user("hi"))
    assert info.value.status == 500
    assert (info.value.provider, info.value.deployment) == ("openai", "openai/gpt-4o")


# --- lifecycle ---------------------------------------------------------------------------------


def test_sync_context_manager_stops_its_event_loop_thread(openai_emu: OpenAIEmulator) -> None:
    before = len(gateway_threads())
    with Gateway(emulator_config(openai_emu)) as gw:
        gw.chat.completions.create(model="gpt-4o", messages=user("hi"))
        assert len(gateway_threads()) == before + 1
    assert len(gateway_threads()) == before


async def test_async_context_manager_closes_its_upstream_connections(
    openai_emu: OpenAIEmulator,
) -> None:
    gc.collect()  # what earlier tests left for the collector is not this gateway's to answer for
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with AsyncGateway(emulator_config(openai_emu)) as gw:
            await gw.chat.completions.create(model="gpt-4o", messages=user("hi"))
        del gw  # an unclosed aiohttp session warns when it is collected
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_closing_a_sync_gateway_twice_is_harmless(no_config_env: None) -> None:
    gw = Gateway()
    gw.close()
    gw.close()


async def test_sync_gateway_works_inside_a_running_event_loop(openai_emu: OpenAIEmulator) -> None:
    with Gateway(emulator_config(openai_emu)) as gw:
        completion = gw.chat.completions.create(model="gpt-4o", messages=user("from a loop"))
        chunks = list(gw.chat.completions.create(model="gpt-4o", messages=user("x"), stream=True))
    assert completion.choices[0].message.content == "echo: from a loop"
    assert text_of(chunks) == "echo: x"
