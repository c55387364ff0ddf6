"""The response cache for the Responses API (driven by the openai SDK through the proxy), and
data residency on cache hits: a kept answer is served only to callers whose regions allow the
region of the deployment that produced it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.emulators.openai_api import OpenAIEmulator
from tests.emulators.openai_responses import ResponsesEmulator
from tests.harness import ServerThread
from tests.keys_helpers import MASTER_KEY, Admin, chat, gateway_config, key_records

QUESTION = "what is the capital of France"


@pytest.fixture
def client(start_gateway: Any, openai_emu: OpenAIEmulator, tmp_path: Path) -> openai.OpenAI:
    config = gateway_config(openai_emu.url, tmp_path / "ledger.db", cache={"enabled": True})
    base = str(start_gateway(config))
    return openai.OpenAI(base_url=base, api_key=MASTER_KEY, max_retries=0)


def create(client: openai.OpenAI, **body: Any) -> tuple[str, Any]:
    """The ``x-gateway-cache`` header and the response of one ``responses.create``."""
    body.setdefault("model", "gpt-4o")
    body.setdefault("temperature", 0)
    raw = client.responses.with_raw_response.create(**body)
    return raw.headers["x-gateway-cache"], raw.parse()


def test_a_repeated_response_is_a_hit_stored_as_a_new_response(client, openai_emu):
    status, first = create(client, input=QUESTION)
    assert status == "miss"
    status, second = create(client, input=QUESTION)
    assert status == "hit"
    assert len(openai_emu.requests) == 1
    assert second.output_text == first.output_text == "echo: " + QUESTION
    assert second.object == "response" and second.status == "completed"
    # The hit is a response of its own (store defaults to true): it can be read and continued.
    assert second.id != first.id
    assert client.responses.retrieve(second.id).output_text == first.output_text
    status, _ = create(client, input="and of Italy", previous_response_id=second.id)
    assert status == "miss"


def test_the_same_input_in_another_shape_is_the_same_request(client, openai_emu):
    create(client, input=QUESTION, instructions="be brief")
    same = [
        {
            "role": "user",
            "content": [{"type": "input_text", "text": QUESTION}],
        }
    ]
    status, _ = create(client, input=same, instructions="be brief", tool_choice="auto")
    assert status == "hit"
    status, _ = create(client, input=QUESTION, instructions="be long")
    assert status == "miss"
    status, _ = create(client, input=QUESTION, instructions="be brief", max_output_tokens=5)
    assert status == "miss"
    assert len(openai_emu.requests) == 3


def test_a_continuation_is_keyed_by_the_conversation_not_the_previous_id(client, openai_emu):
    _, first = create(client, input=QUESTION)
    _, again = create(client, input=QUESTION)  # the same turn, stored under another id
    status, _ = create(client, input="and of Italy", previous_response_id=first.id)
    assert status == "miss"
    # Another id, the same conversation: the same answer.
    status, turn = create(client, input="and of Italy", previous_response_id=again.id)
    assert status == "hit"
    # The same input without the earlier turn is another request.
    status, _ = create(client, input="and of Italy")
    assert status == "miss"
    assert len(openai_emu.requests) == 3
    assert "and of Italy" in turn.output_text


def test_responses_and_chat_never_share_an_answer(client, openai_emu):
    create(client, input=QUESTION)
    base = str(client.base_url).rstrip("/")
    answer = chat(base, MASTER_KEY, messages=[{"role": "user", "content": QUESTION}], temperature=0)
    assert answer.headers["x-gateway-cache"] == "miss"
    assert "gateway_native_response" not in answer.json()
    status, _ = create(client, input=QUESTION)
    assert status == "hit"
    assert len(openai_emu.requests) == 2


def test_a_sampled_response_is_not_cached(client, openai_emu):
    status, _ = create(client, input=QUESTION, temperature=None)
    assert status == "bypass"
    status, _ = create(client, input=QUESTION, temperature=None)
    assert status == "bypass"
    assert len(openai_emu.requests) == 2


def test_a_streamed_hit_is_replayed_as_responses_events(client, openai_emu):
    _, first = create(client, input=QUESTION)
    raw = client.responses.with_raw_response.create(
        model="gpt-4o", input=QUESTION, temperature=0, stream=True
    )
    assert raw.headers["x-gateway-cache"] == "hit"
    events = list(raw.parse())
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == first.output_text
    final = events[-1].response
    assert final.output_text == first.output_text and final.id != first.id
    assert [e.sequence_number for e in events] == list(range(len(events)))
    # A streamed answer is kept for a plain request too.
    with client.responses.stream(model="gpt-4o", input="stream me", temperature=0) as stream:
        streamed = stream.get_final_response()
    status, plain = create(client, input="stream me")
    assert status == "hit" and plain.output_text == streamed.output_text
    assert len(openai_emu.requests) == 2


# --- residency on hits ----------------------------------------------------------------------


@pytest.fixture
def regional(start_gateway: Any, openai_emu: OpenAIEmulator, tmp_path: Path) -> str:
    """A gateway whose gpt-4o has a deployment in the us and one in the eu, sharing answers
    across every caller (``scope: global``)."""
    config = gateway_config(
        openai_emu.url, tmp_path / "ledger.db", cache={"enabled": True, "scope": "global"}
    )
    upstream = config["providers"]["openai"]
    config["providers"].update(us={**upstream, "region": "us"}, eu={**upstream, "region": "eu"})
    config["models"]["gpt-4o"] = {
        "deployments": [
            {"provider": "us", "model": "gpt-4o"},
            {"provider": "eu", "model": "gpt-4o"},
        ]
    }
    return str(start_gateway(config))


def ask(base: str, key: str) -> tuple[str, str | None]:
    answer = chat(base, key, messages=[{"role": "user", "content": QUESTION}], temperature=0)
    assert answer.status_code == 200
    return answer.headers["x-gateway-cache"], answer.headers.get("x-gateway-region")


def test_a_hit_from_outside_the_callers_regions_is_not_served(regional, openai_emu, tmp_path):
    admin = Admin(regional)
    us_only = admin.create_key(name="us-only", regions=["us"])["key"]
    eu_only = admin.create_key(name="eu-only", regions=["eu"])["key"]
    unrestricted = admin.create_key(name="anywhere")
    anywhere = unrestricted["key"]
    assert ask(regional, us_only) == ("miss", "us")  # kept with its region
    assert ask(regional, anywhere) == ("hit", "us")  # the region that produced it
    assert len(openai_emu.requests) == 1
    # The us answer is not for an eu-only key: it is answered in the eu, as without a cache.
    assert ask(regional, eu_only) == ("miss", "eu")
    assert len(openai_emu.requests) == 2
    # That answer took the us one's place, and the eu key is served it from now on.
    assert ask(regional, eu_only) == ("hit", "eu")
    assert ask(regional, anywhere) == ("hit", "eu")
    assert len(openai_emu.requests) == 2
    # The ledger records each hit with the region that produced its answer.
    records = asyncio.run(key_records(tmp_path / "ledger.db", unrestricted["id"], at_least=2))
    assert sorted((r.region, r.cache_hit) for r in records) == [("eu", True), ("us", True)]


def test_a_responses_hit_keeps_to_the_callers_regions(regional, openai_emu):
    admin = Admin(regional)
    us_only = admin.create_key(name="us-only", regions=["us"])["key"]
    eu_only = admin.create_key(name="eu-only", regions=["eu"])["key"]

    def respond(key: str) -> tuple[str, str | None]:
        client = openai.OpenAI(base_url=regional, api_key=key, max_retries=0)
        raw = client.responses.with_raw_response.create(
            model="gpt-4o", input=QUESTION, temperature=0
        )
        return raw.headers["x-gateway-cache"], raw.headers.get("x-gateway-region")

    assert respond(us_only) == ("miss", "us")
    assert respond(us_only) == ("hit", "us")
    assert respond(eu_only) == ("miss", "eu")
    assert len(openai_emu.requests) == 2


# --- answers of a provider's own Responses API ------------------------------------------------


@pytest.fixture(scope="module")
def responses_upstream() -> Iterator[ResponsesEmulator]:
    emulator = ResponsesEmulator()
    with ServerThread(emulator.app) as server:
        emulator.url = server.url
        yield emulator


@pytest.fixture
def native(
    start_gateway: Any, responses_upstream: ResponsesEmulator, tmp_path: Path
) -> tuple[str, ResponsesEmulator]:
    """A gateway whose gpt-4o is served by OpenAI's own Responses API."""
    responses_upstream.reset()
    config = gateway_config(responses_upstream.url, tmp_path / "ledger.db", cache={"enabled": True})
    config["providers"]["openai"]["responses_api"] = True
    return str(start_gateway(config)), responses_upstream


def test_built_in_tools_are_never_answered_from_the_cache(native):
    base, upstream = native
    client = openai.OpenAI(base_url=base, api_key=MASTER_KEY, max_retries=0)
    assert create(client, input="news?")[0] == "miss"
    status, hit = create(client, input="news?")
    assert status == "hit" and hit.output_text == "echo: news?"
    # The provider runs a web search: its answer changes, and it is not the plain one.
    status, searched = create(client, input="news?", tools=[{"type": "web_search"}])
    assert status == "bypass"
    assert [item.type for item in searched.output] == ["web_search_call", "message"]
    assert create(client, input="news?", tools=[{"type": "web_search"}])[0] == "bypass"
    assert len(upstream.requests) == 3


def test_a_native_responses_answer_never_answers_a_chat_request(native):
    base, _ = native
    client = openai.OpenAI(base_url=base, api_key=MASTER_KEY, max_retries=0)
    assert create(client, input=QUESTION)[0] == "miss"
    answer = chat(base, MASTER_KEY, messages=[{"role": "user", "content": QUESTION}], temperature=0)
    # Asked upstream (where this emulator has no chat route), never the Responses answer.
    assert answer.headers["x-gateway-cache"] == "miss"
    assert "gateway_native_response" not in answer.text
