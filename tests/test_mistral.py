"""Mistral behind the gateway: the openai SDK and the mistralai SDK against a running gateway
routed to strict Mistral emulators (La Plateforme, Azure AI serverless, Azure AI Foundry)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
import yaml
from mistralai.client import Mistral

from gateway.config import load_config
from gateway.errors import ConfigError
from providers.base import Deployment
from providers.mistral import (
    CHAT_FIELDS,
    EMBEDDING_FIELDS,
    MESSAGE_FIELDS,
    MistralProvider,
    MistralSettings,
)
from tests.conftest import SINGLE_ATTEMPT, GatewayFactory
from tests.emulators.common import Fault
from tests.emulators.mistral_api import (
    API_KEY,
    FOUNDRY_API_VERSION,
    FOUNDRY_KEY,
    SERVERLESS_KEY,
    MistralEmulator,
    rate_limited,
)
from tests.harness import ServerThread

MISTRAL_ID = re.compile(r"^[a-zA-Z0-9]{9}$")
# The spec lives in shared/ beside the repository (as in CI); override with the variable.
SPEC = Path(
    os.environ.get("MISTRAL_OPENAPI_SPEC")
    or Path(__file__).resolve().parents[2] / "shared" / "specs" / "mistral-openapi.yaml"
)


def weather_tool(name: str = "get_weather") -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }


USER = {"role": "user", "content": "hello"}


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, MistralEmulator]]:
    emulators = {
        flavor: MistralEmulator(flavor)
        for flavor in ("la_plateforme", "azure_serverless", "azure_foundry")
    }
    with ExitStack() as stack:
        for emulator in emulators.values():
            emulator.url = stack.enter_context(ServerThread(emulator.app)).url
        yield emulators


@pytest.fixture
def mistral_emu(upstreams: dict[str, MistralEmulator]) -> MistralEmulator:
    upstreams["la_plateforme"].reset()
    return upstreams["la_plateforme"]


@pytest.fixture
def serverless_emu(upstreams: dict[str, MistralEmulator]) -> MistralEmulator:
    upstreams["azure_serverless"].reset()
    return upstreams["azure_serverless"]


@pytest.fixture
def foundry_emu(upstreams: dict[str, MistralEmulator]) -> MistralEmulator:
    upstreams["azure_foundry"].reset()
    return upstreams["azure_foundry"]


@pytest.fixture(scope="module")
def gateway_url(upstreams: dict[str, MistralEmulator], start_gateway: GatewayFactory) -> str:
    plateforme = {"type": "mistral", "api_key": API_KEY}
    return start_gateway(
        {
            "routing": SINGLE_ATTEMPT,
            "providers": {
                "mistral": {**plateforme, "base_url": upstreams["la_plateforme"].url + "/v1"},
                "mistral-strict": {
                    **plateforme,
                    "base_url": upstreams["la_plateforme"].url + "/v1",
                    "drop_unsupported_params": False,
                },
                "mistral-bad-key": {
                    "type": "mistral",
                    "api_key": "wrong",
                    "base_url": upstreams["la_plateforme"].url + "/v1",
                },
                "azure-serverless": {
                    "type": "mistral",
                    "platform": "azure_serverless",
                    "api_key": SERVERLESS_KEY,
                    "base_url": upstreams["azure_serverless"].url,
                },
                "azure-foundry": {
                    "type": "mistral",
                    "platform": "azure_foundry",
                    "api_key": FOUNDRY_KEY,
                    "base_url": upstreams["azure_foundry"].url,
                },
            },
            "models": {
                "mistral-large": {
                    "deployments": [{"provider": "mistral", "model": "mistral-large-latest"}]
                },
                "mistral-large-strict": {
                    "deployments": [{"provider": "mistral-strict", "model": "mistral-large-latest"}]
                },
                "mistral-bad-key": {
                    "deployments": [
                        {"provider": "mistral-bad-key", "model": "mistral-large-latest"}
                    ]
                },
                "magistral": {
                    "deployments": [{"provider": "mistral", "model": "magistral-medium-latest"}]
                },
                "mistral-embed": {
                    "deployments": [{"provider": "mistral", "model": "mistral-embed"}]
                },
                "mistral-large-serverless": {
                    "deployments": [{"provider": "azure-serverless", "model": "Mistral-Large-2411"}]
                },
                "mistral-large-foundry": {
                    "deployments": [{"provider": "azure-foundry", "model": "mistral-large-2411"}]
                },
            },
        }
    )


@pytest.fixture(scope="module")
def client(gateway_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway_url, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def mistral_sdk(gateway_url: str) -> Mistral:
    return Mistral(api_key="unused", server_url=gateway_url.removesuffix("/v1"))


def sent(emulator: MistralEmulator) -> dict[str, Any]:
    """The body of the last request the emulator received."""
    body = emulator.requests[-1].body
    assert isinstance(body, dict)
    return body


# --- chat on La Plateforme -------------------------------------------------------------------


def test_chat_reaches_la_plateforme_with_bearer_key_and_upstream_model(client, mistral_emu):
    completion = client.chat.completions.create(model="mistral-large", messages=[USER])
    assert completion.choices[0].message.content == "echo: hello"
    request = mistral_emu.requests[-1]
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.body == {"model": "mistral-large-latest", "messages": [USER]}


def test_chat_answer_is_openai_shaped(client, mistral_emu):
    raw = client.chat.completions.with_raw_response.create(model="mistral-large", messages=[USER])
    body = raw.http_response.json()
    assert body["object"] == "chat.completion"
    assert "prefix" not in body["choices"][0]["message"]
    assert "tool_calls" not in body["choices"][0]["message"]
    assert body["usage"] == {
        "prompt_tokens": 1,
        "completion_tokens": 2,
        "total_tokens": 3,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert raw.headers["x-gateway-provider"] == "mistral"
    assert "x-gateway-dropped-params" not in raw.headers


def test_max_completion_tokens_is_sent_as_max_tokens(client, mistral_emu):
    completion = client.chat.completions.create(
        model="mistral-large",
        messages=[{"role": "user", "content": "one two three"}],
        max_completion_tokens=2,
    )
    body = sent(mistral_emu)
    assert body["max_tokens"] == 2 and "max_completion_tokens" not in body
    assert completion.choices[0].finish_reason == "length"


def test_seed_is_sent_as_random_seed(client, mistral_emu):
    client.chat.completions.create(model="mistral-large", messages=[USER], seed=42)
    body = sent(mistral_emu)
    assert body["random_seed"] == 42 and "seed" not in body


def test_developer_message_is_sent_as_system(client, mistral_emu):
    client.chat.completions.create(
        model="mistral-large",
        messages=[{"role": "developer", "content": "be brief"}, USER],
    )
    assert sent(mistral_emu)["messages"][0] == {"role": "system", "content": "be brief"}


def test_name_on_user_and_system_messages_is_dropped_and_reported(client, mistral_emu):
    raw = client.chat.completions.with_raw_response.create(
        model="mistral-large",
        messages=[
            {"role": "system", "content": "be brief", "name": "policy"},
            {"role": "user", "content": "hello", "name": "alice"},
        ],
    )
    assert raw.parse().choices[0].message.content == "echo: hello"
    assert [set(m) for m in sent(mistral_emu)["messages"]] == [{"role", "content"}] * 2
    assert raw.headers["x-gateway-dropped-params"] == "messages.name"


def test_tool_choice_required_is_sent_as_any(client, mistral_emu):
    completion = client.chat.completions.create(
        model="mistral-large", messages=[USER], tools=[weather_tool()], tool_choice="required"
    )
    assert sent(mistral_emu)["tool_choice"] == "any"
    assert completion.choices[0].finish_reason == "tool_calls"


def test_openai_only_fields_are_dropped_and_reported_in_header(client, mistral_emu):
    raw = client.chat.completions.with_raw_response.create(
        model="mistral-large",
        messages=[USER],
        logit_bias={"1234": 5},
        user="alice",
        store=True,
        logprobs=True,
        top_logprobs=2,
        service_tier="flex",
    )
    assert raw.parse().choices[0].message.content == "echo: hello"
    assert set(raw.headers["x-gateway-dropped-params"].split(",")) == {
        "logit_bias",
        "user",
        "store",
        "logprobs",
        "top_logprobs",
        "service_tier",
    }
    assert set(sent(mistral_emu)) == {"model", "messages"}


def test_fields_that_ask_for_nothing_are_removed_without_a_report(client, mistral_emu):
    raw = client.chat.completions.with_raw_response.create(
        model="mistral-large", messages=[USER], logprobs=False, store=False, logit_bias={}
    )
    assert "x-gateway-dropped-params" not in raw.headers
    assert set(sent(mistral_emu)) == {"model", "messages"}


def test_unsupported_field_is_rejected_with_400_when_dropping_is_disabled(client, mistral_emu):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="mistral-large-strict", messages=[USER], logit_bias={"1234": 5}
        )
    error = caught.value
    assert error.status_code == 400
    assert "'logit_bias'" in error.message and "drop_unsupported_params" in error.message
    assert "mistral-strict" in error.message
    assert isinstance(error.body, dict) and error.body["param"] == "logit_bias"
    assert mistral_emu.requests == []


def test_fields_mistral_accepts_pass_through_unchanged(client, mistral_emu):
    raw = client.chat.completions.with_raw_response.create(
        model="mistral-large",
        messages=[USER],
        n=2,
        stop=["\n"],
        presence_penalty=0.5,
        frequency_penalty=0.25,
        parallel_tool_calls=False,
        tools=[weather_tool()],
        tool_choice="none",
        metadata={"team": "search"},
        prompt_cache_key="conversation-1",
        prediction={"type": "content", "content": "echo"},
    )
    assert len(raw.parse().choices) == 2
    assert "x-gateway-dropped-params" not in raw.headers
    body = sent(mistral_emu)
    assert body["n"] == 2 and body["stop"] == ["\n"]
    assert body["presence_penalty"] == 0.5 and body["frequency_penalty"] == 0.25
    assert body["parallel_tool_calls"] is False and body["tool_choice"] == "none"
    assert body["metadata"] == {"team": "search"}
    assert body["prompt_cache_key"] == "conversation-1"
    assert body["prediction"] == {"type": "content", "content": "echo"}


def test_reasoning_effort_passes_when_mistral_knows_the_value(client, mistral_emu):
    client.chat.completions.create(model="mistral-large", messages=[USER], reasoning_effort="high")
    assert sent(mistral_emu)["reasoning_effort"] == "high"


def test_reasoning_effort_mistral_lacks_is_dropped_and_reported(client, mistral_emu):
    raw = client.chat.completions.with_raw_response.create(
        model="mistral-large", messages=[USER], reasoning_effort="low"
    )
    assert raw.headers["x-gateway-dropped-params"] == "reasoning_effort"
    assert "reasoning_effort" not in sent(mistral_emu)


def test_function_without_parameters_gets_the_empty_schema_mistral_requires(client, mistral_emu):
    tool = {"type": "function", "function": {"name": "now"}}
    completion = client.chat.completions.create(
        model="mistral-large", messages=[USER], tools=[tool]
    )
    assert completion.choices[0].message.tool_calls is not None
    assert sent(mistral_emu)["tools"][0]["function"]["parameters"] == {
        "type": "object",
        "properties": {},
    }


def test_json_mode_passes_response_format(client, mistral_emu):
    completion = client.chat.completions.create(
        model="mistral-large", messages=[USER], response_format={"type": "json_object"}
    )
    assert json.loads(completion.choices[0].message.content or "") == {"answer": "echo"}
    assert sent(mistral_emu)["response_format"] == {"type": "json_object"}


def test_json_schema_passes_response_format(client, mistral_emu):
    fmt: Any = {
        "type": "json_schema",
        "json_schema": {
            "name": "answer",
            "schema": {"type": "object", "properties": {"answer": {"type": "string"}}},
            "strict": True,
        },
    }
    completion = client.chat.completions.create(
        model="mistral-large", messages=[USER], response_format=fmt
    )
    assert json.loads(completion.choices[0].message.content or "") == {"answer": "echo"}
    assert sent(mistral_emu)["response_format"] == fmt


def test_reasoning_model_content_chunks_become_text_and_reasoning_content(client, mistral_emu):
    completion = client.chat.completions.create(model="magistral", messages=[USER])
    message = completion.choices[0].message
    assert message.content == "echo: hello"
    assert (message.model_extra or {})["reasoning_content"] == "The user wants an echo."


def test_reasoning_content_echoed_back_in_history_is_not_sent(client, mistral_emu):
    raw = client.chat.completions.with_raw_response.create(
        model="mistral-large",
        messages=[
            USER,
            {"role": "assistant", "content": "hi", "reasoning_content": "greet back"},
            {"role": "user", "content": "again"},
        ],
    )
    assert "x-gateway-dropped-params" not in raw.headers
    assert sent(mistral_emu)["messages"][1] == {"role": "assistant", "content": "hi"}


def test_model_length_finish_reason_becomes_length(client, mistral_emu):
    mistral_emu.next_finish_reason = "model_length"
    completion = client.chat.completions.create(model="mistral-large", messages=[USER])
    assert completion.choices[0].finish_reason == "length"


def test_error_finish_reason_is_an_error_not_an_answer(client, mistral_emu):
    mistral_emu.next_finish_reason = "error"
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="mistral-large", messages=[USER])
    assert caught.value.status_code == 502
    assert "finish_reason 'error'" in caught.value.message


# --- streaming -------------------------------------------------------------------------------


def test_stream_without_include_usage_hides_usage_and_never_sends_stream_options(
    client, mistral_emu
):
    chunks = list(
        client.chat.completions.create(
            model="mistral-large",
            messages=[{"role": "user", "content": "one two three"}],
            stream=True,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "echo: one two three"
    assert all(c.choices and c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    body = sent(mistral_emu)
    assert body["stream"] is True and "stream_options" not in body


def test_stream_with_include_usage_ends_with_a_usage_only_chunk(client, mistral_emu):
    chunks = list(
        client.chat.completions.create(
            model="mistral-large",
            messages=[{"role": "user", "content": "a b"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 2
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks[:-1])
    assert "stream_options" not in sent(mistral_emu)


def test_streamed_tool_calls_arrive_whole_with_openai_indexes(client, mistral_emu):
    stream = client.chat.completions.create(
        model="mistral-large",
        messages=[USER],
        tools=[weather_tool(), weather_tool("get_time")],
        stream=True,
    )
    calls: list[Any] = []
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            calls.extend(choice.delta.tool_calls or [])
            finish = choice.finish_reason or finish
    assert [c.index for c in calls] == [0, 1]
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert all(MISTRAL_ID.match(c.id) and c.type == "function" for c in calls)
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
    assert finish == "tool_calls"


def test_stream_of_reasoning_model_carries_reasoning_content(client, mistral_emu):
    chunks = list(client.chat.completions.create(model="magistral", messages=[USER], stream=True))
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content", "") for c in chunks
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert reasoning == "The user wants an echo."
    assert text == "echo: hello"


def test_streamed_model_length_finish_reason_becomes_length(client, mistral_emu):
    mistral_emu.next_finish_reason = "model_length"
    chunks = list(
        client.chat.completions.create(model="mistral-large", messages=[USER], stream=True)
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] == ["length"]


def test_streamed_error_finish_reason_ends_the_stream_with_an_error(client, mistral_emu):
    mistral_emu.next_finish_reason = "error"
    stream = client.chat.completions.create(model="mistral-large", messages=[USER], stream=True)
    with pytest.raises(openai.APIError, match="finish_reason 'error'"):
        list(stream)


def test_stream_cut_before_done_is_reported_not_presented_as_complete(client, mistral_emu):
    mistral_emu.fail_next(Fault(cut_after=2))
    stream = client.chat.completions.create(
        model="mistral-large", messages=[{"role": "user", "content": "a b c d"}], stream=True
    )
    with pytest.raises(openai.APIError, match="partial"):
        list(stream)


# --- tool calls ------------------------------------------------------------------------------


def test_tool_calls_return_mistral_ids_and_string_arguments(client, mistral_emu):
    mistral_emu.tool_arguments_as_object = True
    completion = client.chat.completions.create(
        model="mistral-large", messages=[USER], tools=[weather_tool()]
    )
    call = (completion.choices[0].message.tool_calls or [])[0]
    assert completion.choices[0].finish_reason == "tool_calls"
    assert MISTRAL_ID.match(call.id) and call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


def round_trip(call_id: str) -> list[Any]:
    return [
        {"role": "user", "content": "weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": "18C and sunny"},
    ]


def test_openai_style_tool_call_ids_are_mapped_to_one_mistral_id(client, mistral_emu):
    call_id = "call_Lq8bZl1dN3jD4wqGvf8BPkS5"
    completion = client.chat.completions.create(
        model="mistral-large", messages=round_trip(call_id), tools=[weather_tool()]
    )
    assert completion.choices[0].message.content == "the tool said: 18C and sunny"
    messages = sent(mistral_emu)["messages"]
    sent_id = messages[1]["tool_calls"][0]["id"]
    assert MISTRAL_ID.match(sent_id)
    assert messages[2]["tool_call_id"] == sent_id


def test_mistral_tool_call_ids_round_trip_unchanged(client, mistral_emu):
    first = client.chat.completions.create(
        model="mistral-large", messages=[USER], tools=[weather_tool()]
    )
    call_id = (first.choices[0].message.tool_calls or [])[0].id
    client.chat.completions.create(
        model="mistral-large", messages=round_trip(call_id), tools=[weather_tool()]
    )
    messages = sent(mistral_emu)["messages"]
    assert messages[1]["tool_calls"][0]["id"] == call_id == messages[2]["tool_call_id"]


def test_answer_quoting_a_mapped_tool_call_id_gets_the_callers_id_back():
    provider = MistralProvider("mistral", MistralSettings(type="mistral", api_key="k"))
    dep = Deployment("mistral/m", "m", provider, "m")
    request = provider.chat_request(
        {"model": "m", "messages": round_trip("call_1")}, dep, stream=False
    )
    mapped = orjson.loads(request.body or b"")["messages"][2]["tool_call_id"]
    call = {"id": mapped, "function": {"name": "get_weather", "arguments": "{}"}}
    answer = {
        "id": "x",
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "tool_calls": [call]},
                "finish_reason": "tool_calls",
            }
        ],
    }
    parsed = provider.chat_response(orjson.dumps(answer), dep, request)
    assert parsed["choices"][0]["message"]["tool_calls"][0]["id"] == "call_1"


def test_tool_call_ids_are_mapped_per_call_whatever_other_calls_do():
    """Each call keeps its own id mapping: thousands of concurrent calls with other ids (which
    evicted a shared, bounded map) cannot take the caller's id away from an answer."""
    provider = MistralProvider("mistral", MistralSettings(type="mistral", api_key="k"))
    dep = Deployment("mistral/m", "m", provider, "m")
    mine = provider.chat_request(
        {"model": "m", "messages": round_trip("call_1")}, dep, stream=False
    )
    for i in range(5000):
        provider.chat_request(
            {"model": "m", "messages": round_trip(f"call_other_{i}")}, dep, stream=False
        )
    mapped = orjson.loads(mine.body or b"")["messages"][2]["tool_call_id"]
    answer = {
        "id": "x",
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "tool_calls": [{"id": mapped, "function": {"name": "f", "arguments": "{}"}}],
                },
                "finish_reason": "tool_calls",
            }
        ],
    }
    parsed = provider.chat_response(orjson.dumps(answer), dep, mine)
    assert parsed["choices"][0]["message"]["tool_calls"][0]["id"] == "call_1"
    # Another call's answer quoting the same mapped id is not rewritten to this caller's id.
    other = provider.chat_request({"model": "m", "messages": [USER]}, dep, stream=False)
    parsed = provider.chat_response(orjson.dumps(answer), dep, other)
    assert parsed["choices"][0]["message"]["tool_calls"][0]["id"] == mapped


# --- errors ----------------------------------------------------------------------------------


def test_validation_422_becomes_400_naming_the_field_provider_and_deployment(client, mistral_emu):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="mistral-large", messages=[USER], temperature=1.8)
    error = caught.value
    assert error.status_code == 400
    assert "provider 'mistral' (deployment 'mistral/mistral-large-latest') answered 422" in (
        error.message
    )
    assert "temperature: Input should be less than or equal to 1.5" in error.message
    assert isinstance(error.body, dict) and error.body["param"] == "temperature"


def test_validation_detail_wrapped_in_an_error_object_is_read(client, mistral_emu):
    detail = [
        {
            "type": "extra_forbidden",
            "loc": ["body", "messages", 0, "user", "name"],
            "msg": "Extra inputs are not permitted",
            "input": "bob",
        }
    ]
    body = {"object": "error", "message": {"detail": detail}, "type": "invalid_request_error"}
    mistral_emu.fail_next(Fault(status=422, body=orjson.dumps(body)))
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="mistral-large", messages=[USER])
    assert "messages.0.user.name: Extra inputs are not permitted" in caught.value.message


def test_error_message_that_is_itself_json_is_unwrapped(client, mistral_emu):
    inner = {"detail": [{"loc": ["body", "tools"], "msg": "Field required", "type": "missing"}]}
    body = {"object": "error", "message": json.dumps(inner), "type": "invalid_request_error"}
    mistral_emu.fail_next(Fault(status=400, body=orjson.dumps(body)))
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="mistral-large", messages=[USER])
    assert "answered 400: tools: Field required" in caught.value.message


def test_tool_call_id_error_keeps_mistrals_message_and_code(client, mistral_emu):
    body = {
        "object": "error",
        "message": "Tool call id was abc but must be a-z, A-Z, 0-9, with a length of 9.",
        "type": "invalid_function_call",
        "param": None,
        "code": "3280",
    }
    mistral_emu.fail_next(Fault(status=400, body=orjson.dumps(body)))
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="mistral-large", messages=[USER])
    assert "Tool call id was abc" in caught.value.message
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "3280"


def test_rate_limited_429_becomes_rate_limit_error_with_retry_after(client, mistral_emu):
    mistral_emu.fail_next(rate_limited(retry_after="7"))
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="mistral-large", messages=[USER])
    error = caught.value
    assert "Requests rate limit exceeded" in error.message
    assert isinstance(error.body, dict) and error.body["type"] == "rate_limit_error"
    assert error.response.headers["retry-after"] == "7"


def test_refused_provider_key_says_it_is_the_gateways_key(client, mistral_emu):
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="mistral-bad-key", messages=[USER])
    assert "answered 401: Unauthorized" in caught.value.message
    assert "gateway's key for provider 'mistral-bad-key'" in caught.value.message


def test_plain_text_error_is_quoted(client, mistral_emu):
    text = b"upstream connect error or disconnect/reset before headers"
    mistral_emu.fail_next(Fault(status=502, body=text, content_type="text/plain"))
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="mistral-large", messages=[USER])
    assert "answered 502: upstream connect error or disconnect/reset" in caught.value.message


def test_html_error_page_is_described_by_its_title(client, mistral_emu):
    page = b"<html><head><title>503 Service Unavailable</title></head><body>...</body></html>"
    mistral_emu.fail_next(Fault(status=503, body=page, content_type="text/html"))
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="mistral-large", messages=[USER])
    assert "an HTML page titled '503 Service Unavailable'" in caught.value.message


def test_context_length_error_is_recognised(client, mistral_emu):
    message = "Prompt contains 40000 tokens, too large for model with 32768 maximum context length"
    body = {"object": "error", "message": message, "type": "invalid_request_error", "code": "3051"}
    mistral_emu.fail_next(Fault(status=400, body=orjson.dumps(body)))
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="mistral-large", messages=[USER])
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "context_length_exceeded"


# --- embeddings ------------------------------------------------------------------------------


def test_embeddings_dimensions_are_sent_as_output_dimension(client, mistral_emu):
    result = client.embeddings.create(model="mistral-embed", input=["a", "bb"], dimensions=16)
    assert [len(d.embedding) for d in result.data] == [16, 16]
    body = sent(mistral_emu)
    assert body["output_dimension"] == 16 and "dimensions" not in body
    assert mistral_emu.requests[-1].path == "/v1/embeddings"


def test_embeddings_answer_has_openai_usage(client, mistral_emu):
    raw = client.embeddings.with_raw_response.create(model="mistral-embed", input="two words")
    assert raw.http_response.json()["usage"] == {"prompt_tokens": 2, "total_tokens": 2}


def test_embeddings_user_field_is_dropped_and_reported(client, mistral_emu):
    raw = client.embeddings.with_raw_response.create(
        model="mistral-embed", input="x", user="alice", encoding_format="float"
    )
    assert raw.headers["x-gateway-dropped-params"] == "user"
    assert sent(mistral_emu) == {"model": "mistral-embed", "input": "x", "encoding_format": "float"}


def test_embeddings_of_token_ids_are_refused_clearly(client, mistral_emu):
    with pytest.raises(openai.BadRequestError, match="Mistral embeds text only"):
        client.embeddings.create(model="mistral-embed", input=[[1, 2, 3]])
    assert mistral_emu.requests == []


# --- Azure AI --------------------------------------------------------------------------------


def test_azure_serverless_uses_v1_path_bearer_key_and_translation(client, serverless_emu):
    completion = client.chat.completions.create(
        model="mistral-large-serverless",
        messages=[{"role": "developer", "content": "be brief"}, USER],
        seed=3,
    )
    assert completion.choices[0].message.content == "echo: hello"
    request = serverless_emu.requests[-1]
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {SERVERLESS_KEY}"
    assert request.body["model"] == "Mistral-Large-2411"
    assert request.body["random_seed"] == 3
    assert request.body["messages"][0]["role"] == "system"


def test_azure_foundry_uses_models_path_api_version_and_api_key(client, foundry_emu):
    completion = client.chat.completions.create(model="mistral-large-foundry", messages=[USER])
    assert completion.choices[0].message.content == "echo: hello"
    request = foundry_emu.requests[-1]
    assert request.path == "/models/chat/completions"
    assert request.query == {"api-version": FOUNDRY_API_VERSION}
    assert request.headers["api-key"] == FOUNDRY_KEY
    assert "authorization" not in request.headers
    assert request.body["model"] == "mistral-large-2411"


def test_azure_foundry_passes_mistral_fields_through_its_inference_layer(client, foundry_emu):
    client.chat.completions.create(
        model="mistral-large-foundry",
        messages=[USER],
        seed=5,
        extra_body={"safe_prompt": True},
    )
    request = foundry_emu.requests[-1]
    assert request.headers["extra-parameters"] == "pass-through"
    assert request.body["random_seed"] == 5 and request.body["safe_prompt"] is True


def test_azure_foundry_streams_with_usage(client, foundry_emu):
    chunks = list(
        client.chat.completions.create(
            model="mistral-large-foundry",
            messages=[USER],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: hello"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 3


def test_azure_foundry_validation_error_envelope_is_read(client, foundry_emu):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="mistral-large-foundry", messages=[USER], temperature=1.9
        )
    assert "temperature: Input should be less than or equal to 1.5" in caught.value.message
    assert "azure-foundry" in caught.value.message


def test_azure_platform_without_base_url_is_a_config_error():
    with pytest.raises(ConfigError, match=r"providers\.foundry.*needs base_url"):
        load_config(
            {
                "providers": {"foundry": {"type": "mistral", "platform": "azure_foundry"}},
                "models": {"m": {"deployments": [{"provider": "foundry", "model": "m"}]}},
            }
        )


@pytest.mark.parametrize(
    ("platform", "pasted", "expected"),
    [
        (
            "azure_serverless",
            "https://m.eastus2.inference.ai.azure.com/v1/chat/completions",
            "https://m.eastus2.inference.ai.azure.com/v1/chat/completions",
        ),
        (
            "azure_foundry",
            "https://r.services.ai.azure.com/models/chat/completions",
            "https://r.services.ai.azure.com/models/chat/completions?api-version=2024-05-01-preview",
        ),
    ],
)
def test_azure_endpoint_pasted_with_its_path_builds_the_same_url(platform, pasted, expected):
    settings = MistralSettings(type="mistral", platform=platform, base_url=pasted, api_key="k")
    provider = MistralProvider("azure", settings)
    request = provider.chat_request(
        {"messages": [USER]}, Deployment("a/m", "m", provider, "m"), stream=False
    )
    assert request.url == expected


# --- the mistralai SDK -----------------------------------------------------------------------


def test_mistralai_sdk_native_fields_reach_mistral(mistral_sdk, mistral_emu):
    response = mistral_sdk.chat.complete(
        model="mistral-large",
        messages=[{"role": "user", "content": "hello"}],
        safe_prompt=True,
        random_seed=7,
        prompt_mode="reasoning",
        reasoning_effort="none",
    )
    assert response.choices[0].message.content == "echo: hello"
    body = sent(mistral_emu)
    assert body["safe_prompt"] is True and body["random_seed"] == 7
    assert body["prompt_mode"] == "reasoning" and body["reasoning_effort"] == "none"


def test_mistralai_sdk_assistant_prefix_reaches_mistral(mistral_sdk, mistral_emu):
    response = mistral_sdk.chat.complete(
        model="mistral-large",
        messages=[
            {"role": "user", "content": "tell a story"},
            {"role": "assistant", "content": "Once upon a time", "prefix": True},
        ],
    )
    assert response.choices[0].message.content == "Once upon a time and so on"
    assert sent(mistral_emu)["messages"][1] == {
        "role": "assistant",
        "content": "Once upon a time",
        "prefix": True,
    }


def test_mistralai_sdk_streams(mistral_sdk, mistral_emu):
    events = list(
        mistral_sdk.chat.stream(
            model="mistral-large", messages=[{"role": "user", "content": "a b"}]
        )
    )
    text = "".join(str(e.data.choices[0].delta.content or "") for e in events if e.data.choices)
    assert text == "echo: a b"
    assert sent(mistral_emu)["stream"] is True


# --- the allow-lists follow the spec ---------------------------------------------------------


@pytest.fixture(scope="module")
def spec_schemas() -> dict[str, Any]:
    if not SPEC.exists():
        pytest.skip(f"Mistral OpenAPI spec not found at {SPEC} (set MISTRAL_OPENAPI_SPEC)")
    schemas: dict[str, Any] = yaml.safe_load(SPEC.read_text())["components"]["schemas"]
    return schemas


def test_chat_allow_list_is_the_specs_chat_completion_request(spec_schemas):
    assert set(spec_schemas["ChatCompletionRequest"]["properties"]) == CHAT_FIELDS


def test_message_allow_lists_are_the_specs_message_schemas(spec_schemas):
    for role, schema in [
        ("system", "SystemMessage"),
        ("user", "UserMessage"),
        ("assistant", "AssistantMessage"),
        ("tool", "ToolMessage"),
    ]:
        assert set(spec_schemas[schema]["properties"]) == MESSAGE_FIELDS[role], role


def test_embedding_allow_list_is_the_specs_embedding_request(spec_schemas):
    assert set(spec_schemas["EmbeddingRequest"]["properties"]) == EMBEDDING_FIELDS
