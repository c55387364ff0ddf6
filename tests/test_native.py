"""Provider-native surfaces: the official AzureOpenAI client and the mistralai SDK, unchanged,
against a running gateway routed to the OpenAI, Azure and Mistral emulators — each call going
through the same pipeline (keys, routing, costs) and recorded in the ledger with its surface."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import orjson
import pytest
import yaml
from mistralai.client import Mistral

from gateway import AsyncGateway
from gateway.config import load_config
from gateway.errors import ConfigError
from providers.mistral import FIM_FIELDS
from tests.conftest import SINGLE_ATTEMPT, GatewayFactory
from tests.emulators import azure_api, mistral_api
from tests.emulators.azure_api import AzureEmulator
from tests.emulators.common import Fault
from tests.emulators.mistral_api import MistralEmulator
from tests.emulators.openai_api import API_KEY as OPENAI_KEY
from tests.emulators.openai_api import OpenAIEmulator
from tests.harness import ServerThread

MASTER = "sk-gw-native-master"
API_VERSION = "2024-10-21"
USER: list[Any] = [{"role": "user", "content": "hello there"}]
SPEC = Path(
    os.environ.get("MISTRAL_OPENAPI_SPEC")
    or Path(__file__).resolve().parents[2] / "shared" / "specs" / "mistral-openapi.yaml"
)


@pytest.fixture(scope="module")
def azure_upstream() -> Iterator[AzureEmulator]:
    emulator = AzureEmulator()
    with ServerThread(emulator.app) as server:
        emulator.url = server.url
        yield emulator


@pytest.fixture(scope="module")
def mistral_upstream() -> Iterator[MistralEmulator]:
    emulator = MistralEmulator()
    with ServerThread(emulator.app) as server:
        emulator.url = server.url
        yield emulator


@pytest.fixture
def azure_emu(azure_upstream: AzureEmulator) -> AzureEmulator:
    azure_upstream.reset()
    return azure_upstream


@pytest.fixture
def mistral_emu(mistral_upstream: MistralEmulator) -> MistralEmulator:
    mistral_upstream.reset()
    return mistral_upstream


@pytest.fixture(scope="module")
def gateway(
    openai_upstream: OpenAIEmulator,
    azure_upstream: AzureEmulator,
    mistral_upstream: MistralEmulator,
    start_gateway: GatewayFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    """The gateway's root URL (no /v1), with a master key and a SQLite ledger."""
    ledger = tmp_path_factory.mktemp("native") / "ledger.db"

    def one(provider: str, **where: str) -> dict[str, Any]:
        return {"deployments": [{"provider": provider, **where}]}

    url = start_gateway(
        {
            "auth": {"master_key": MASTER},
            "ledger": {"url": f"sqlite+aiosqlite:///{ledger}", "flush_interval": 0.05},
            "routing": SINGLE_ATTEMPT,
            "providers": {
                "openai": {
                    "type": "openai",
                    "api_key": OPENAI_KEY,
                    "base_url": openai_upstream.url + "/v1",
                },
                "azure": {
                    "type": "azure",
                    "endpoint": azure_upstream.url,
                    "api_key": azure_api.API_KEY,
                    "api_version": API_VERSION,
                },
                "mistral": {
                    "type": "mistral",
                    "api_key": mistral_api.API_KEY,
                    "base_url": mistral_upstream.url + "/v1",
                },
            },
            "models": {
                "gpt-4o": one("openai", model="gpt-4o"),
                "embed-small": one("openai", model="text-embedding-3-small"),
                "gpt-4o-azure": {
                    "deployments": [
                        {
                            "provider": "azure",
                            "deployment": "gpt-4o-prod",
                            "base_model": "gpt-4o-2024-08-06",
                        }
                    ]
                },
                "embed-azure": {
                    "deployments": [
                        {
                            "provider": "azure",
                            "deployment": "embed-prod",
                            "base_model": "text-embedding-3-small",
                        }
                    ]
                },
                "codestral": one("mistral", model="codestral-latest"),
                "codestral-twice": {
                    "deployments": [
                        {"provider": "mistral", "model": "codestral-latest"},
                        {"provider": "mistral", "model": "codestral-2501"},
                    ],
                    "strategy": "round-robin",
                },
                "coder": {
                    "strategy": "round-robin",
                    "deployments": [
                        {"provider": "openai", "model": "gpt-4o"},
                        {"provider": "mistral", "model": "codestral-latest"},
                    ],
                },
                "mistral-large": one("mistral", model="mistral-large-latest"),
                "mistral-embed": one("mistral", model="mistral-embed"),
            },
            "surfaces": {
                "azure": {"deployments": {"my-gpt4o": "gpt-4o", "my-embedder": "embed-small"}}
            },
        }
    )
    return url.removesuffix("/v1")


class SeenIds:
    """The gateway's x-request-id of each response a client received."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def __call__(self, response: httpx2.Response) -> None:
        self.ids.append(response.headers.get("x-request-id", ""))

    @property
    def last(self) -> str:
        return self.ids[-1]


@pytest.fixture
def seen() -> SeenIds:
    return SeenIds()


@pytest.fixture
def azure_client(gateway: str, seen: SeenIds) -> openai.AzureOpenAI:
    """Azure's client as its users configure it; the key is a gateway key, not Azure's."""
    return openai.AzureOpenAI(
        azure_endpoint=gateway,
        api_key=MASTER,
        api_version=API_VERSION,
        max_retries=0,
        http_client=httpx2.Client(event_hooks={"response": [seen]}),
    )


@pytest.fixture
def mistral_client(gateway: str, seen: SeenIds) -> Mistral:
    return Mistral(
        api_key=MASTER,
        server_url=gateway,
        client=httpx2.Client(event_hooks={"response": [seen]}),
    )


def record(gateway: str, request_id: str) -> dict[str, Any]:
    """The ledger's record of one request, read back over the spend API once it is written."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        resp = httpx.get(
            gateway + "/v1/spend/records",
            params={"since": "1h", "limit": "1000"},
            headers={"authorization": f"Bearer {MASTER}"},
        )
        assert resp.status_code == 200, resp.text
        for item in resp.json()["data"]:
            if item["request_id"] == request_id:
                return dict(item)
        time.sleep(0.05)
    raise AssertionError(f"request {request_id} was never recorded")


def assert_priced(rec: dict[str, Any]) -> None:
    assert rec["status"] == 200
    assert rec["cost_usd"] is not None and float(rec["cost_usd"]) > 0


# --- Azure OpenAI: the AzureOpenAI client -----------------------------------------------------


def test_azure_client_chat_through_mapped_deployment_reaches_openai_without_filter_results(
    gateway, azure_client, seen, openai_emu
):
    raw = azure_client.chat.completions.with_raw_response.create(model="my-gpt4o", messages=USER)
    body = orjson.loads(raw.http_response.content)
    assert body["choices"][0]["message"]["content"] == "echo: hello there"
    assert "prompt_filter_results" not in body
    assert "content_filter_results" not in body["choices"][0]
    assert raw.headers["x-gateway-provider"] == "openai"
    assert openai_emu.requests[-1].body["model"] == "gpt-4o"
    rec = record(gateway, seen.last)
    assert rec["surface"] == "azure" and rec["operation"] == "chat" and rec["model"] == "gpt-4o"
    assert_priced(rec)


def test_azure_client_chat_answered_by_azure_keeps_its_filter_results(
    gateway, azure_client, seen, azure_emu
):
    raw = azure_client.chat.completions.with_raw_response.create(
        model="gpt-4o-azure", messages=USER
    )
    body = orjson.loads(raw.http_response.content)
    assert body["choices"][0]["message"]["content"] == "echo: hello there"
    assert body["prompt_filter_results"][0]["content_filter_results"] == azure_api.SAFE
    assert body["choices"][0]["content_filter_results"] == azure_api.SAFE
    assert azure_emu.requests[-1].path == "/openai/deployments/gpt-4o-prod/chat/completions"
    rec = record(gateway, seen.last)
    assert rec["surface"] == "azure" and rec["provider"] == "azure"
    assert_priced(rec)


def test_azure_client_stream_from_azure_opens_with_its_prompt_filter_chunk(
    gateway, azure_client, seen, azure_emu
):
    chunks = list(
        azure_client.chat.completions.create(model="gpt-4o-azure", messages=USER, stream=True)
    )
    opening = chunks[0].model_dump()
    assert opening["choices"] == [] and opening["id"] == ""
    assert opening["prompt_filter_results"][0]["content_filter_results"] == azure_api.SAFE
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: hello there"
    with_content = [c.model_dump() for c in chunks if c.choices and c.choices[0].delta.content]
    assert all(c["choices"][0]["content_filter_results"] for c in with_content)
    assert all("prompt_filter_results" not in c.model_dump() for c in chunks[1:])
    rec = record(gateway, seen.last)
    assert rec["surface"] == "azure" and rec["stream"] is True
    assert_priced(rec)


def test_azure_client_stream_from_openai_has_no_filter_results(
    gateway, azure_client, seen, openai_emu
):
    chunks = [
        c.model_dump()
        for c in azure_client.chat.completions.create(model="my-gpt4o", messages=USER, stream=True)
    ]
    assert all(c["choices"] for c in chunks)
    assert not any("prompt_filter_results" in c for c in chunks)
    assert not any("content_filter_results" in ch for c in chunks for ch in c["choices"])
    text = "".join(c["choices"][0]["delta"]["content"] or "" for c in chunks)
    assert text == "echo: hello there"
    rec = record(gateway, seen.last)
    assert rec["surface"] == "azure" and rec["stream"] is True and rec["provider"] == "openai"


@pytest.mark.parametrize(
    ("deployment", "provider"), [("my-embedder", "openai"), ("embed-azure", "azure")]
)
def test_azure_client_embeddings_are_served_and_recorded(
    gateway, azure_client, seen, openai_emu, azure_emu, deployment, provider
):
    result = azure_client.embeddings.create(model=deployment, input=["a b", "c"])
    assert [d.index for d in result.data] == [0, 1]
    assert result.usage.prompt_tokens == 3
    rec = record(gateway, seen.last)
    assert rec["surface"] == "azure" and rec["operation"] == "embeddings"
    assert rec["provider"] == provider
    assert_priced(rec)


def test_unknown_deployment_is_azures_deployment_not_found_naming_the_mapping(azure_client):
    with pytest.raises(openai.NotFoundError) as caught:
        azure_client.chat.completions.create(model="no-such-deployment", messages=USER)
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["code"] == "DeploymentNotFound"
    assert "'no-such-deployment'" in error["message"]
    assert "surfaces.azure.deployments" in error["message"]


def test_azure_surface_refuses_a_key_that_is_not_the_gateways(gateway):
    client = openai.AzureOpenAI(
        azure_endpoint=gateway, api_key=azure_api.API_KEY, api_version=API_VERSION, max_retries=0
    )
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="my-gpt4o", messages=USER)


def test_deployment_in_the_path_is_the_model_even_without_one_in_the_body(gateway, openai_emu):
    resp = httpx.post(
        f"{gateway}/openai/deployments/my-gpt4o/chat/completions",
        params={"api-version": API_VERSION},
        headers={"api-key": MASTER},
        json={"messages": USER},
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == "echo: hello there"
    assert openai_emu.requests[-1].body["model"] == "gpt-4o"


def test_azure_v1_routes_take_the_deployment_from_the_body_and_a_bearer_key(
    gateway, seen, openai_emu, azure_emu
):
    client = openai.OpenAI(
        base_url=gateway + "/openai/v1/",
        api_key=MASTER,
        max_retries=0,
        http_client=httpx2.Client(event_hooks={"response": [seen]}),
    )
    completion = client.chat.completions.create(model="gpt-4o-azure", messages=USER)
    assert completion.choices[0].message.content == "echo: hello there"
    assert azure_emu.requests[-1].path == "/openai/deployments/gpt-4o-prod/chat/completions"
    assert record(gateway, seen.last)["surface"] == "azure"
    vectors = client.embeddings.create(model="my-embedder", input="a")
    assert len(vectors.data) == 1
    assert openai_emu.requests[-1].body["model"] == "text-embedding-3-small"
    assert record(gateway, seen.last)["operation"] == "embeddings"


def test_azure_surface_applies_the_keys_model_limits(gateway):
    created = httpx.post(
        gateway + "/admin/keys",
        headers={"authorization": f"Bearer {MASTER}"},
        json={"name": "azure-surface-user", "allowed_models": ["gpt-4o"]},
    )
    assert created.status_code == 201, created.text
    client = openai.AzureOpenAI(
        azure_endpoint=gateway,
        api_key=created.json()["key"],
        api_version=API_VERSION,
        max_retries=0,
    )
    assert client.chat.completions.create(model="my-gpt4o", messages=USER).choices
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(model="gpt-4o-azure", messages=USER)
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "model_not_allowed"


# --- Mistral: the mistralai SDK -------------------------------------------------------------


def test_mistralai_chat_is_recorded_as_the_mistral_surface_with_its_cost(
    gateway, mistral_client, seen, mistral_emu
):
    response = mistral_client.chat.complete(model="mistral-large", messages=USER, random_seed=7)
    assert response.choices[0].message.content == "echo: hello there"
    assert mistral_emu.requests[-1].body["random_seed"] == 7
    rec = record(gateway, seen.last)
    assert rec["surface"] == "mistral" and rec["operation"] == "chat"
    assert rec["model"] == "mistral-large" and rec["prompt_tokens"] == 2
    assert_priced(rec)


def test_mistralai_stream_carries_usage_on_its_last_chunk_and_every_chunk_has_choices(
    gateway, mistral_client, seen, mistral_emu
):
    events = list(mistral_client.chat.stream(model="mistral-large", messages=USER))
    assert all(e.data.choices for e in events)
    text = "".join(str(e.data.choices[0].delta.content or "") for e in events)
    assert text == "echo: hello there"
    last = events[-1].data
    assert last.choices[0].finish_reason == "stop"
    assert last.usage is not None and last.usage.prompt_tokens == 2
    assert all(e.data.usage is None for e in events[:-1])
    rec = record(gateway, seen.last)
    assert rec["surface"] == "mistral" and rec["stream"] is True
    assert_priced(rec)


def test_mistralai_chat_routed_to_openai_sends_openais_names(
    gateway, mistral_client, seen, openai_emu
):
    response = mistral_client.chat.complete(
        model="gpt-4o", messages=USER, random_seed=7, tool_choice="any", tools=[WEATHER]
    )
    assert response.choices[0].message.tool_calls
    sent = openai_emu.requests[-1].body
    assert sent["seed"] == 7 and "random_seed" not in sent
    assert sent["tool_choice"] == "required"
    assert record(gateway, seen.last)["surface"] == "mistral"


def test_mistralai_fim_complete_reaches_mistrals_fim_route_and_is_priced(
    gateway, mistral_client, seen, mistral_emu
):
    response = mistral_client.fim.complete(
        model="codestral", prompt="def add(a, b):", suffix="return result", max_tokens=64
    )
    assert response.choices[0].message.content == "<fill between 'b):' and 'return'>"
    sent = mistral_emu.requests[-1]
    assert sent.path == "/v1/fim/completions"
    assert sent.body == {
        "model": "codestral-latest",
        "prompt": "def add(a, b):",
        "suffix": "return result",
        "max_tokens": 64,
    }
    rec = record(gateway, seen.last)
    assert rec["surface"] == "mistral" and rec["operation"] == "fim"
    assert rec["model"] == "codestral" and rec["completion_tokens"] == 5
    assert_priced(rec)


def test_mistralai_fim_stream_ends_with_usage_and_is_priced(
    gateway, mistral_client, seen, mistral_emu
):
    events = list(mistral_client.fim.stream(model="codestral", prompt="x = ", suffix="y"))
    text = "".join(str(e.data.choices[0].delta.content or "") for e in events)
    assert text == "<fill between '=' and 'y'>"
    assert events[-1].data.usage is not None and events[-1].data.usage.completion_tokens == 5
    assert mistral_emu.requests[-1].body["stream"] is True
    rec = record(gateway, seen.last)
    assert rec["operation"] == "fim" and rec["stream"] is True and rec["surface"] == "mistral"
    assert_priced(rec)


def test_mistralai_embeddings_have_mistrals_id_and_are_priced(
    gateway, mistral_client, seen, mistral_emu
):
    result = mistral_client.embeddings.create(
        model="mistral-embed", inputs=["a b"], output_dimension=4
    )
    assert len(result.data[0].embedding) == 4
    assert mistral_emu.requests[-1].body["output_dimension"] == 4
    rec = record(gateway, seen.last)
    assert rec["surface"] == "mistral" and rec["operation"] == "embeddings"
    assert_priced(rec)


def test_mistralai_embeddings_from_openai_get_an_id_mistrals_sdk_requires(
    mistral_client, openai_emu
):
    result = mistral_client.embeddings.create(model="embed-small", inputs=["a"])
    assert result.id.startswith("embd-") and len(result.data) == 1


def test_fim_on_a_model_without_a_fim_deployment_is_a_clear_400(gateway, openai_emu):
    resp = httpx.post(
        gateway + "/v1/fim/completions",
        headers={"authorization": f"Bearer {MASTER}"},
        json={"model": "gpt-4o", "prompt": "def f():"},
    )
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["code"] == "unsupported_feature"
    assert "openai/gpt-4o lacks fim" in error["message"]
    assert "codestral" in error["message"]
    assert openai_emu.requests == []


def test_fim_goes_only_to_the_mistral_deployments_of_a_mixed_model(
    mistral_client, seen, openai_emu, mistral_emu
):
    for _ in range(3):
        response = mistral_client.fim.complete(model="coder", prompt="a", suffix="b")
        assert response.choices[0].message.content == "<fill between 'a' and 'b'>"
    assert len(mistral_emu.requests) == 3 and openai_emu.requests == []


def test_cut_fim_stream_ends_with_an_error_and_is_not_continued_elsewhere(gateway, mistral_emu):
    mistral_emu.fail_next(Fault(cut_after=3))
    with httpx.stream(
        "POST",
        gateway + "/v1/fim/completions",
        headers={"authorization": f"Bearer {MASTER}"},
        json={"model": "codestral-twice", "prompt": "a b", "suffix": "c", "stream": True},
    ) as resp:
        events = [line for line in resp.iter_lines() if line.startswith("data: ")]
        request_id = resp.headers["x-request-id"]
    assert events[-1] != "data: [DONE]"
    assert "error" in orjson.loads(events[-1].removeprefix("data: "))
    assert len(mistral_emu.requests) == 1  # no continuation with an assistant prefix
    rec = record(gateway, request_id)
    assert rec["operation"] == "fim" and rec["status"] >= 400


def test_fim_fields_mistral_does_not_know_are_dropped_and_reported(gateway, mistral_emu):
    resp = httpx.post(
        gateway + "/v1/fim/completions",
        headers={"authorization": f"Bearer {MASTER}"},
        json={"model": "codestral", "prompt": "a", "suffix": "b", "n": 2, "random_seed": 3},
    )
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-gateway-dropped-params"] == "n"
    assert "n" not in mistral_emu.requests[-1].body
    assert mistral_emu.requests[-1].body["random_seed"] == 3


def test_fim_needs_the_gateway_key(gateway):
    resp = httpx.post(
        gateway + "/v1/fim/completions", json={"model": "codestral", "prompt": "def f():"}
    )
    assert resp.status_code == 401


def test_openai_clients_on_the_same_paths_stay_on_the_openai_surface(gateway, seen, openai_emu):
    client = openai.OpenAI(
        base_url=gateway + "/v1",
        api_key=MASTER,
        max_retries=0,
        http_client=httpx2.Client(event_hooks={"response": [seen]}),
    )
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=USER, stream=True))
    assert all(c.usage is None for c in chunks)  # OpenAI semantics: usage only on request
    assert record(gateway, seen.last)["surface"] == "openai"


async def test_library_calls_are_the_library_surface():
    config = {
        "ledger": {"enabled": False},
        "providers": {"mock": {"type": "mock"}},
        "models": {"mock-echo": {"deployments": [{"provider": "mock", "model": "mock-echo"}]}},
    }
    async with AsyncGateway(config) as gw:
        reply = await gw.chat.completions.create(model="mock-echo", messages=USER)
    assert reply.gateway is not None and reply.gateway.surface == "library"


# --- the emulator and the allow-list follow Mistral's spec ----------------------------------


def test_mistral_emulator_refuses_unknown_fim_fields_with_422(mistral_emu):
    resp = httpx.post(
        mistral_emu.url + "/v1/fim/completions",
        headers={"authorization": f"Bearer {mistral_api.API_KEY}"},
        json={"model": "codestral-latest", "prompt": "a", "n": 2},
    )
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"] == ["body", "n"]


def test_mistral_emulator_refuses_fim_for_models_without_it(mistral_emu):
    resp = httpx.post(
        mistral_emu.url + "/v1/fim/completions",
        headers={"authorization": f"Bearer {mistral_api.API_KEY}"},
        json={"model": "mistral-large-latest", "prompt": "a"},
    )
    assert resp.status_code == 400


def test_fim_allow_list_is_the_specs_fim_completion_request():
    if not SPEC.exists():
        pytest.skip(f"Mistral OpenAPI spec not found at {SPEC} (set MISTRAL_OPENAPI_SPEC)")
    schemas = yaml.safe_load(SPEC.read_text())["components"]["schemas"]
    assert set(schemas["FIMCompletionRequest"]["properties"]) == FIM_FIELDS


# --- configuration ----------------------------------------------------------------------------


def test_deployment_mapping_to_an_unknown_model_is_a_config_error():
    with pytest.raises(ConfigError) as caught:
        load_config(
            {
                "providers": {"mock": {"type": "mock"}},
                "models": {"mock-echo": {"deployments": [{"provider": "mock", "model": "x"}]}},
                "surfaces": {"azure": {"deployments": {"prod-gpt": "gpt-4o"}}},
            }
        )
    assert "surfaces.azure.deployments.prod-gpt: 'gpt-4o' is not a model in 'models'" in str(
        caught.value
    )


WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
