"""Azure OpenAI: the official openai SDK against a gateway routed to an Azure emulator, and the
adapter's sans-I/O translation (request building, stream reshaping, error mapping, settings)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import orjson
import pytest
import yaml

from gateway.config import load_config
from gateway.errors import ConfigError, ContentFilterError, InvalidRequestError, RateLimitError
from gateway.wire import SSEEvent, UpstreamRequest
from providers.azure import AzureProvider, AzureSettings
from providers.base import Deployment
from tests.conftest import SINGLE_ATTEMPT, GatewayFactory
from tests.emulators.azure_api import (
    API_KEY,
    ASYNC_FILTER_MARKER,
    ENTRA_TOKEN,
    OUTPUT_FILTER_MARKER,
    PROMPT_FILTER_MARKER,
    AzureEmulator,
)
from tests.emulators.common import Fault
from tests.harness import ServerThread

API_VERSION = "2024-10-21"
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
def azure_upstream() -> Iterator[AzureEmulator]:
    emulator = AzureEmulator()
    with ServerThread(emulator.app) as server:
        emulator.url = server.url
        yield emulator


@pytest.fixture
def azure(azure_upstream: AzureEmulator) -> AzureEmulator:
    """The module's Azure emulator, with no recorded requests and no queued faults."""
    azure_upstream.reset()
    return azure_upstream


def gateway_config(endpoint: str) -> dict[str, Any]:
    def provider(**settings: Any) -> dict[str, Any]:
        return {"type": "azure", "endpoint": endpoint, **settings}

    def model(provider: str, deployment: str, **extra: Any) -> dict[str, Any]:
        return {"deployments": [{"provider": provider, "deployment": deployment}], **extra}

    return {
        "routing": SINGLE_ATTEMPT,
        "providers": {
            "azure-westeurope": provider(api_key=API_KEY, api_version=API_VERSION, region="eu"),
            "azure-v1": provider(api_key=API_KEY, api_style="v1"),
            "azure-entra": provider(azure_ad_token=ENTRA_TOKEN, api_version=API_VERSION),
            "azure-legacy": provider(api_key=API_KEY, api_version="2024-06-01"),
            "azure-wrong-key": provider(api_key="not-the-key", api_version=API_VERSION),
        },
        "models": {
            "gpt-4o": {
                "deployments": [
                    {
                        "provider": "azure-westeurope",
                        "deployment": "gpt-4o-prod",
                        "base_model": "gpt-4o-2024-08-06",
                    }
                ]
            },
            "gpt-4o-v1": model("azure-v1", "gpt-4o-prod"),
            "gpt-4o-entra": model("azure-entra", "gpt-4o-prod"),
            "gpt-4o-legacy": model("azure-legacy", "gpt-4o-prod"),
            "gpt-4o-wrong-key": model("azure-wrong-key", "gpt-4o-prod"),
            "gpt-4o-typo": model("azure-westeurope", "gpt-4o-typo"),
            "gpt-4o-typo-then-v1": model(
                "azure-westeurope", "gpt-4o-typo", fallbacks=["gpt-4o-v1"]
            ),
            "embed": model("azure-westeurope", "embed-prod"),
            "embed-v1": model("azure-v1", "embed-prod"),
        },
    }


@pytest.fixture(scope="module")
def client(azure_upstream: AzureEmulator, start_gateway: GatewayFactory) -> openai.OpenAI:
    url = start_gateway(gateway_config(azure_upstream.url))
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0)


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


# --- chat -------------------------------------------------------------------------------------


def test_chat_goes_to_the_deployment_url_with_api_version_and_api_key(client, azure):
    completion = client.chat.completions.create(model="gpt-4o", messages=user("hello"))
    assert completion.choices[0].message.content == "echo: hello"
    seen = azure.requests[-1]
    assert seen.path == "/openai/deployments/gpt-4o-prod/chat/completions"
    assert seen.query == {"api-version": API_VERSION}
    assert seen.headers["api-key"] == API_KEY
    assert "authorization" not in seen.headers


def test_chat_answer_names_the_base_model_not_the_deployment(client, azure):
    completion = client.chat.completions.create(model="gpt-4o", messages=user("hi"))
    assert completion.model == "gpt-4o-2024-08-06"


def test_chat_answer_keeps_azure_content_filter_annotations(client, azure):
    completion = client.chat.completions.create(model="gpt-4o", messages=user("hi"))
    extra = completion.model_extra or {}
    assert extra["prompt_filter_results"][0]["content_filter_results"]["hate"]["filtered"] is False
    choice_extra = completion.choices[0].model_extra or {}
    assert choice_extra["content_filter_results"]["violence"]["severity"] == "safe"


def test_v1_style_puts_the_deployment_in_the_body_and_sends_no_api_version(client, azure):
    completion = client.chat.completions.create(model="gpt-4o-v1", messages=user("hello"))
    assert completion.choices[0].message.content == "echo: hello"
    seen = azure.requests[-1]
    assert seen.path == "/openai/v1/chat/completions"
    assert seen.query == {}
    assert seen.body["model"] == "gpt-4o-prod"
    assert seen.headers["api-key"] == API_KEY


def test_entra_token_is_sent_as_bearer_instead_of_api_key(client, azure):
    completion = client.chat.completions.create(model="gpt-4o-entra", messages=user("hello"))
    assert completion.choices[0].message.content == "echo: hello"
    seen = azure.requests[-1]
    assert seen.headers["authorization"] == f"Bearer {ENTRA_TOKEN}"
    assert "api-key" not in seen.headers


def test_json_mode_reaches_azure_and_answer_parses(client, azure):
    completion = client.chat.completions.create(
        model="gpt-4o", messages=user("json please"), response_format={"type": "json_object"}
    )
    assert json.loads(completion.choices[0].message.content or "") == {"answer": "echo"}
    assert azure.requests[-1].body["response_format"] == {"type": "json_object"}


def test_tool_calls_non_streaming(client, azure):
    completion = client.chat.completions.create(
        model="gpt-4o", messages=user("weather in Paris?"), tools=TOOLS, tool_choice="auto"
    )
    call = completion.choices[0].message.tool_calls[0]
    assert completion.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] == "Paris"
    assert azure.requests[-1].body["tools"] == TOOLS


# --- streaming --------------------------------------------------------------------------------


def test_stream_never_yields_the_empty_choices_prompt_filter_chunk(client, azure):
    stream = client.chat.completions.create(
        model="gpt-4o", messages=user("one two three"), stream=True
    )
    chunks = list(stream)
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "echo: one two three"
    assert azure.requests[-1].body["stream_options"] == {"include_usage": True}


def test_stream_moves_prompt_filter_results_onto_the_first_chunk(client, azure):
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=user("a"), stream=True))
    first = chunks[0].model_extra or {}
    assert first["prompt_filter_results"][0]["prompt_index"] == 0
    assert all("prompt_filter_results" not in (c.model_extra or {}) for c in chunks[1:])


def test_stream_with_include_usage_ends_with_the_only_usage_chunk(client, azure):
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o",
            messages=user("a b"),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    empty = [c for c in chunks if not c.choices]
    assert empty == [chunks[-1]]
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 2
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_keeps_content_filter_results_on_choices(client, azure):
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=user("a"), stream=True))
    content = [c for c in chunks if c.choices[0].delta.content]
    results = (content[0].choices[0].model_extra or {})["content_filter_results"]
    assert results["sexual"] == {"filtered": False, "severity": "safe"}


def test_stream_annotation_chunks_get_a_delta_and_the_stream_id(client, azure):
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o", messages=user(f"say {ASYNC_FILTER_MARKER}"), stream=True
        )
    )
    annotated = [c for c in chunks if "content_filter_offsets" in (c.choices[0].model_extra or {})]
    assert len(annotated) == 1
    assert annotated[0].choices[0].delta.content is None
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id
    assert {c.model for c in chunks} == {"gpt-4o-2024-08-06"}


def test_tool_call_deltas_stream_and_reassemble(client, azure):
    stream = client.chat.completions.create(
        model="gpt-4o", messages=user("weather?"), tools=TOOLS, stream=True
    )
    args = ""
    name = None
    deltas = 0
    for chunk in stream:
        for call in chunk.choices[0].delta.tool_calls or []:
            deltas += 1
            name = name or call.function.name
            args += call.function.arguments or ""
    assert name == "get_weather"
    assert deltas > 2
    assert json.loads(args) == {"city": "Paris", "unit": "c"}


def test_v1_style_streams_with_usage(client, azure):
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-v1",
            messages=user("a b c"),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 3
    assert azure.requests[-1].path == "/openai/v1/chat/completions"


def test_old_api_version_streams_without_stream_options(client, azure):
    chunks = list(
        client.chat.completions.create(model="gpt-4o-legacy", messages=user("a"), stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "echo: a"
    assert "stream_options" not in azure.requests[-1].body


def test_old_api_version_reports_dropped_stream_options(client, azure):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-legacy",
        messages=user("a"),
        stream=True,
        stream_options={"include_usage": True},
    )
    *answer, last = list(raw.parse())
    assert raw.headers["x-gateway-dropped-params"] == "stream_options"
    assert all(c.choices for c in answer)
    # The caller asked for usage that Azure cannot send: the gateway counts it, flagged.
    assert last.choices == [] and last.usage is not None and last.model_extra is not None
    assert last.model_extra["x_gateway"]["usage_estimated"] is True
    assert "stream_options" not in azure.requests[-1].body


def test_stream_cut_by_azure_reaches_caller_as_an_error(client, azure):
    azure.fail_next(Fault(cut_after=3))
    stream = client.chat.completions.create(
        model="gpt-4o", messages=user("one two three four"), stream=True
    )
    with pytest.raises(openai.APIError, match="partial"):
        list(stream)


# --- content filtering ------------------------------------------------------------------------


def test_content_filter_refusal_reaches_caller_with_its_reason(client, azure):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="gpt-4o", messages=user(f"tell me about {PROMPT_FILTER_MARKER}")
        )
    err = caught.value
    assert err.status_code == 400
    assert err.code == "content_filter"
    assert isinstance(err.body, dict)
    assert "violence (medium)" in err.body["message"]
    assert "content management policy" in err.body["message"]


def test_request_after_content_filter_refusal_is_answered(client, azure):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt-4o", messages=user(PROMPT_FILTER_MARKER))
    completion = client.chat.completions.create(model="gpt-4o", messages=user("hello again"))
    assert completion.choices[0].message.content == "echo: hello again"
    assert len(azure.requests) == 2  # a refusal is not retried


def test_content_filter_finish_reason_mid_stream_passes_through(client, azure):
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o", messages=user(f"{OUTPUT_FILTER_MARKER} now"), stream=True
        )
    )
    last = chunks[-1].choices[0]
    assert last.finish_reason == "content_filter"
    assert (last.model_extra or {})["content_filter_results"]["violence"]["filtered"] is True
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "echo: filtered-answer"


def test_content_filter_finish_reason_non_streaming_passes_through(client, azure):
    completion = client.chat.completions.create(
        model="gpt-4o", messages=user(f"{OUTPUT_FILTER_MARKER} now")
    )
    assert completion.choices[0].finish_reason == "content_filter"


# --- other upstream errors --------------------------------------------------------------------


def test_rate_limit_keeps_azure_retry_headers(client, azure):
    azure.fail_next(
        Fault(
            status=429,
            body=orjson.dumps(
                {"error": {"code": "429", "message": "Rate limit exceeded. Retry after 6 seconds."}}
            ),
            headers={"retry-after": "6", "x-ms-retry-after-ms": "6000"},
        )
    )
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=user("hi"))
    err = caught.value
    assert err.code == "rate_limit_exceeded"
    assert err.response.headers["retry-after"] == "6"
    assert err.response.headers["x-ms-retry-after-ms"] == "6000"


def test_unknown_deployment_answers_404_naming_the_deployment(client, azure):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o-typo", messages=user("hi"))
    assert caught.value.code == "DeploymentNotFound"
    assert "'gpt-4o-typo' is the name of a deployment" in str(caught.value.body)


def test_unknown_deployment_falls_back_to_the_next_model(client, azure):
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-typo-then-v1", messages=user("hi")
    )
    assert raw.parse().choices[0].message.content == "echo: hi"
    assert raw.headers["x-gateway-attempts"] == "2"
    assert raw.headers["x-gateway-provider"] == "azure-v1"


def test_rejected_api_key_names_the_setting_to_fix(client, azure):
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="gpt-4o-wrong-key", messages=user("hi"))
    assert "providers.azure-wrong-key.api_key" in str(caught.value.body)
    assert caught.value.code != "401"


# --- embeddings -------------------------------------------------------------------------------


def test_embeddings_go_to_the_deployment_url(client, azure):
    result = client.embeddings.create(model="embed", input=["a", "bb"])
    assert [d.index for d in result.data] == [0, 1]
    assert result.model == "text-embedding-3-small"
    seen = azure.requests[-1]
    assert seen.path == "/openai/deployments/embed-prod/embeddings"
    assert seen.query == {"api-version": API_VERSION}


def test_v1_style_embeddings_name_the_deployment_in_the_body(client, azure):
    result = client.embeddings.create(model="embed-v1", input="a")
    assert len(result.data) == 1
    seen = azure.requests[-1]
    assert seen.path == "/openai/v1/embeddings"
    assert seen.body["model"] == "embed-prod"


# --- sans-I/O: the adapter alone --------------------------------------------------------------


def adapter(**settings: Any) -> tuple[AzureProvider, Deployment]:
    base = {"type": "azure", "endpoint": "https://contoso.openai.azure.com/", "api_key": "k"}
    provider = AzureProvider("az", AzureSettings.model_validate({**base, **settings}))
    deployment = Deployment(
        id="az/gpt-4o-prod", public_model="gpt-4o", provider=provider, model="gpt-4o-prod"
    )
    return provider, deployment


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": user("hi"), **extra}


def test_request_for_deployments_style():
    provider, dep = adapter(api_version=API_VERSION, headers={"x-team": "search"})
    request = provider.chat_request(chat_body(), dep, stream=False)
    assert request.method == "POST"
    assert request.url == (
        "https://contoso.openai.azure.com/openai/deployments/gpt-4o-prod/chat/completions"
        "?api-version=2024-10-21"
    )
    assert request.headers["api-key"] == "k"
    assert request.headers["x-team"] == "search"
    assert "authorization" not in request.headers
    assert orjson.loads(request.body or b"")["messages"] == user("hi")


def test_request_for_v1_style_has_the_deployment_as_model():
    provider, dep = adapter(api_style="v1")
    request = provider.chat_request(chat_body(), dep, stream=True)
    assert request.url == "https://contoso.openai.azure.com/openai/v1/chat/completions"
    body = orjson.loads(request.body or b"")
    assert body["model"] == "gpt-4o-prod"
    assert body["stream_options"] == {"include_usage": True}


def test_request_for_v1_style_carries_an_optional_api_version():
    provider, dep = adapter(api_style="v1", api_version="preview")
    assert provider.embeddings_request({"input": "a"}, dep).url == (
        "https://contoso.openai.azure.com/openai/v1/embeddings?api-version=preview"
    )


def test_request_with_entra_token_has_bearer_and_no_api_key():
    provider, dep = adapter(api_key=None, azure_ad_token="tok", api_version=API_VERSION)
    headers = provider.chat_request(chat_body(), dep, stream=False).headers
    assert headers["authorization"] == "Bearer tok"
    assert "api-key" not in headers


def test_old_api_version_drops_stream_options_and_says_so():
    provider, dep = adapter(api_version="2024-06-01")
    request = provider.chat_request(
        chat_body(stream_options={"include_usage": True}), dep, stream=True
    )
    assert "stream_options" not in orjson.loads(request.body or b"")
    assert request.dropped_params == ("stream_options",)


def test_old_api_version_refuses_stream_options_when_dropping_is_off():
    provider, dep = adapter(api_version="2024-06-01", drop_unsupported_params=False)
    with pytest.raises(InvalidRequestError, match="2024-09-01-preview"):
        provider.chat_request(chat_body(stream_options={"include_usage": True}), dep, stream=True)


def feed(provider: AzureProvider, dep: Deployment, *chunks: dict[str, Any]) -> list[Any]:
    translator = provider.chat_stream(dep, UpstreamRequest("POST", provider.url(dep, "x")))
    out: list[Any] = []
    for chunk in chunks:
        out.extend(translator.feed(SSEEvent(None, orjson.dumps(chunk))))
    return out


ANON = {"id": "", "model": "", "created": 0, "object": ""}
HEAD = {"id": "chatcmpl-1", "model": "gpt-4o-2024-08-06", "created": 7, "object": "x"}
PROMPT_FILTER = [{"prompt_index": 0, "content_filter_results": {}}]


@pytest.mark.parametrize("usage", [{}, {"usage": None}], ids=["no-usage", "null-usage"])
def test_translator_moves_prompt_filter_results_to_the_next_chunk(usage):
    provider, dep = adapter(api_version=API_VERSION)
    opening = {**ANON, "choices": [], "prompt_filter_results": PROMPT_FILTER, **usage}
    first = {**HEAD, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}
    out = feed(provider, dep, opening, first)
    assert len(out) == 1
    assert out[0]["prompt_filter_results"] == PROMPT_FILTER
    assert out[0]["choices"] == first["choices"]


def test_translator_keeps_the_usage_chunk():
    provider, dep = adapter(api_version=API_VERSION)
    usage = {**HEAD, "choices": [], "usage": {"prompt_tokens": 1}}
    assert feed(provider, dep, usage) == [usage]


def test_translator_fills_delta_and_head_of_annotation_chunks():
    provider, dep = adapter(api_version=API_VERSION)
    first = {**HEAD, "choices": [{"index": 0, "delta": {"content": "x"}}]}
    annotation = {**ANON, "choices": [{"index": 0, "content_filter_results": {}}]}
    out = feed(provider, dep, first, annotation)
    assert out[1]["choices"][0] == {"index": 0, "content_filter_results": {}, "delta": {}}
    assert (out[1]["id"], out[1]["model"], out[1]["created"]) == ("chatcmpl-1", HEAD["model"], 7)
    assert out[1]["object"] == "chat.completion.chunk"


def azure_error_body(**error: Any) -> bytes:
    return orjson.dumps({"error": error})


def test_error_content_filter_lists_every_tripped_category():
    provider, dep = adapter(api_version=API_VERSION)
    body = azure_error_body(
        code="content_filter",
        message="filtered",
        innererror={
            "code": "ResponsibleAIPolicyViolation",
            "content_filter_result": {
                "hate": {"filtered": False, "severity": "safe"},
                "violence": {"filtered": True, "severity": "medium"},
                "jailbreak": {"filtered": True, "detected": True},
                "custom_blocklists": {
                    "filtered": True,
                    "details": [{"filtered": True, "id": "b1"}],
                },
            },
        },
    )
    exc = provider.error(400, {}, body, dep)
    assert isinstance(exc, ContentFilterError)
    assert exc.status == 400 and not exc.retryable
    assert "[filtered: violence (medium), jailbreak, custom_blocklists (b1)]" in exc.message


def test_error_code_that_repeats_the_status_becomes_the_gateway_code():
    provider, dep = adapter(api_version=API_VERSION)
    headers = {"retry-after": "2", "x-ms-retry-after-ms": "2000", "x-other": "no"}
    exc = provider.error(429, headers, azure_error_body(code="429", message="slow down"), dep)
    assert isinstance(exc, RateLimitError)
    assert exc.code == "rate_limit_exceeded" and exc.retryable
    assert exc.headers == {"retry-after": "2", "x-ms-retry-after-ms": "2000"}


def test_error_deployment_not_found_lets_the_plan_move_on():
    provider, dep = adapter(api_version=API_VERSION)
    body = azure_error_body(code="DeploymentNotFound", message="does not exist")
    exc = provider.error(404, {}, body, dep)
    assert (
        exc.status == 404
        and exc.code == "DeploymentNotFound"
        and exc.failover
        and not exc.retryable
    )


# --- settings -----------------------------------------------------------------------------------


def config_error(**settings: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config({"providers": {"az": {"type": "azure", **settings}}})
    return str(caught.value)


ENDPOINT = "https://contoso.openai.azure.com"


def test_settings_need_api_version_for_the_deployments_style():
    assert "api_version is required with api_style 'deployments'" in config_error(
        endpoint=ENDPOINT, api_key="k"
    )


def test_settings_need_api_key_or_entra_token():
    message = config_error(endpoint=ENDPOINT, api_version=API_VERSION)
    assert "set api_key (the resource key) or azure_ad_token" in message


def test_settings_refuse_both_api_key_and_entra_token():
    message = config_error(
        endpoint=ENDPOINT, api_version=API_VERSION, api_key="k", azure_ad_token="t"
    )
    assert "either api_key or azure_ad_token, not both" in message


def test_settings_refuse_an_endpoint_with_the_openai_path():
    message = config_error(endpoint=ENDPOINT + "/openai/v1", api_key="k", api_style="v1")
    assert "providers.az.endpoint: give the resource root only" in message


def test_settings_point_base_url_users_to_endpoint():
    message = config_error(endpoint=ENDPOINT, base_url=ENDPOINT, api_key="k", api_style="v1")
    assert "azure uses 'endpoint'" in message


def test_settings_refuse_a_malformed_api_version():
    assert "api_version: expected an Azure OpenAI api-version" in config_error(
        endpoint=ENDPOINT, api_key="k", api_version="v2024"
    )


def test_settings_accept_an_unquoted_yaml_api_version():
    data = yaml.safe_load(
        "providers:\n"
        "  az: {type: azure, endpoint: https://contoso.openai.azure.com, api_key: k,"
        " api_version: 2024-10-21}\n"
    )
    settings = load_config(data).providers["az"]
    assert isinstance(settings, AzureSettings) and settings.api_version == API_VERSION


def test_old_api_version_narrows_capabilities_so_json_schema_is_routed_elsewhere() -> None:
    from gateway.config import load_config
    from gateway.errors import InvalidRequestError
    from gateway.routing import Router

    router = Router(
        load_config(
            {
                "providers": {
                    "old": {
                        "type": "azure",
                        "endpoint": "https://x.openai.azure.com",
                        "api_key": "k",
                        "api_version": "2024-06-01",
                    }
                },
                "models": {"m": {"deployments": [{"provider": "old", "deployment": "d"}]}},
            }
        )
    )
    caps = router.providers["old"].capabilities
    assert caps.json_schema is False and caps.usage_in_stream is False and caps.tools is True
    with pytest.raises(InvalidRequestError, match="lacks json_schema"):
        router.plan("m", None, frozenset({"chat", "json_schema"}))
