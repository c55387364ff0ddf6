"""The Azure OpenAI adapter alone, fed the recorded payloads of ``tests/payloads/azure/``."""

from __future__ import annotations

from typing import Any

from gateway.errors import (
    ContentFilterError,
    ContextLengthExceededError,
    RateLimitError,
    UpstreamError,
)
from gateway.wire import JSON
from providers.azure import AzureProvider, AzureSettings
from providers.base import Deployment, StreamTranslator
from tests.payload_helpers import (
    USER,
    assert_secret_only_in,
    finished_after_each_event,
    mapped_error,
    recorded,
    sent,
    translate,
)

# --- Azure OpenAI -------------------------------------------------------------------------

AZURE_KEY = "0f3a9c2e5b1d46f8a0c4e7b2d9f5a318"
AZURE_ENDPOINT = "https://contoso.openai.azure.com"
SAFE = {"filtered": False, "severity": "safe"}
NOT_DETECTED = {"filtered": False, "detected": False}
# Prompt and completion filter results, as Azure's default filter reports harmless text.
AZURE_PROMPT_SAFE: JSON = {
    "hate": SAFE,
    "jailbreak": NOT_DETECTED,
    "self_harm": SAFE,
    "sexual": SAFE,
    "violence": SAFE,
}
AZURE_OUTPUT_SAFE: JSON = {
    "hate": SAFE,
    "protected_material_code": NOT_DETECTED,
    "protected_material_text": NOT_DETECTED,
    "self_harm": SAFE,
    "sexual": SAFE,
    "violence": SAFE,
}
AZURE_STREAM_SAFE: JSON = {"hate": SAFE, "self_harm": SAFE, "sexual": SAFE, "violence": SAFE}


def azure_adapter(
    deployment: str = "gpt-4o-prod", **settings: Any
) -> tuple[AzureProvider, Deployment]:
    config = {
        "type": "azure",
        "endpoint": AZURE_ENDPOINT,
        "api_key": AZURE_KEY,
        "api_version": "2024-10-21",
        **settings,
    }
    provider = AzureProvider("azure-westeurope", AzureSettings.model_validate(config))
    dep = Deployment(
        f"azure-westeurope/{deployment}",
        "gpt-4o",
        provider,
        deployment,
        base_model="gpt-4o-2024-08-06",
    )
    return provider, dep


def azure_usage(prompt: int, completion: int) -> JSON:
    return {
        "completion_tokens": completion,
        "completion_tokens_details": {
            "accepted_prediction_tokens": 0,
            "audio_tokens": 0,
            "reasoning_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
        "prompt_tokens": prompt,
        "prompt_tokens_details": {"audio_tokens": 0, "cached_tokens": 0},
        "total_tokens": prompt + completion,
    }


def azure_translator() -> tuple[AzureProvider, StreamTranslator]:
    provider, dep = azure_adapter()
    request = provider.chat_request({"model": "gpt-4o", "messages": USER}, dep, stream=True)
    return provider, provider.chat_stream(dep, request)


def test_azure_deployments_request_names_the_deployment_in_the_path_with_api_version() -> None:
    provider, dep = azure_adapter()
    request = provider.chat_request({"model": "gpt-4o", "messages": USER}, dep, stream=False)
    assert (request.method, request.url) == (
        "POST",
        f"{AZURE_ENDPOINT}/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21",
    )
    assert request.headers == {"api-key": AZURE_KEY, "content-type": "application/json"}
    assert sent(request) == {"model": "gpt-4o-prod", "messages": USER}


def test_azure_request_carries_the_resource_key_only_in_the_api_key_header() -> None:
    provider, dep = azure_adapter()
    request = provider.chat_request({"model": "gpt-4o", "messages": USER}, dep, stream=True)
    assert_secret_only_in(request, AZURE_KEY, "api-key")
    assert "authorization" not in request.headers


def test_azure_v1_stream_request_has_the_deployment_as_model_and_asks_for_usage() -> None:
    provider, dep = azure_adapter(api_style="v1", api_version=None)
    request = provider.chat_request({"model": "gpt-4o", "messages": USER}, dep, stream=True)
    assert request.url == f"{AZURE_ENDPOINT}/openai/v1/chat/completions"
    assert sent(request) == {
        "model": "gpt-4o-prod",
        "messages": USER,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert request.dropped_params == ()


def test_azure_old_api_version_stream_request_drops_callers_stream_options_and_says_so() -> None:
    provider, dep = azure_adapter(api_version="2024-06-01")
    body = {"model": "gpt-4o", "messages": USER, "stream_options": {"include_usage": True}}
    request = provider.chat_request(body, dep, stream=True)
    assert request.url.endswith("/chat/completions?api-version=2024-06-01")
    assert sent(request) == {"model": "gpt-4o-prod", "messages": USER, "stream": True}
    assert request.dropped_params == ("stream_options",)


def test_azure_old_api_version_stream_request_reports_nothing_the_caller_did_not_send() -> None:
    provider, dep = azure_adapter(api_version="2024-06-01")
    request = provider.chat_request({"model": "gpt-4o", "messages": USER}, dep, stream=True)
    assert sent(request) == {"model": "gpt-4o-prod", "messages": USER, "stream": True}
    assert request.dropped_params == ()


def test_azure_answer_keeps_prompt_and_completion_filter_results() -> None:
    provider, dep = azure_adapter()
    request = provider.chat_request({"model": "gpt-4o", "messages": USER}, dep, stream=False)
    answer = provider.chat_response(recorded("azure/chat_completion.json"), dep, request)
    assert answer == {
        "choices": [
            {
                "content_filter_results": AZURE_OUTPUT_SAFE,
                "finish_reason": "stop",
                "index": 0,
                "logprobs": None,
                "message": {
                    "annotations": [],
                    "content": "The capital of France is Paris.",
                    "refusal": None,
                    "role": "assistant",
                },
            }
        ],
        "created": 1745846700,
        "id": "chatcmpl-BR1xKd3Fq8Wm2NzLc5Hv7Tb0Ys9Ra",
        "model": "gpt-4o-2024-08-06",
        "object": "chat.completion",
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": AZURE_PROMPT_SAFE}],
        "system_fingerprint": "fp_ee1d74bde0",
        "usage": azure_usage(24, 8),
    }


def test_azure_stream_moves_prompt_filter_results_onto_the_first_chunk_with_choices() -> None:
    _, translator = azure_translator()
    head = {
        "created": 1745846760,
        "id": "chatcmpl-BR1yLq7Vd2Kx9HpNf4Tc6Wm1Zb3Gs",
        "model": "gpt-4o-2024-08-06",
        "object": "chat.completion.chunk",
        "system_fingerprint": "fp_ee1d74bde0",
    }

    def chunk(delta: JSON, filters: JSON, finish: str | None = None) -> JSON:
        choice = {
            "content_filter_results": filters,
            "delta": delta,
            "finish_reason": finish,
            "index": 0,
            "logprobs": None,
        }
        return {**head, "choices": [choice], "usage": None}

    assert translate(translator, "azure/chat_stream.sse") == [
        {
            **chunk({"content": "", "refusal": None, "role": "assistant"}, {}),
            "prompt_filter_results": [
                {"prompt_index": 0, "content_filter_results": AZURE_PROMPT_SAFE}
            ],
        },
        chunk({"content": "Hello"}, AZURE_STREAM_SAFE),
        chunk({"content": " there!"}, AZURE_STREAM_SAFE),
        chunk({}, {}, "stop"),
        {**head, "choices": [], "usage": azure_usage(9, 3)},
    ]


def test_azure_stream_is_finished_only_by_the_done_marker() -> None:
    _, translator = azure_translator()
    finished = finished_after_each_event(translator, "azure/chat_stream.sse")
    assert finished == [False] * 6 + [True]


def test_azure_stream_async_filter_annotation_chunks_get_a_delta_and_the_stream_head() -> None:
    _, translator = azure_translator()
    chunks = translate(translator, "azure/chat_stream_async_filter.sse")
    head = {
        "id": "chatcmpl-BR1zMa4Xc8Jv1QtRk6Nd2Hy5Fp7Ue",
        "object": "chat.completion.chunk",
        "created": 1745846801,
        "model": "gpt-4o-2024-08-06",
    }

    def annotation(check_offset: int) -> JSON:
        choice = {
            "index": 0,
            "finish_reason": None,
            "content_filter_results": AZURE_STREAM_SAFE,
            "content_filter_offsets": {
                "check_offset": check_offset,
                "start_offset": 0,
                "end_offset": 15,
            },
            "delta": {},
        }
        return {**head, "choices": [choice], "usage": None}

    # The fifth chunk annotates the text so far; the last one arrives after the finish.
    assert [chunks[3], chunks[5]] == [annotation(0), annotation(15)]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [
        None,
        None,
        None,
        None,
        "stop",
        None,
    ]


def test_azure_stream_moves_legacy_prompt_annotations_onto_the_first_chunk() -> None:
    _, translator = azure_translator()
    chunks = translate(translator, "azure/chat_stream_async_filter.sse")
    assert chunks[0] == {
        "id": "chatcmpl-BR1zMa4Xc8Jv1QtRk6Nd2Hy5Fp7Ue",
        "object": "chat.completion.chunk",
        "created": 1745846801,
        "model": "gpt-4o-2024-08-06",
        "choices": [{"index": 0, "finish_reason": None, "delta": {"role": "assistant"}}],
        "usage": None,
        "prompt_annotations": [{"prompt_index": 0, "content_filter_results": AZURE_STREAM_SAFE}],
    }
    assert all("prompt_annotations" not in c for c in chunks[1:])
    assert all(c["choices"] for c in chunks)


def test_azure_stream_cut_by_the_output_filter_ends_with_content_filter_and_its_reason() -> None:
    _, translator = azure_translator()
    chunks = translate(translator, "azure/chat_stream_content_filter.sse")
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1]) == (
        "The duel began"
    )
    assert chunks[-2]["choices"] == [
        {
            "content_filter_results": {
                "hate": SAFE,
                "self_harm": SAFE,
                "sexual": SAFE,
                "violence": {"filtered": True, "severity": "high"},
            },
            "delta": {},
            "finish_reason": "content_filter",
            "index": 0,
            "logprobs": None,
        }
    ]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == azure_usage(17, 41)
    assert translator.finished


def test_azure_embeddings_request_goes_to_the_embeddings_deployment() -> None:
    provider, dep = azure_adapter(deployment="embed-prod")
    request = provider.embeddings_request({"model": "embed", "input": ["a", "bb"]}, dep)
    assert request.url == (
        f"{AZURE_ENDPOINT}/openai/deployments/embed-prod/embeddings?api-version=2024-10-21"
    )
    assert request.headers == {"api-key": AZURE_KEY, "content-type": "application/json"}
    assert sent(request) == {"model": "embed-prod", "input": ["a", "bb"]}


def test_azure_embeddings_answer_parses_to_the_recorded_list() -> None:
    provider, dep = azure_adapter(deployment="embed-prod")
    assert provider.embeddings_response(recorded("azure/embeddings.json"), dep) == {
        "data": [
            {
                "embedding": [0.0123291, -0.0409546, 0.0270081, -0.0061035],
                "index": 0,
                "object": "embedding",
            },
            {
                "embedding": [-0.0187073, 0.0326843, 0.0019531, 0.0443726],
                "index": 1,
                "object": "embedding",
            },
        ],
        "model": "text-embedding-3-small",
        "object": "list",
        "usage": {"prompt_tokens": 5, "total_tokens": 5},
    }


def test_azure_content_filter_400_names_the_tripped_categories_and_is_not_retried() -> None:
    provider, dep = azure_adapter()
    exc = mapped_error(provider, dep, "azure/error_400_content_filter.http")
    assert isinstance(exc, ContentFilterError)
    assert (exc.status, exc.code, exc.param, exc.retryable) == (
        400,
        "content_filter",
        "prompt",
        False,
    )
    assert exc.message.endswith(
        "please read our documentation: https://go.microsoft.com/fwlink/?linkid=2198766 "
        "[filtered: jailbreak, violence (medium)]"
    )


def test_azure_429_keeps_retry_after_and_retry_after_ms_whatever_their_case() -> None:
    provider, dep = azure_adapter()
    exc = mapped_error(provider, dep, "azure/error_429_rate_limit.http")
    assert isinstance(exc, RateLimitError)
    assert (exc.status, exc.code, exc.retryable) == (429, "rate_limit_exceeded", True)
    assert exc.headers == {"retry-after": "6", "retry-after-ms": "6000"}
    assert "Please retry after 6 seconds." in exc.message


def test_azure_api_management_429_is_a_rate_limit_with_its_retry_hints() -> None:
    provider, dep = azure_adapter()
    exc = mapped_error(provider, dep, "azure/error_429_apim.http")
    assert isinstance(exc, RateLimitError)
    assert exc.headers == {"retry-after": "5", "x-ms-retry-after-ms": "4812"}
    assert exc.message == (
        "provider 'azure-westeurope' (deployment 'azure-westeurope/gpt-4o-prod') answered "
        "429: Rate limit is exceeded. Try again in 5 seconds."
    )


def test_azure_404_deployment_not_found_names_the_deployment_and_fails_over() -> None:
    provider, dep = azure_adapter()
    exc = mapped_error(provider, dep, "azure/error_404_deployment_not_found.http")
    assert type(exc) is UpstreamError
    assert (exc.status, exc.code, exc.type) == (404, "DeploymentNotFound", "invalid_request_error")
    assert not exc.retryable and exc.failover
    assert exc.message.endswith(
        "[check that 'gpt-4o-prod' is the name of a deployment in this Azure resource: the "
        "deployment's name, not its model's]"
    )


def test_azure_404_resource_not_found_points_at_the_url_settings_not_the_status_code() -> None:
    provider, dep = azure_adapter()
    exc = mapped_error(provider, dep, "azure/error_404_resource_not_found.http")
    assert type(exc) is UpstreamError
    assert (exc.status, exc.code) == (404, None)
    assert exc.message == (
        "provider 'azure-westeurope' (deployment 'azure-westeurope/gpt-4o-prod') answered "
        "404: Resource not found "
        "[check providers.azure-westeurope.endpoint, api_style and api_version]"
    )


def test_azure_401_points_at_the_api_key_setting_and_drops_the_status_as_code() -> None:
    provider, dep = azure_adapter()
    exc = mapped_error(provider, dep, "azure/error_401_access_denied.http")
    assert type(exc) is UpstreamError
    assert (exc.status, exc.code) == (401, None)
    assert not exc.retryable and exc.failover
    assert exc.message.endswith("for your resource. [check providers.azure-westeurope.api_key]")


def test_azure_400_context_length_becomes_context_length_exceeded() -> None:
    provider, dep = azure_adapter()
    exc = mapped_error(provider, dep, "azure/error_400_context_length.http")
    assert isinstance(exc, ContextLengthExceededError)
    assert (exc.status, exc.code, exc.param, exc.retryable) == (
        400,
        "context_length_exceeded",
        "messages",
        False,
    )


def test_azure_400_unrecognized_stream_options_is_an_invalid_request_not_retried() -> None:
    provider, dep = azure_adapter(api_version="2024-06-01")
    exc = mapped_error(provider, dep, "azure/error_400_stream_options.http")
    assert type(exc) is UpstreamError
    assert (exc.status, exc.type, exc.code, exc.retryable) == (
        400,
        "invalid_request_error",
        None,
        False,
    )
    assert exc.message.endswith(
        "answered 400: Unrecognized request argument supplied: stream_options"
    )
