"""The Mistral adapter alone, fed the recorded payloads of ``tests/payloads/mistral/``."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import (
    ContentFilterError,
    ContextLengthExceededError,
    InvalidRequestError,
    RateLimitError,
    StreamInterruptedError,
    UpstreamError,
)
from gateway.wire import JSON
from providers.base import Deployment, StreamTranslator
from providers.mistral import MistralProvider, MistralSettings, ToolCallIds
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

# --- Mistral ------------------------------------------------------------------------------

MISTRAL_KEY = "mistral-recorded-payloads-key-5f1d3b7e"
# The caller's OpenAI-style tool-call id, and the 9-character id Mistral gets for it.
CALLER_CALL_ID = "call_Lq8bZl1dN3jD4wqGvf8BPkS5"
MISTRAL_CALL_ID = "Cr0G4n6Gv"


def mistral_adapter(
    model: str = "mistral-large-latest", **settings: Any
) -> tuple[MistralProvider, Deployment]:
    config = {"type": "mistral", "api_key": MISTRAL_KEY, **settings}
    provider = MistralProvider("mistral", MistralSettings.model_validate(config))
    return provider, Deployment(f"mistral/{model}", "mistral-large", provider, model)


def mistral_translator(model: str = "mistral-large-latest") -> StreamTranslator:
    provider, dep = mistral_adapter(model)
    request = provider.chat_request({"model": "m", "messages": USER}, dep, stream=True)
    return provider.chat_stream(dep, request)


def tool_round_trip(call_id: str) -> list[JSON]:
    """A conversation in which the assistant called a tool and the caller answered it."""
    return [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": "18C and sunny"},
    ]


def test_mistral_request_posts_to_la_plateforme_with_bearer_key_and_json_accept() -> None:
    provider, dep = mistral_adapter()
    request = provider.chat_request({"model": "mistral-large", "messages": USER}, dep, stream=False)
    assert (request.method, request.url) == ("POST", "https://api.mistral.ai/v1/chat/completions")
    assert request.headers == {
        "content-type": "application/json",
        "authorization": f"Bearer {MISTRAL_KEY}",
        "accept": "application/json",
    }
    assert sent(request) == {"model": "mistral-large-latest", "messages": USER}


def test_mistral_request_carries_the_api_key_only_in_the_authorization_header() -> None:
    provider, dep = mistral_adapter()
    request = provider.chat_request({"model": "mistral-large", "messages": USER}, dep, stream=True)
    assert_secret_only_in(request, MISTRAL_KEY, "authorization")


def test_mistral_stream_request_accepts_event_streams_and_never_sends_stream_options() -> None:
    provider, dep = mistral_adapter()
    body = {
        "model": "mistral-large",
        "messages": USER,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    request = provider.chat_request(body, dep, stream=True)
    assert request.headers["accept"] == "text/event-stream"
    assert sent(request) == {"model": "mistral-large-latest", "messages": USER, "stream": True}
    assert request.dropped_params == ()


def test_mistral_request_renames_openai_fields_to_their_mistral_names() -> None:
    provider, dep = mistral_adapter()
    body = {
        "model": "mistral-large",
        "messages": USER,
        "max_completion_tokens": 256,
        "seed": 42,
        "tools": [WEATHER_TOOL],
        "tool_choice": "required",
        "temperature": 0.3,
    }
    request = provider.chat_request(body, dep, stream=False)
    assert sent(request) == {
        "model": "mistral-large-latest",
        "messages": USER,
        "max_tokens": 256,
        "random_seed": 42,
        "tools": [WEATHER_TOOL],
        "tool_choice": "any",
        "temperature": 0.3,
    }
    assert request.dropped_params == ()


def test_mistral_request_drops_fields_mistral_lacks_and_reports_each_once() -> None:
    provider, dep = mistral_adapter()
    body = {
        "model": "mistral-large",
        "messages": [
            {"role": "system", "content": "Be brief.", "name": "policy"},
            {"role": "user", "content": "Hi", "name": "alice"},
        ],
        "user": "alice@example.com",
        "logit_bias": {"50256": -100},
        "store": True,
        "service_tier": "auto",
        "logprobs": False,  # asks for nothing: removed without a report
        "top_p": 0.9,
    }
    request = provider.chat_request(body, dep, stream=False)
    assert sent(request) == {
        "model": "mistral-large-latest",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ],
        "top_p": 0.9,
    }
    assert request.dropped_params == (
        "messages.name",
        "user",
        "logit_bias",
        "store",
        "service_tier",
    )


def test_mistral_request_sends_developer_messages_as_system() -> None:
    provider, dep = mistral_adapter()
    body = {"model": "m", "messages": [{"role": "developer", "content": "Answer in French."}]}
    request = provider.chat_request(body, dep, stream=False)
    assert sent(request)["messages"] == [{"role": "system", "content": "Answer in French."}]


def test_mistral_request_maps_tool_call_ids_to_nine_characters_and_remembers_them() -> None:
    provider, dep = mistral_adapter()
    body = {"model": "m", "messages": tool_round_trip(CALLER_CALL_ID), "tools": [WEATHER_TOOL]}
    request = provider.chat_request(body, dep, stream=False)
    assert sent(request)["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    "id": MISTRAL_CALL_ID,
                }
            ],
        },
        {"role": "tool", "tool_call_id": MISTRAL_CALL_ID, "content": "18C and sunny"},
    ]
    assert isinstance(request.context, ToolCallIds)
    assert request.context.inbound(MISTRAL_CALL_ID) == CALLER_CALL_ID


def test_mistral_request_null_max_tokens_does_not_shadow_max_completion_tokens() -> None:
    provider, dep = mistral_adapter()
    body = {"model": "m", "messages": USER, "max_tokens": None, "max_completion_tokens": 256}
    request = provider.chat_request(body, dep, stream=False)
    assert sent(request) == {"model": "mistral-large-latest", "messages": USER, "max_tokens": 256}
    assert request.dropped_params == ()


def test_mistral_request_null_mistral_names_do_not_shadow_the_openai_ones() -> None:
    provider, dep = mistral_adapter(drop_unsupported_params=False)
    chat = {"model": "m", "messages": USER, "random_seed": None, "seed": 7}
    assert sent(provider.chat_request(chat, dep, stream=False))["random_seed"] == 7
    embed = {"model": "m", "input": ["a"], "output_dimension": None, "dimensions": 8}
    assert sent(provider.embeddings_request(embed, dep))["output_dimension"] == 8


def test_mistral_foundry_request_uses_models_path_api_version_api_key_and_pass_through() -> None:
    provider, dep = mistral_adapter(
        "mistral-large-2411",
        platform="azure_foundry",
        base_url="https://contoso-ai.services.ai.azure.com",
    )
    request = provider.chat_request({"model": "m", "messages": USER, "seed": 5}, dep, stream=False)
    assert request.url == (
        "https://contoso-ai.services.ai.azure.com/models/chat/completions"
        "?api-version=2024-05-01-preview"
    )
    assert request.headers == {
        "content-type": "application/json",
        "api-key": MISTRAL_KEY,
        "extra-parameters": "pass-through",
        "accept": "application/json",
    }
    assert sent(request) == {"model": "mistral-large-2411", "messages": USER, "random_seed": 5}


def test_mistral_serverless_request_uses_the_v1_path_and_bearer_key() -> None:
    provider, dep = mistral_adapter(
        "Mistral-Large-2411",
        platform="azure_serverless",
        base_url="https://Mistral-Large-2411-abcd.eastus2.models.ai.azure.com",
    )
    request = provider.chat_request({"model": "m", "messages": USER}, dep, stream=False)
    assert request.url == (
        "https://Mistral-Large-2411-abcd.eastus2.models.ai.azure.com/v1/chat/completions"
    )
    assert_secret_only_in(request, MISTRAL_KEY, "authorization")


def test_mistral_embeddings_request_renames_dimensions_and_drops_user() -> None:
    provider, dep = mistral_adapter("mistral-embed")
    body = {
        "model": "mistral-embed",
        "input": ["a", "bb"],
        "dimensions": 16,
        "user": "alice",
        "encoding_format": "float",
    }
    request = provider.embeddings_request(body, dep)
    assert request.url == "https://api.mistral.ai/v1/embeddings"
    assert sent(request) == {
        "model": "mistral-embed",
        "input": ["a", "bb"],
        "output_dimension": 16,
        "encoding_format": "float",
    }
    assert request.dropped_params == ("user",)


def test_mistral_fim_request_posts_prompt_and_suffix_to_fim_completions() -> None:
    provider, dep = mistral_adapter("codestral-2501")
    body = {
        "model": "codestral",
        "prompt": "def add(a, b):",
        "suffix": "\n\nprint(add(1, 2))",
        "max_tokens": 64,
        "seed": 7,
        "stream_options": {"include_usage": True},
    }
    request = provider.fim_request(body, dep, stream=True)
    assert request.url == "https://api.mistral.ai/v1/fim/completions"
    assert request.headers["accept"] == "text/event-stream"
    assert sent(request) == {
        "model": "codestral-2501",
        "prompt": "def add(a, b):",
        "suffix": "\n\nprint(add(1, 2))",
        "max_tokens": 64,
        "random_seed": 7,
        "stream": True,
    }


def test_mistral_answer_becomes_a_chat_completion_with_cached_tokens_in_token_details() -> None:
    provider, dep = mistral_adapter()
    request = provider.chat_request({"model": "m", "messages": USER}, dep, stream=False)
    answer = provider.chat_response(recorded("mistral/chat_completion.json"), dep, request)
    assert answer == {
        "id": "cmpl-e5cc70bb28c444948073e77776eb30ef",
        "object": "chat.completion",
        "created": 1745846900,
        "model": "mistral-large-latest",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "The capital of France is Paris."},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 24,
            "completion_tokens": 8,
            "total_tokens": 32,
            "prompt_tokens_details": {"cached_tokens": 12},
        },
    }


def test_mistral_reasoning_answer_splits_thinking_chunks_into_reasoning_content() -> None:
    provider, dep = mistral_adapter("magistral-medium-2506")
    request = provider.chat_request({"model": "m", "messages": USER}, dep, stream=False)
    answer = provider.chat_response(
        recorded("mistral/chat_completion_reasoning.json"), dep, request
    )
    assert answer["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "12 \u00d7 12 = **144**.",
                "reasoning_content": "The user asks for 12 * 12. That is 144.",
            },
            "finish_reason": "stop",
        }
    ]
    assert answer["usage"] == {
        "prompt_tokens": 11,
        "completion_tokens": 32,
        "total_tokens": 43,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def test_mistral_model_length_finish_reason_becomes_length() -> None:
    provider, dep = mistral_adapter("mistral-small-latest")
    request = provider.chat_request({"model": "m", "messages": USER}, dep, stream=False)
    answer = provider.chat_response(
        recorded("mistral/chat_completion_model_length.json"), dep, request
    )
    assert [c["finish_reason"] for c in answer["choices"]] == ["length"]
    assert answer["usage"] == {
        "prompt_tokens": 31992,
        "completion_tokens": 776,
        "total_tokens": 32768,
    }


def test_mistral_answer_tool_call_arguments_become_json_strings() -> None:
    provider, dep = mistral_adapter()
    body = {"model": "m", "messages": USER, "tools": [WEATHER_TOOL]}
    request = provider.chat_request(body, dep, stream=False)
    answer = provider.chat_response(
        recorded("mistral/chat_completion_tool_calls.json"), dep, request
    )
    assert answer["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": MISTRAL_CALL_ID,  # this request sent no id it could stand for
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    },
                    {
                        "id": "D681PevKs",
                        "type": "function",
                        "function": {
                            "name": "get_time",
                            "arguments": '{"timezone": "Europe/Paris"}',
                        },
                    },
                ],
            },
            "finish_reason": "tool_calls",
        }
    ]


def test_mistral_answer_tool_call_ids_map_back_to_the_callers_ids_of_the_same_request() -> None:
    provider, dep = mistral_adapter()
    body = {"model": "m", "messages": tool_round_trip(CALLER_CALL_ID), "tools": [WEATHER_TOOL]}
    request = provider.chat_request(body, dep, stream=False)
    answer = provider.chat_response(
        recorded("mistral/chat_completion_tool_calls.json"), dep, request
    )
    calls = answer["choices"][0]["message"]["tool_calls"]
    assert [c["id"] for c in calls] == [CALLER_CALL_ID, "D681PevKs"]


def test_mistral_fim_answer_parses_as_a_chat_completion() -> None:
    provider, dep = mistral_adapter("codestral-2501")
    request = provider.fim_request({"prompt": "def add(a, b):"}, dep, stream=False)
    assert provider.chat_response(recorded("mistral/fim_completion.json"), dep, request) == {
        "id": "cmpl-8e1a3c5f7b9d2e4a6c8f0b1d3e5a7c9f",
        "object": "chat.completion",
        "created": 1745846960,
        "model": "codestral-2501",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "\n    return a + b\n"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 18, "completion_tokens": 9, "total_tokens": 27},
    }


def mistral_chunk(head: JSON, delta: JSON, finish: str | None = None) -> JSON:
    return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_mistral_stream_moves_usage_from_the_last_chunk_to_a_chunk_of_its_own() -> None:
    head = {
        "id": "2d5a1c8fb6e94f0d8a3c7e1b9f4d6a20",
        "object": "chat.completion.chunk",
        "created": 1745846950,
        "model": "mistral-large-latest",
    }
    assert translate(mistral_translator(), "mistral/chat_stream.sse") == [
        mistral_chunk(head, {"role": "assistant", "content": ""}),
        mistral_chunk(head, {"content": "Hello"}),
        mistral_chunk(head, {"content": " there!"}),
        mistral_chunk(head, {"content": ""}, "stop"),
        {
            **head,
            "choices": [],
            "usage": {
                "prompt_tokens": 9,
                "completion_tokens": 3,
                "total_tokens": 12,
                "prompt_tokens_details": {"cached_tokens": 0},
            },
        },
    ]


def test_mistral_stream_is_finished_only_by_the_done_marker() -> None:
    finished = finished_after_each_event(mistral_translator(), "mistral/chat_stream.sse")
    assert finished == [False, False, False, False, True]


def test_mistral_stream_thinking_deltas_become_reasoning_content() -> None:
    chunks = translate(
        mistral_translator("magistral-medium-2506"), "mistral/chat_stream_reasoning.sse"
    )
    assert [c["choices"][0]["delta"] for c in chunks[:-1]] == [
        {"role": "assistant", "content": ""},
        {"content": "", "reasoning_content": "The user asks for 12 * 12."},
        {"content": "", "reasoning_content": " That is 144."},
        {"content": "12 \u00d7 12"},
        {"content": " = **144**."},
        {"content": ""},
    ]
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 11,
        "completion_tokens": 32,
        "total_tokens": 43,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def test_mistral_stream_tool_calls_arrive_whole_with_openai_indexes_and_type() -> None:
    head = {
        "id": "4f8a2c6e0b1d43a5b7c9e2f4a6d8b0c1",
        "object": "chat.completion.chunk",
        "created": 1745846980,
        "model": "mistral-large-latest",
    }
    calls = [
        {
            "index": 0,
            "id": "D681PevKs",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {
            "index": 1,
            "id": "Vq2Zc8Bn4",
            "type": "function",
            "function": {"name": "get_time", "arguments": '{"timezone": "Europe/Paris"}'},
        },
    ]
    assert translate(mistral_translator(), "mistral/chat_stream_tool_calls.sse") == [
        mistral_chunk(head, {"role": "assistant", "content": ""}),
        mistral_chunk(head, {"content": "", "tool_calls": calls}, "tool_calls"),
        {
            **head,
            "choices": [],
            "usage": {
                "prompt_tokens": 142,
                "completion_tokens": 39,
                "total_tokens": 181,
                "prompt_tokens_details": {"cached_tokens": 128},
            },
        },
    ]


def test_mistral_stream_model_length_finish_reason_becomes_length() -> None:
    chunks = translate(mistral_translator(), "mistral/chat_stream_model_length.sse")
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]] == [
        None,
        None,
        "length",
    ]
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 32764,
        "completion_tokens": 4,
        "total_tokens": 32768,
    }


def test_mistral_stream_finish_reason_error_raises_after_the_chunks_before_it() -> None:
    translator = mistral_translator()
    chunks: list[JSON] = []
    with pytest.raises(StreamInterruptedError) as caught:
        for event in stream_events("mistral/chat_stream_finish_error.sse"):
            chunks.extend(translator.feed(event))
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""},
        {"content": "Once upon"},
    ]
    assert caught.value.message == (
        "provider 'mistral' (deployment 'mistral/mistral-large-latest') ended the answer with "
        "finish_reason 'error'; the answer above is incomplete"
    )
    assert not translator.finished


def test_mistral_stream_error_event_raises_stream_interrupted_with_its_message() -> None:
    translator = mistral_translator()
    chunks: list[JSON] = []
    with pytest.raises(StreamInterruptedError) as caught:
        for event in stream_events("mistral/chat_stream_error_event.sse"):
            chunks.extend(translator.feed(event))
    assert len(chunks) == 2
    assert caught.value.message == (
        "provider 'mistral' (deployment 'mistral/mistral-large-latest') reported an error "
        "mid-stream: Service unavailable, please retry later."
    )
    assert (caught.value.status, caught.value.code) == (502, "stream_interrupted")


def test_mistral_embeddings_answer_keeps_only_openai_usage_fields() -> None:
    provider, dep = mistral_adapter("mistral-embed")
    assert provider.embeddings_response(recorded("mistral/embeddings.json"), dep) == {
        "id": "embd-aad6fc62b17349b192ef09225058bc45",
        "object": "list",
        "data": [
            {
                "object": "embedding",
                "embedding": [
                    -0.0165863037109375,
                    0.07012939453125,
                    0.031494140625,
                    0.013092041015625,
                ],
                "index": 0,
            },
            {
                "object": "embedding",
                "embedding": [
                    -0.0230560302734375,
                    0.039642333984375,
                    0.0521240234375,
                    -0.0184783935546875,
                ],
                "index": 1,
            },
        ],
        "model": "mistral-embed",
        "usage": {"prompt_tokens": 6, "total_tokens": 6},
    }


def test_mistral_422_validation_detail_becomes_400_naming_the_first_field() -> None:
    provider, dep = mistral_adapter()
    exc = mapped_error(provider, dep, "mistral/error_422_validation.http")
    assert isinstance(exc, InvalidRequestError)
    assert (exc.status, exc.type, exc.param, exc.retryable) == (
        400,
        "invalid_request_error",
        "temperature",
        False,
    )
    assert exc.message == (
        "provider 'mistral' (deployment 'mistral/mistral-large-latest') answered 422: "
        "temperature: Input should be less than or equal to 1.5; "
        "messages.0.user.name: Extra inputs are not permitted"
    )


def test_mistral_422_detail_wrapped_in_an_error_object_is_read() -> None:
    provider, dep = mistral_adapter()
    exc = mapped_error(provider, dep, "mistral/error_422_validation_wrapped.http")
    assert isinstance(exc, InvalidRequestError)
    assert (exc.status, exc.param) == (400, "messages.1.tool.content")
    assert exc.message.endswith("answered 422: messages.1.tool.content: Field required")


def test_mistral_400_invalid_tool_call_id_keeps_mistrals_message_and_code() -> None:
    provider, dep = mistral_adapter()
    exc = mapped_error(provider, dep, "mistral/error_400_tool_call_id.http")
    assert type(exc) is UpstreamError
    assert (exc.status, exc.type, exc.code, exc.retryable) == (
        400,
        "invalid_request_error",
        "3280",
        False,
    )
    assert exc.message.endswith(
        f"answered 400: Tool call id was {CALLER_CALL_ID} but must be a-z, A-Z, 0-9, "
        "with a length of 9."
    )


def test_mistral_400_prompt_too_large_for_model_becomes_context_length_exceeded() -> None:
    provider, dep = mistral_adapter()
    exc = mapped_error(provider, dep, "mistral/error_400_context_length.http")
    assert isinstance(exc, ContextLengthExceededError)
    assert (exc.status, exc.code, exc.retryable) == (400, "context_length_exceeded", False)


def test_mistral_429_rate_limited_is_a_retryable_rate_limit_error() -> None:
    provider, dep = mistral_adapter()
    exc = mapped_error(provider, dep, "mistral/error_429_rate_limited.http")
    assert isinstance(exc, RateLimitError)
    assert (exc.status, exc.type, exc.code, exc.retryable) == (
        429,
        "rate_limit_error",
        "rate_limit_exceeded",
        True,
    )
    assert exc.headers == {}  # x-ratelimit-* describe the quota; they are no retry hint
    assert exc.message.endswith("answered 429: Rate limit exceeded")


def test_mistral_429_keeps_its_retry_after_header() -> None:
    provider, dep = mistral_adapter()
    exc = mapped_error(provider, dep, "mistral/error_429_requests_rate_limit.http")
    assert isinstance(exc, RateLimitError)
    assert exc.headers == {"retry-after": "1"}
    assert exc.message.endswith("answered 429: Requests rate limit exceeded")


def test_mistral_401_says_the_gateways_own_key_was_refused() -> None:
    provider, dep = mistral_adapter()
    exc = mapped_error(provider, dep, "mistral/error_401_unauthorized.http")
    assert type(exc) is UpstreamError
    assert (exc.status, exc.retryable, exc.failover) == (401, False, True)
    assert exc.message == (
        "provider 'mistral' (deployment 'mistral/mistral-large-latest') answered 401: "
        "Unauthorized; the gateway's key for provider 'mistral' was refused (check its api_key)"
    )


def foundry_adapter() -> tuple[MistralProvider, Deployment]:
    return mistral_adapter(
        "mistral-large-2411",
        platform="azure_foundry",
        base_url="https://contoso-ai.services.ai.azure.com",
    )


def test_mistral_foundry_422_azure_envelope_names_the_field() -> None:
    provider, dep = foundry_adapter()
    exc = mapped_error(provider, dep, "mistral/foundry_error_422_validation.http")
    assert isinstance(exc, InvalidRequestError)
    assert (exc.status, exc.param) == (400, "temperature")
    assert exc.message.endswith(
        "answered 422: invalid input error; temperature: Input should be less than or equal to 1.5"
    )


def test_mistral_foundry_content_filter_400_is_a_content_filter_error() -> None:
    provider, dep = foundry_adapter()
    exc = mapped_error(provider, dep, "mistral/foundry_error_400_content_filter.http")
    assert isinstance(exc, ContentFilterError)
    assert (exc.status, exc.code, exc.param, exc.retryable) == (
        400,
        "content_filter",
        "prompt",
        False,
    )


def test_mistral_foundry_429_keeps_retry_after_and_x_ms_retry_after_ms() -> None:
    provider, dep = foundry_adapter()
    exc = mapped_error(provider, dep, "mistral/foundry_error_429.http")
    assert isinstance(exc, RateLimitError)
    assert exc.retryable
    assert exc.headers == {"retry-after": "7", "x-ms-retry-after-ms": "6480"}
