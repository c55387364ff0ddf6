"""The official openai SDK against a running gateway routed to an OpenAI-compatible upstream."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.conftest import SINGLE_ATTEMPT, GatewayFactory
from tests.emulators.openai_api import API_KEY, OpenAIEmulator

TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


@pytest.fixture(scope="module")
def client(openai_upstream: OpenAIEmulator, start_gateway: GatewayFactory) -> openai.OpenAI:
    url = start_gateway(
        {
            "routing": SINGLE_ATTEMPT,
            "providers": {
                "openai": {
                    "type": "openai",
                    "api_key": API_KEY,
                    "base_url": openai_upstream.url + "/v1",
                }
            },
            "models": {
                "gpt-4o": {"deployments": [{"provider": "openai", "model": "gpt-4o"}]},
                "embed-small": {
                    "deployments": [{"provider": "openai", "model": "text-embedding-3-small"}]
                },
            },
        }
    )
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0)


def test_chat_completion_returns_upstream_answer_and_gateway_headers(client, openai_emu):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hello"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "echo: hello"
    assert completion.usage is not None and completion.usage.prompt_tokens == 1
    assert raw.headers["x-gateway-provider"] == "openai"
    assert raw.headers["x-gateway-deployment"] == "openai/gpt-4o"
    assert raw.headers["x-gateway-attempts"] == "1"
    assert float(raw.headers["x-gateway-overhead-ms"]) >= 0
    assert len(raw.headers["x-request-id"]) >= 16
    sent = openai_emu.requests[-1]
    assert sent.body["model"] == "gpt-4o"
    assert "stream_options" not in sent.body


def test_stream_without_include_usage_hides_usage_but_upstream_was_asked(client, openai_emu):
    stream = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "one two three"}], stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: one two three"
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    assert openai_emu.requests[-1].body["stream_options"] == {"include_usage": True}


def test_stream_with_include_usage_passes_usage_chunk(client, openai_emu):
    stream = client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "a b"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 2


def test_tool_calls_non_streaming(client, openai_emu):
    completion = client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "weather in Paris?"}],
        tools=TOOLS,
        tool_choice="auto",
    )
    call = completion.choices[0].message.tool_calls[0]
    assert completion.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] == "Paris"
    assert openai_emu.requests[-1].body["tools"] == TOOLS


def test_tool_call_deltas_stream_and_reassemble(client, openai_emu):
    stream = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "weather?"}], tools=TOOLS, stream=True
    )
    args = ""
    name = None
    deltas = 0
    for chunk in stream:
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            deltas += 1
            name = name or call.function.name
            args += call.function.arguments or ""
    assert name == "get_weather"
    assert deltas > 2
    assert json.loads(args) == {"city": "Paris", "unit": "c"}


def test_json_mode_and_n_and_logprobs_reach_upstream(client, openai_emu):
    completion = client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "json please"}],
        response_format={"type": "json_object"},
        n=2,
        logprobs=True,
        stop=["\n"],
    )
    assert len(completion.choices) == 2
    assert json.loads(completion.choices[1].message.content or "") == {"answer": "echo"}
    assert completion.choices[0].logprobs is not None
    sent = openai_emu.requests[-1].body
    assert sent["response_format"] == {"type": "json_object"}
    assert sent["n"] == 2 and sent["logprobs"] is True and sent["stop"] == ["\n"]


def test_embeddings(client, openai_emu):
    result = client.embeddings.create(model="embed-small", input=["a", "bb"])
    assert [d.index for d in result.data] == [0, 1]
    assert openai_emu.requests[-1].body["model"] == "text-embedding-3-small"


def test_models_list_and_retrieve(client):
    ids = [m.id for m in client.models.list()]
    assert ids == ["gpt-4o", "embed-small"]
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")
