"""What current clients ask of the routes beside chat, through a running gateway: embeddings
in base64 from every provider (the openai SDKs ask for it), Mistral's model cards for the
mistralai SDK, and a 404 that names the routes there are."""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from mistralai.client import Mistral

from tests.conftest import SINGLE_ATTEMPT, GatewayFactory
from tests.emulators import mistral_api
from tests.emulators.mistral_api import MistralEmulator
from tests.emulators.openai_api import API_KEY as OPENAI_KEY
from tests.emulators.openai_api import OpenAIEmulator
from tests.harness import ServerThread

MASTER = "sk-gw-client-routes-master"


@pytest.fixture(scope="module")
def mistral_upstream() -> Iterator[MistralEmulator]:
    emulator = MistralEmulator()
    with ServerThread(emulator.app) as server:
        emulator.url = server.url
        yield emulator


@pytest.fixture
def mistral_emu(mistral_upstream: MistralEmulator) -> MistralEmulator:
    mistral_upstream.reset()
    return mistral_upstream


@pytest.fixture(scope="module")
def gateway(
    openai_upstream: OpenAIEmulator,
    mistral_upstream: MistralEmulator,
    start_gateway: GatewayFactory,
) -> str:
    """The gateway's root URL (no /v1), with a master key."""

    def one(provider: str, model: str) -> dict[str, Any]:
        return {"deployments": [{"provider": provider, "model": model}]}

    url = start_gateway(
        {
            "auth": {"master_key": MASTER},
            "ledger": {"enabled": False},
            "routing": SINGLE_ATTEMPT,
            "providers": {
                "openai": {
                    "type": "openai",
                    "api_key": OPENAI_KEY,
                    "base_url": openai_upstream.url + "/v1",
                },
                "mistral": {
                    "type": "mistral",
                    "api_key": mistral_api.API_KEY,
                    "base_url": mistral_upstream.url + "/v1",
                },
                "mock": {"type": "mock"},
            },
            "models": {
                "gpt-4o": one("openai", "gpt-4o"),
                "embed-small": one("openai", "text-embedding-3-small"),
                "codestral": one("mistral", "codestral-latest"),
                "mistral-large": one("mistral", "mistral-large-latest"),
                "mistral-embed": one("mistral", "mistral-embed"),
                "mock": one("mock", "mock-1"),
            },
        }
    )
    return url.removesuffix("/v1")


@pytest.fixture
def client(gateway: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway + "/v1", api_key=MASTER, max_retries=0)


def float32(values: list[float]) -> list[float]:
    """``values`` as float32 would hold them (what a base64 embedding carries)."""
    return list(struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}f", *values)))


def decoded(text: str) -> list[float]:
    raw = base64.b64decode(text)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


# --- embeddings in base64 -------------------------------------------------------------------


@pytest.mark.parametrize("model", ["mock", "embed-small", "mistral-embed"])
def test_base64_embeddings_decode_to_the_float_answer(client, openai_emu, mistral_emu, model):
    inputs = ["a b", "three words here"]
    floats = client.embeddings.create(model=model, input=inputs, encoding_format="float")
    encoded = client.embeddings.create(model=model, input=inputs, encoding_format="base64")
    for as_float, as_base64 in zip(floats.data, encoded.data, strict=True):
        assert isinstance(as_float.embedding, list) and isinstance(as_base64.embedding, str)
        assert decoded(as_base64.embedding) == float32(as_float.embedding)


def test_mistral_is_asked_for_floats_and_the_gateway_encodes_them(gateway, mistral_emu):
    resp = httpx.post(
        gateway + "/v1/embeddings",
        json={"model": "mistral-embed", "input": "hello", "encoding_format": "base64"},
        headers={"authorization": f"Bearer {MASTER}"},
    )
    assert resp.status_code == 200, resp.text
    assert "encoding_format" not in mistral_emu.requests[-1].body
    vector = resp.json()["data"][0]["embedding"]
    assert isinstance(vector, str) and len(base64.b64decode(vector)) == 8 * 4


def test_node_sdks_default_base64_request_gets_base64_from_the_mock(gateway):
    """The Node SDK sends ``encoding_format: base64`` unasked and decodes every answer as
    base64; a list of floats would decode to garbage."""
    resp = httpx.post(
        gateway + "/v1/embeddings",
        json={"model": "mock", "input": ["x"], "encoding_format": "base64"},
        headers={"authorization": f"Bearer {MASTER}"},
    )
    floats = httpx.post(
        gateway + "/v1/embeddings",
        json={"model": "mock", "input": ["x"]},
        headers={"authorization": f"Bearer {MASTER}"},
    )
    vector = resp.json()["data"][0]["embedding"]
    assert isinstance(vector, str)
    assert decoded(vector) == float32(floats.json()["data"][0]["embedding"])


def test_openai_sdks_default_request_still_reads_floats(client, openai_emu):
    default = client.embeddings.create(model="embed-small", input="a b")
    floats = client.embeddings.create(model="embed-small", input="a b", encoding_format="float")
    assert openai_emu.requests[0].body["encoding_format"] == "base64"
    assert default.data[0].embedding == pytest.approx(floats.data[0].embedding, rel=1e-6)


# --- Mistral's model cards --------------------------------------------------------------------


@pytest.fixture
def mistral_client(gateway: str) -> Mistral:
    return Mistral(api_key=MASTER, server_url=gateway)


def test_mistralai_models_list_reads_model_cards(mistral_client):
    listing = mistral_client.models.list()
    cards = {card.id: card for card in listing.data or ()}
    assert sorted(cards) == sorted(
        ["gpt-4o", "embed-small", "codestral", "mistral-large", "mistral-embed", "mock"]
    )
    assert all(card.type == "base" for card in cards.values())
    codestral = cards["codestral"].capabilities
    assert codestral.completion_fim and codestral.completion_chat
    large = cards["mistral-large"].capabilities
    assert large.completion_chat and large.function_calling and not large.completion_fim
    embed = cards["mistral-embed"].capabilities
    assert not embed.completion_chat and not embed.function_calling
    assert cards["gpt-4o"].max_context_length == 128000
    assert cards["codestral"].max_context_length == 256000


def test_mistralai_models_retrieve_reads_one_card(mistral_client):
    card = mistral_client.models.retrieve(model_id="codestral")
    assert card.id == "codestral" and card.type == "base"
    assert card.capabilities.completion_fim


def test_mistral_model_cards_need_the_gateways_key(gateway):
    resp = httpx.get(gateway + "/v1/models", headers={"user-agent": "mistral-client-python/1"})
    assert resp.status_code == 401


def test_openai_clients_keep_openais_model_list(gateway, client):
    assert {m.id for m in client.models.list()} >= {"gpt-4o", "codestral"}
    raw = httpx.get(gateway + "/v1/models", headers={"authorization": f"Bearer {MASTER}"})
    assert raw.json()["data"][0].keys() == {"id", "object", "created", "owned_by"}


# --- unknown routes ---------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/assistants"), ("GET", "/v2/models")])
def test_unknown_route_404_names_the_routes_there_are(gateway, method, path):
    resp = httpx.request(method, gateway + path, headers={"authorization": f"Bearer {MASTER}"})
    assert resp.status_code == 404
    error = resp.json()["error"]
    assert error["code"] == "unknown_route"
    message = error["message"]
    assert message.startswith(f"no route {method} {path}; the API routes are ")
    for route in (
        "POST /v1/chat/completions",
        "POST /v1/completions",
        "POST /v1/embeddings",
        "GET /v1/models",
        "GET /v1/models/{model_id}",
        "POST /v1/fim/completions",
    ):
        assert route in message
    assert "(each also without the /v1 prefix)" in message
    assert "/admin" in message and "/openai" in message
