"""The OpenAI adapter alone, fed the recorded payloads of ``tests/payloads/openai/``."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import (
    ContextLengthExceededError,
    RateLimitError,
    StreamInterruptedError,
    UpstreamError,
)
from gateway.wire import JSON, UpstreamRequest
from providers.base import Deployment
from providers.openai import OpenAIProvider, OpenAISettings
from tests.payload_helpers import (
    USER,
    WEATHER_TOOL,
    assert_secret_only_in,
    finished_after_each_event,
    mapped_error,
    recorded,
    sent,
    stream_events,
    translate,
)

# --- OpenAI -------------------------------------------------------------------------------

OPENAI_KEY = "sk-proj-recorded-payloads-0123456789"


def openai_adapter(**settings: Any) -> tuple[OpenAIProvider, Deployment]:
    config = {"type": "openai", "api_key": OPENAI_KEY, **settings}
    provider = OpenAIProvider("openai", OpenAISettings.model_validate(config))
    return provider, Deployment("openai/gpt-4o", "gpt-4o", provider, "gpt-4o-2024-08-06")


def openai_usage(prompt: int, completion: int) -> JSON:
    """CompletionUsage as OpenAI reports it, with its (zero) token details."""
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def test_openai_request_posts_to_chat_completions_with_bearer_key_and_org_headers() -> None:
    provider, dep = openai_adapter(organization="org-3fT5bKcQ9vH2", project="proj_8sDmL1pR")
    request = provider.chat_request({"model": "gpt-4o", "messages": USER}, dep, stream=False)
    assert (request.method, request.url) == ("POST", "https://api.openai.com/v1/chat/completions")
    assert request.headers == {
        "authorization": f"Bearer {OPENAI_KEY}",
        "openai-organization": "org-3fT5bKcQ9vH2",
        "openai-project": "proj_8sDmL1pR",
        "content-type": "application/json",
    }


def test_openai_request_carries_the_api_key_only_in_the_authorization_header() -> None:
    provider, dep = openai_adapter(headers={"x-team": "search"})
    request = provider.chat_request({"model": "gpt-4o", "messages": USER}, dep, stream=True)
    assert_secret_only_in(request, OPENAI_KEY, "authorization")
    assert request.headers["x-team"] == "search"


def test_openai_request_names_the_deployment_model_and_passes_every_other_field() -> None:
    provider, dep = openai_adapter()
    body = {
        "model": "gpt-4o",
        "messages": USER,
        "tools": [WEATHER_TOOL],
        "tool_choice": "required",
        "max_completion_tokens": 256,
        "seed": 7,
        "user": "alice",
        "logit_bias": {"50256": -100},
        "response_format": {"type": "json_object"},
    }
    request = provider.chat_request(dict(body), dep, stream=False)
    assert sent(request) == {**body, "model": "gpt-4o-2024-08-06"}
    assert request.dropped_params == ()


def test_openai_stream_request_forces_include_usage_and_keeps_other_stream_options() -> None:
    provider, dep = openai_adapter()
    body = {
        "model": "gpt-4o",
        "messages": USER,
        "stream": True,
        "stream_options": {"include_usage": False, "include_obfuscation": False},
    }
    request = provider.chat_request(body, dep, stream=True)
    assert sent(request) == {
        "model": "gpt-4o-2024-08-06",
        "messages": USER,
        "stream": True,
        "stream_options": {"include_usage": True, "include_obfuscation": False},
    }


def test_openai_non_stream_request_removes_stream_and_stream_options() -> None:
    provider, dep = openai_adapter()
    body = {
        "model": "gpt-4o",
        "messages": USER,
        "stream": False,
        "stream_options": {"include_usage": True},
    }
    request = provider.chat_request(body, dep, stream=False)
    assert sent(request) == {"model": "gpt-4o-2024-08-06", "messages": USER}


def test_openai_compatible_server_gets_requests_under_its_own_base_url() -> None:
    provider, dep = openai_adapter(base_url="http://vllm.internal:8000/v1/", api_key=None)
    request = provider.chat_request({"model": "gpt-4o", "messages": USER}, dep, stream=False)
    assert request.url == "http://vllm.internal:8000/v1/chat/completions"
    assert request.headers == {"content-type": "application/json"}


def test_openai_answer_parses_to_the_recorded_chat_completion() -> None:
    provider, dep = openai_adapter()
    request = provider.chat_request({"model": "gpt-4o", "messages": USER}, dep, stream=False)
    answer = provider.chat_response(recorded("openai/chat_completion.json"), dep, request)
    assert answer == {
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion",
        "created": 1741570283,
        "model": "gpt-4o-2024-08-06",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "The capital of France is Paris.",
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": openai_usage(24, 8),
        "service_tier": "default",
        "system_fingerprint": "fp_fc9f1d7035",
    }


def test_openai_tool_call_answer_keeps_the_call_id_and_string_arguments() -> None:
    provider, dep = openai_adapter()
    request = provider.chat_request(
        {"model": "gpt-4o", "messages": USER, "tools": [WEATHER_TOOL]}, dep, stream=False
    )
    answer = provider.chat_response(
        recorded("openai/chat_completion_tool_calls.json"), dep, request
    )
    assert answer["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_Lq8bZl1dN3jD4wqGvf8BPkS5",
                        "type": "function",
                        "function": {
                            "name": "get_weather",
                            "arguments": '{"city":"Paris","unit":"celsius"}',
                        },
                    }
                ],
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ]
    assert answer["usage"] == openai_usage(82, 19)


def test_openai_stream_passes_chunks_through_with_the_usage_chunk_last() -> None:
    provider, dep = openai_adapter()
    translator = provider.chat_stream(dep, UpstreamRequest("POST", provider.url(dep, "x")))
    head = {
        "id": "chatcmpl-BR1u8kTq3wHn6YcZpE2xV4mLd7sAo",
        "object": "chat.completion.chunk",
        "created": 1745846478,
        "model": "gpt-4o-mini-2024-07-18",
        "service_tier": "default",
        "system_fingerprint": "fp_44709d6fcb",
    }

    def chunk(delta: JSON, finish: str | None, obfuscation: str) -> JSON:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**head, "choices": [choice], "usage": None, "obfuscation": obfuscation}

    assert translate(translator, "openai/chat_stream.sse") == [
        chunk({"role": "assistant", "content": "", "refusal": None}, None, "r4N7vQ2m"),
        chunk({"content": "Hello"}, None, "p9K3xT"),
        chunk({"content": " there!"}, None, "Zq1"),
        chunk({}, "stop", "aD"),
        {**head, "choices": [], "usage": openai_usage(9, 3), "obfuscation": "k2Wn"},
    ]


def test_openai_stream_is_finished_only_by_the_done_marker() -> None:
    provider, dep = openai_adapter()
    translator = provider.chat_stream(dep, UpstreamRequest("POST", provider.url(dep, "x")))
    finished = finished_after_each_event(translator, "openai/chat_stream.sse")
    assert finished == [False, False, False, False, False, True]


def test_openai_stream_tool_call_argument_deltas_pass_through_in_order() -> None:
    provider, dep = openai_adapter()
    translator = provider.chat_stream(dep, UpstreamRequest("POST", provider.url(dep, "x")))
    chunks = translate(translator, "openai/chat_stream_tool_calls.sse")
    assert [c["choices"][0]["delta"] for c in chunks[:-1]] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_0pQ7dKp0BSgM8Q1fA2yXWz3u",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ],
            "refusal": None,
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [
        None,
        None,
        None,
        "tool_calls",
    ]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == openai_usage(68, 15)
    assert translator.finished


def test_openai_error_event_mid_stream_raises_after_the_chunks_before_it() -> None:
    provider, dep = openai_adapter()
    translator = provider.chat_stream(dep, UpstreamRequest("POST", provider.url(dep, "x")))
    chunks: list[JSON] = []
    with pytest.raises(StreamInterruptedError) as caught:
        for event in stream_events("openai/chat_stream_error.sse"):
            chunks.extend(translator.feed(event))
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": "", "refusal": None},
        {"content": "Once upon"},
    ]
    assert caught.value.message == (
        "provider 'openai' (deployment 'openai/gpt-4o') reported an error mid-stream: "
        "The server had an error while processing your request. Sorry about that!"
    )
    assert (caught.value.status, caught.value.code) == (502, "stream_interrupted")
    assert not translator.finished


def test_openai_embeddings_request_names_the_deployment_model() -> None:
    provider, dep = openai_adapter()
    body = {"model": "embed", "input": ["a", "bb"], "dimensions": 4, "encoding_format": "float"}
    request = provider.embeddings_request(body, dep)
    assert request.url == "https://api.openai.com/v1/embeddings"
    assert sent(request) == {
        "model": "gpt-4o-2024-08-06",
        "input": ["a", "bb"],
        "dimensions": 4,
        "encoding_format": "float",
    }


def test_openai_embeddings_answer_parses_to_the_recorded_list() -> None:
    provider, dep = openai_adapter()
    assert provider.embeddings_response(recorded("openai/embeddings.json"), dep) == {
        "object": "list",
        "data": [
            {
                "object": "embedding",
                "index": 0,
                "embedding": [-0.6401866, 0.17513223, 0.4839275, -0.5667411],
            },
            {
                "object": "embedding",
                "index": 1,
                "embedding": [0.29305932, -0.6934011, 0.5198418, 0.39967766],
            },
        ],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 7, "total_tokens": 7},
    }


def test_openai_429_rate_limit_is_retryable_and_keeps_only_the_retry_hints() -> None:
    provider, dep = openai_adapter()
    exc = mapped_error(provider, dep, "openai/error_429_rate_limit.http")
    assert isinstance(exc, RateLimitError)
    assert (exc.status, exc.code, exc.retryable) == (429, "rate_limit_exceeded", True)
    assert exc.headers == {"retry-after": "3", "retry-after-ms": "2148"}
    assert (exc.provider, exc.deployment) == ("openai", "openai/gpt-4o")


def test_openai_429_insufficient_quota_is_not_retried_but_fails_over() -> None:
    provider, dep = openai_adapter()
    exc = mapped_error(provider, dep, "openai/error_429_insufficient_quota.http")
    assert isinstance(exc, RateLimitError)
    assert (exc.status, exc.code) == (429, "insufficient_quota")
    assert not exc.retryable and exc.failover
    assert exc.headers == {}


def test_openai_400_context_length_becomes_context_length_exceeded() -> None:
    provider, dep = openai_adapter()
    exc = mapped_error(provider, dep, "openai/error_400_context_length.http")
    assert isinstance(exc, ContextLengthExceededError)
    assert (exc.status, exc.code, exc.param, exc.retryable) == (
        400,
        "context_length_exceeded",
        "messages",
        False,
    )
    assert exc.message == (
        "provider 'openai' (deployment 'openai/gpt-4o') answered 400: This model's maximum "
        "context length is 128000 tokens. However, your messages resulted in 131072 tokens. "
        "Please reduce the length of the messages."
    )


def test_openai_400_invalid_value_keeps_its_code_and_param_and_is_not_retried() -> None:
    provider, dep = openai_adapter()
    exc = mapped_error(provider, dep, "openai/error_400_invalid_value.http")
    assert type(exc) is UpstreamError
    assert (exc.status, exc.type, exc.code, exc.param) == (
        400,
        "invalid_request_error",
        "decimal_above_max_value",
        "temperature",
    )
    assert not exc.retryable and not exc.failover


def test_openai_401_invalid_api_key_fails_over_without_retrying() -> None:
    provider, dep = openai_adapter()
    exc = mapped_error(provider, dep, "openai/error_401_invalid_api_key.http")
    assert type(exc) is UpstreamError
    assert (exc.status, exc.code) == (401, "invalid_api_key")
    assert not exc.retryable and exc.failover


def test_openai_500_server_error_is_retryable() -> None:
    provider, dep = openai_adapter()
    exc = mapped_error(provider, dep, "openai/error_500_server_error.http")
    assert type(exc) is UpstreamError
    assert (exc.status, exc.type, exc.code, exc.retryable) == (500, "server_error", None, True)


def test_openai_502_html_page_is_described_not_quoted() -> None:
    provider, dep = openai_adapter()
    exc = mapped_error(provider, dep, "openai/error_502_html.http")
    assert type(exc) is UpstreamError
    assert (exc.status, exc.type, exc.retryable) == (502, "upstream_error", True)
    assert exc.message == (
        "provider 'openai' (deployment 'openai/gpt-4o') answered 502: "
        "a non-JSON body (text/html, 148 bytes)"
    )
