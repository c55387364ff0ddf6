"""The Responses API (POST /v1/responses and the stored responses' routes) through a running
gateway, driven by the official openai SDK: translated to chat for OpenAI, Mistral and the
mock provider, conversation state kept by the gateway, billed and recorded like chat."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from tests.conftest import GatewayFactory
from tests.emulators.common import Fault
from tests.emulators.mistral_api import API_KEY as MISTRAL_KEY
from tests.emulators.mistral_api import MistralEmulator
from tests.emulators.openai_api import OpenAIEmulator
from tests.harness import ServerThread
from tests.keys_helpers import MASTER_KEY, Admin, gateway_config, key_records

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture(scope="module")
def mistral_upstream() -> Iterator[MistralEmulator]:
    emulator = MistralEmulator("la_plateforme")
    with ServerThread(emulator.app) as server:
        emulator.url = server.url
        yield emulator


@pytest.fixture
def mistral_emu(mistral_upstream: MistralEmulator) -> MistralEmulator:
    mistral_upstream.reset()
    return mistral_upstream


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("responses") / "ledger.db"


@pytest.fixture(scope="module")
def gateway_url(
    openai_upstream: OpenAIEmulator,
    mistral_upstream: MistralEmulator,
    start_gateway: GatewayFactory,
    db: Path,
) -> str:
    config = gateway_config(openai_upstream.url, db)
    config["providers"]["mistral"] = {
        "type": "mistral",
        "api_key": MISTRAL_KEY,
        "base_url": mistral_upstream.url + "/v1",
    }
    config["providers"]["mock"] = {"type": "mock"}
    config["models"]["mistral-large"] = {
        "deployments": [{"provider": "mistral", "model": "mistral-large-latest"}]
    }
    config["models"]["mock-chat"] = {"deployments": [{"provider": "mock", "model": "mock-1"}]}
    return start_gateway(config)


@pytest.fixture(scope="module")
def client(gateway_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway_url, api_key=MASTER_KEY, max_retries=0)


@pytest.fixture(scope="module")
def admin(gateway_url: str) -> Admin:
    return Admin(gateway_url)


def key_client(gateway_url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway_url, api_key=key, max_retries=0)


# --- one turn -------------------------------------------------------------------------------


def test_text_answer_is_a_response_object_from_the_chat_upstream(client, openai_emu):
    raw = client.responses.with_raw_response.create(
        model="gpt-4o", input="hello there", instructions="be brief", max_output_tokens=50
    )
    response = raw.parse()
    assert response.object == "response"
    assert response.status == "completed"
    assert response.id.startswith("resp_")
    assert response.output_text == "echo: hello there"
    assert response.output[0].type == "message"
    assert response.usage is not None
    assert response.usage.input_tokens == 4  # "be brief" + "hello there", by the emulator
    assert response.usage.output_tokens == 3
    assert response.usage.total_tokens == 7
    assert response.instructions == "be brief" and response.max_output_tokens == 50
    assert raw.headers["x-gateway-provider"] == "openai"
    assert Decimal(raw.headers["x-gateway-cost"]) > 0
    sent = openai_emu.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello there"},
    ]
    assert sent.body["max_tokens"] == 50


def test_message_items_with_parts_become_chat_content(client, openai_emu):
    response = client.responses.create(
        model="gpt-4o",
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "what is this"},
                    {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
                ],
            }
        ],
    )
    assert response.output_text.startswith("echo: what is this")
    assert openai_emu.requests[-1].body["messages"][0]["content"] == [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]


def test_stream_sends_the_typed_events_in_order(client, openai_emu):
    with client.responses.stream(model="gpt-4o", input="one two three") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[2:4] == ["response.output_item.added", "response.content_part.added"]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "echo: one two three"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.output_text == "echo: one two three"
    assert final.usage is not None and final.usage.output_tokens == 4
    assert openai_emu.requests[-1].body["stream_options"] == {"include_usage": True}


def test_stream_true_on_create_yields_events(client, openai_emu):
    events = list(client.responses.create(model="gpt-4o", input="hi", stream=True))
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "echo: hi"


def test_function_tool_round_trip_through_previous_response_id(client, openai_emu):
    first = client.responses.create(
        model="gpt-4o", input="weather in Paris?", tools=[WEATHER_TOOL], tool_choice="auto"
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather"
    assert call.arguments == '{"city": "Paris", "unit": "c"}'
    sent = openai_emu.requests[-1].body
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {k: WEATHER_TOOL[k] for k in ("name", "description", "parameters")},
        }
    ]

    second = client.responses.create(
        model="gpt-4o",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=[WEATHER_TOOL],
    )
    assert second.output_text == "echo: sunny"
    assert second.previous_response_id == first.id
    messages = openai_emu.requests[-1].body["messages"]
    assert messages[0] == {"role": "user", "content": "weather in Paris?"}
    assert messages[1]["role"] == "assistant"
    assert messages[1]["tool_calls"][0]["id"] == call.call_id
    assert messages[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert messages[2] == {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"}


def test_streamed_function_call_has_argument_events(client, openai_emu):
    events = list(
        client.responses.create(model="gpt-4o", input="weather?", tools=[WEATHER_TOOL], stream=True)
    )
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert done.arguments == '{"city": "Paris", "unit": "c"}'
    final = events[-1].response
    assert final.output[0].type == "function_call"
    assert final.output[0].call_id.startswith("call_")


def test_parse_with_a_pydantic_model_sends_a_json_schema(client, openai_emu):
    class Answer(BaseModel):
        answer: str

    parsed = client.responses.parse(model="gpt-4o", input="answer me", text_format=Answer)
    assert parsed.output_parsed == Answer(answer="echo")
    fmt = openai_emu.requests[-1].body["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "Answer"
    assert fmt["json_schema"]["schema"]["properties"] == {
        "answer": {"title": "Answer", "type": "string"}
    }


def test_built_in_tools_are_a_clear_400(client, openai_emu):
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="gpt-4o", input="news?", tools=[{"type": "web_search"}])
    assert "web_search" in str(err.value)
    assert openai_emu.requests == []


def test_mistral_is_served_by_translation(client, mistral_emu):
    response = client.responses.create(
        model="mistral-large", input="bonjour", instructions="réponds", max_output_tokens=20
    )
    assert response.status == "completed"
    assert response.output_text
    sent = mistral_emu.requests[-1].body
    assert sent["messages"][0] == {"role": "system", "content": "réponds"}
    assert sent["max_tokens"] == 20


def test_mistral_stream_is_translated_to_events(client, mistral_emu):
    events = list(client.responses.create(model="mistral-large", input="salut", stream=True))
    assert events[-1].type == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text and text == events[-1].response.output_text


def test_the_mock_provider_answers_responses(client):
    response = client.responses.create(model="mock-chat", input="hello mock")
    assert response.status == "completed" and response.output_text


# --- stored responses -----------------------------------------------------------------------


def test_previous_response_id_continues_the_conversation(client, openai_emu):
    first = client.responses.create(model="gpt-4o", input="hello")
    second = client.responses.create(model="gpt-4o", input="again", previous_response_id=first.id)
    assert second.output_text == "echo: again"
    assert openai_emu.requests[-1].body["messages"] == [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "echo: hello"},
        {"role": "user", "content": "again"},
    ]
    third = client.responses.create(model="gpt-4o", input="more", previous_response_id=second.id)
    assert third.output_text == "echo: more"
    assert len(openai_emu.requests[-1].body["messages"]) == 5


def test_retrieve_input_items_and_delete(client, openai_emu):
    created = client.responses.create(model="gpt-4o", input="keep me")
    fetched = client.responses.retrieve(created.id)
    assert fetched.id == created.id and fetched.output_text == "echo: keep me"
    items = client.responses.input_items.list(created.id)
    assert [i.type for i in items.data] == ["message"]
    assert items.data[0].content[0].text == "keep me"
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(created.id)


def test_store_false_keeps_nothing(client, openai_emu):
    created = client.responses.create(model="gpt-4o", input="forget me", store=False)
    assert created.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="gpt-4o", input="x", previous_response_id=created.id)
    assert created.id in str(err.value)


def test_unknown_previous_response_is_a_400_before_any_upstream_call(client, openai_emu):
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="gpt-4o", input="x", previous_response_id="resp_nope")
    assert "resp_nope" in str(err.value)
    assert err.value.param == "previous_response_id"
    assert openai_emu.requests == []


def test_conversation_moves_from_openai_to_mistral_by_fallback(client, openai_emu, mistral_emu):
    first = client.responses.with_raw_response.create(model="gpt-4o", input="hello")
    assert first.headers["x-gateway-provider"] == "openai"
    openai_emu.fail_next(Fault(status=500, body=b'{"error": {"message": "down"}}'))
    raw = client.responses.with_raw_response.create(
        model="gpt-4o",
        input="still there?",
        previous_response_id=first.parse().id,
        extra_body={"fallbacks": ["mistral-large"]},
    )
    assert raw.headers["x-gateway-provider"] == "mistral"
    assert raw.headers["x-gateway-fallback-used"] == "true"
    assert raw.parse().status == "completed"
    sent = mistral_emu.requests[-1].body["messages"]
    assert sent == [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "echo: hello"},
        {"role": "user", "content": "still there?"},
    ]
    # and the conversation goes on from the Mistral turn
    third = client.responses.create(
        model="gpt-4o", input="and now?", previous_response_id=raw.parse().id
    )
    assert third.output_text == "echo: and now?"
    assert len(openai_emu.requests[-1].body["messages"]) == 5


def test_another_key_cannot_read_or_continue_a_stored_response(gateway_url, admin, openai_emu):
    owner = key_client(gateway_url, admin.create_key(name="owner")["key"])
    other = key_client(gateway_url, admin.create_key(name="other")["key"])
    created = owner.responses.create(model="gpt-4o", input="private")
    assert owner.responses.retrieve(created.id).id == created.id
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.input_items.list(created.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(created.id)
    with pytest.raises(openai.BadRequestError):
        other.responses.create(model="gpt-4o", input="x", previous_response_id=created.id)
    assert owner.responses.retrieve(created.id).id == created.id  # not deleted by the other


def test_keys_of_one_team_share_stored_responses(gateway_url, admin, openai_emu):
    team = admin.create_team(name="responses-team")
    first = key_client(gateway_url, admin.create_key(name="a", team=team["id"])["key"])
    second = key_client(gateway_url, admin.create_key(name="b", team=team["id"])["key"])
    created = first.responses.create(model="gpt-4o", input="shared")
    assert second.responses.retrieve(created.id).id == created.id


def test_each_call_is_one_ledger_row_with_its_cost(gateway_url, admin, db, openai_emu):
    key = admin.create_key(name="ledger")
    client = key_client(gateway_url, key["key"])
    raw = client.responses.with_raw_response.create(model="gpt-4o", input="count me")
    events = list(client.responses.create(model="gpt-4o", input="stream me", stream=True))
    assert events[-1].type == "response.completed"
    records = asyncio.run(key_records(db, key["id"], at_least=2))
    assert len(records) == 2
    assert {r.operation for r in records} == {"responses"}
    assert {r.stream for r in records} == {False, True}
    by_stream = {r.stream: r for r in records}
    assert by_stream[False].cost_usd == Decimal(raw.headers["x-gateway-cost"])
    # gpt-4o: 2 prompt tokens at $2.50/1M and 3 completion tokens at $10.00/1M
    assert by_stream[False].cost_usd == Decimal("0.000035")
    assert by_stream[True].prompt_tokens == 2
    assert (by_stream[True].cost_usd or 0) > 0


def test_a_request_without_a_key_is_refused(gateway_url):
    answer = httpx.post(gateway_url + "/responses", json={"model": "gpt-4o", "input": "x"})
    assert answer.status_code == 401
    answer = httpx.get(gateway_url + "/responses/resp_x")
    assert answer.status_code == 401


def test_a_tool_conversation_moves_from_openai_to_mistral(client, openai_emu, mistral_emu):
    first = client.responses.create(model="gpt-4o", input="weather?", tools=[WEATHER_TOOL])
    call = next(item for item in first.output if item.type == "function_call")
    openai_emu.fail_next(Fault(status=503, body=b'{"error": {"message": "busy"}}'))
    raw = client.responses.with_raw_response.create(
        model="gpt-4o",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=[WEATHER_TOOL],
        extra_body={"fallbacks": ["mistral-large"]},
    )
    assert raw.headers["x-gateway-provider"] == "mistral"
    assert raw.parse().status == "completed"
    sent = mistral_emu.requests[-1].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    # Mistral's 9-character tool-call ids, the same on the call and its output
    assert sent[1]["tool_calls"][0]["id"] == sent[2]["tool_call_id"]
    assert len(sent[2]["tool_call_id"]) == 9


def test_a_stream_cut_mid_answer_ends_with_response_failed(client, openai_emu):
    openai_emu.fail_next(Fault(status=200, cut_after=3))
    events = list(client.responses.create(model="gpt-4o", input="a b c d e f", stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created"
    assert kinds[-2:] == ["error", "response.failed"]
    failed = events[-1].response
    assert failed.status == "failed"
    assert failed.error is not None and failed.error.code


def test_a_key_over_its_budget_is_refused_like_chat(gateway_url, admin, openai_emu):
    key = admin.create_key(name="poor", budget_usd="0.0000001")
    with pytest.raises(openai.RateLimitError) as err:
        key_client(gateway_url, key["key"]).responses.create(model="gpt-4o", input="hello")
    assert err.value.code == "budget_exceeded"
    assert openai_emu.requests == []


def test_azure_openai_clients_reach_the_responses_api(gateway_url, openai_emu):
    root = gateway_url.removesuffix("/v1")
    azure = openai.AzureOpenAI(
        azure_endpoint=root, api_key=MASTER_KEY, api_version="2025-03-01-preview", max_retries=0
    )
    first = azure.responses.create(model="gpt-4o", input="from azure")
    assert first.output_text == "echo: from azure"
    assert azure.responses.retrieve(first.id).id == first.id
    with pytest.raises(openai.NotFoundError) as err:
        azure.responses.create(model="no-such-deployment", input="x")
    assert "no-such-deployment" in str(err.value)
    v1 = openai.OpenAI(base_url=root + "/openai/v1", api_key=MASTER_KEY, max_retries=0)
    second = v1.responses.create(model="gpt-4o", input="v1", previous_response_id=first.id)
    assert second.output_text == "echo: v1"


def test_the_service_tier_reaches_the_chat_upstream(client, openai_emu):
    client.responses.create(model="gpt-4o", input="fast", service_tier="priority")
    assert openai_emu.requests[-1].body["service_tier"] == "priority"
