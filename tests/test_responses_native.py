"""The Responses API sent natively to providers that have it (OpenAI's /v1/responses, Azure
OpenAI's /openai/v1/responses and /openai/responses?api-version=…), translated for the others,
with the gateway's conversation state across both."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.config import LedgerConfig
from gateway.ledger.ledger import Ledger
from gateway.ledger.records import SpendRecord
from tests.conftest import SINGLE_ATTEMPT, GatewayFactory
from tests.emulators.azure_api import API_KEY as AZURE_CHAT_KEY
from tests.emulators.azure_api import AzureEmulator
from tests.emulators.common import Fault
from tests.emulators.mistral_api import API_KEY as MISTRAL_KEY
from tests.emulators.mistral_api import MistralEmulator
from tests.emulators.openai_api import API_KEY as OPENAI_KEY
from tests.emulators.openai_responses import AZURE_KEY, ResponsesEmulator
from tests.harness import ServerThread

WEATHER: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, Any]]:
    emulators: dict[str, Any] = {
        "native": ResponsesEmulator(),
        "azure": AzureEmulator(),
        "mistral": MistralEmulator("la_plateforme"),
    }
    servers = [ServerThread(e.app) for e in emulators.values()]
    for emulator, server in zip(emulators.values(), servers, strict=True):
        emulator.url = server.__enter__().url
    yield emulators
    for server in servers:
        server.__exit__(None, None, None)


@pytest.fixture
def native(upstreams: dict[str, Any]) -> ResponsesEmulator:
    for upstream in upstreams.values():
        upstream.reset()
    emulator = upstreams["native"]
    assert isinstance(emulator, ResponsesEmulator)
    return emulator


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("responses-native") / "ledger.db"


@pytest.fixture(scope="module")
def client(upstreams: dict[str, Any], start_gateway: GatewayFactory, db: Path) -> openai.OpenAI:
    root = upstreams["native"].url

    def azure(**settings: Any) -> dict[str, Any]:
        return {"type": "azure", "endpoint": root, "api_key": AZURE_KEY, **settings}

    def model(provider: str, **where: str) -> dict[str, Any]:
        return {"deployments": [{"provider": provider, **where}]}

    url = start_gateway(
        {
            "routing": SINGLE_ATTEMPT,
            "ledger": {"url": f"sqlite+aiosqlite:///{db}", "flush_interval": 0.05},
            "providers": {
                "openai": {
                    "type": "openai",
                    "api_key": OPENAI_KEY,
                    "base_url": root + "/v1",
                    "responses_api": True,
                },
                "azure-v1": azure(api_style="v1"),
                "azure-dated": azure(api_version="2025-03-01-preview"),
                "azure-old": {
                    "type": "azure",
                    "endpoint": upstreams["azure"].url,
                    "api_key": AZURE_CHAT_KEY,
                    "api_version": "2024-10-21",
                },
                "mistral": {
                    "type": "mistral",
                    "api_key": MISTRAL_KEY,
                    "base_url": upstreams["mistral"].url + "/v1",
                },
            },
            "models": {
                "gpt-4o": model("openai", model="gpt-4o"),
                "azure-v1": model("azure-v1", deployment="gpt-4o-prod", base_model="gpt-4o"),
                "azure-dated": model("azure-dated", deployment="gpt-4o-prod", base_model="gpt-4o"),
                "azure-old": model("azure-old", deployment="gpt-4o-prod", base_model="gpt-4o"),
                "mistral-large": model("mistral", model="mistral-large-latest"),
            },
        }
    )
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0)


def test_openai_gets_the_request_natively_and_its_usage_is_priced(client, native):
    raw = client.responses.with_raw_response.create(
        model="gpt-4o", input="hello", instructions="be brief", store=True
    )
    response = raw.parse()
    assert response.output_text == "echo: hello"
    assert response.id.startswith("resp_") and response.id != "resp_upstream"
    assert response.model == "gpt-4o"
    sent = native.requests[-1]
    assert sent.path == "/v1/responses"
    assert sent.body == {
        "model": "gpt-4o",
        "input": [{"type": "message", "role": "user", "content": "hello"}],
        "instructions": "be brief",
        "store": False,  # the conversation is the gateway's
    }
    assert response.usage is not None and response.usage.input_tokens == 3
    # gpt-4o: 2 input tokens at $2.50/1M, 1 cached at $1.25/1M, 2 output at $10.00/1M
    assert Decimal(raw.headers["x-gateway-cost"]) == Decimal("0.00002625")


def test_a_native_conversation_sends_the_earlier_items_without_ids(client, native):
    first = client.responses.create(model="gpt-4o", input="hello")
    second = client.responses.create(model="gpt-4o", input="again", previous_response_id=first.id)
    assert second.output_text == "echo: again"
    assert second.previous_response_id == first.id
    items = native.requests[-1].body["input"]
    assert [i.get("role") for i in items] == ["user", "assistant", "user"]
    assert all("id" not in i for i in items)  # the strict emulator 404s ids when store is false
    assert client.responses.retrieve(second.id).output_text == "echo: again"


def test_function_tools_round_trip_natively(client, native):
    first = client.responses.create(model="gpt-4o", input="weather?", tools=[WEATHER])
    call = first.output[0]
    assert call.type == "function_call" and call.call_id == "call_native1"
    second = client.responses.create(
        model="gpt-4o",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=[WEATHER],
    )
    assert second.output_text == "echo: sunny"
    assert native.requests[-1].body["input"][1]["type"] == "function_call"


def test_built_in_tools_pass_through_natively_and_are_a_400_when_translated(client, native):
    response = client.responses.create(
        model="gpt-4o", input="news?", tools=[{"type": "web_search"}]
    )
    assert [item.type for item in response.output] == ["web_search_call", "message"]
    assert native.requests[-1].body["tools"] == [{"type": "web_search"}]
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(
            model="mistral-large", input="news?", tools=[{"type": "web_search"}]
        )
    assert "web_search" in str(err.value) and "mistral" in str(err.value)


def test_azure_v1_and_dated_api_versions_are_native(client, native):
    v1 = client.responses.create(model="azure-v1", input="from v1")
    assert v1.output_text == "echo: from v1"
    assert native.requests[-1].path == "/openai/v1/responses"
    assert native.requests[-1].body["model"] == "gpt-4o-prod"
    dated = client.responses.create(model="azure-dated", input="dated")
    assert dated.output_text == "echo: dated"
    assert native.requests[-1].path == "/openai/responses"
    assert native.requests[-1].query == {"api-version": "2025-03-01-preview"}


def test_an_azure_api_version_before_responses_is_translated(client, native, upstreams):
    response = client.responses.create(model="azure-old", input="old")
    assert response.status == "completed" and response.output_text
    sent = upstreams["azure"].requests[-1]
    assert sent.path == "/openai/deployments/gpt-4o-prod/chat/completions"
    assert native.requests == []


def test_a_fallback_crosses_from_native_to_translated(client, native, upstreams):
    first = client.responses.create(model="gpt-4o", input="hello")
    native.fail_next(Fault(status=500, body=b'{"error": {"message": "down"}}'))
    raw = client.responses.with_raw_response.create(
        model="gpt-4o",
        input="still there?",
        previous_response_id=first.id,
        extra_body={"fallbacks": ["mistral-large"]},
    )
    assert raw.headers["x-gateway-provider"] == "mistral"
    assert upstreams["mistral"].requests[-1].body["messages"] == [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "echo: hello"},
        {"role": "user", "content": "still there?"},
    ]


def test_a_stream_is_native_too(client, native):
    with client.responses.stream(model="gpt-4o", input="stream me please") as stream:
        events = list(stream)
        final = stream.get_final_response()
    sent = native.requests[-1]
    assert sent.path == "/v1/responses" and sent.body["stream"] is True
    assert sent.body["store"] is False
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "echo: stream me please"
    assert final.output_text == "echo: stream me please"
    assert final.usage is not None and final.usage.input_tokens == 3
    # and the conversation goes on from the streamed turn
    again = client.responses.create(model="gpt-4o", input="more", previous_response_id=final.id)
    assert again.output_text == "echo: more"
    assert [i.get("role") for i in native.requests[-1].body["input"]] == [
        "user",
        "assistant",
        "user",
    ]


def test_a_native_stream_of_a_function_call(client, native):
    events = list(
        client.responses.create(model="azure-v1", input="weather?", tools=[WEATHER], stream=True)
    )
    assert native.requests[-1].path == "/openai/v1/responses"
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert done.arguments == '{"city": "Paris"}'
    final = events[-1].response
    assert final.output[0].type == "function_call" and final.output[0].call_id == "call_native1"


def test_a_native_stream_cut_short_ends_with_response_failed(client, native):
    native.fail_next(Fault(status=200, cut_after=5))
    events = list(client.responses.create(model="gpt-4o", input="a b c d e f g", stream=True))
    assert [e.type for e in events][-2:] == ["error", "response.failed"]


async def records_of(db: Path, request_ids: set[str]) -> list[SpendRecord]:
    """The ledger's records of these requests, waiting (bounded) for them to be written."""
    ledger = Ledger(LedgerConfig(url=f"sqlite+aiosqlite:///{db}", migrate=False))
    try:
        for _ in range(200):
            now = datetime.now(UTC)
            page = await ledger.spend_records(
                now - timedelta(hours=1), now + timedelta(hours=1), None, 10_000
            )
            found = [r for r in page.records if r.request_id in request_ids]
            if len(found) == len(request_ids):
                return found
            await asyncio.sleep(0.05)
        return found
    finally:
        await ledger.engine.dispose()


def test_native_calls_are_recorded_and_priced_from_their_usage(client, native, db):
    plain = client.responses.with_raw_response.create(model="gpt-4o", input="count me")
    streamed = client.responses.with_raw_response.create(
        model="gpt-4o", input="stream me please", stream=True
    )
    list(streamed.parse())
    ids = {plain.headers["x-request-id"], streamed.headers["x-request-id"]}
    records = {r.stream: r for r in asyncio.run(records_of(db, ids))}
    assert {r.operation for r in records.values()} == {"responses"}
    # gpt-4o, $2.50 / $1.25 cached / $10.00 per 1M: 2 input (1 cached), 3 output tokens …
    assert records[False].cost_usd == Decimal("0.00003375")
    assert records[False].cost_usd == Decimal(plain.headers["x-gateway-cost"])
    # … and 3 input (1 cached), 4 output tokens, from the stream's response.completed
    assert records[True].prompt_tokens == 3 and records[True].completion_tokens == 4
    assert records[True].cost_usd == Decimal("0.00004625")
