"""Client frameworks that speak the Responses API, run through a gateway whose model is served
by translation (Mistral's chat API, emulated locally): the OpenAI Agents SDK running an agent
with a function tool, and LangChain's ``ChatOpenAI(use_responses_api=True)`` answering and
calling a tool. Every call is billed and recorded as ``operation: responses``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from gateway.ledger.records import SpendRecord
from tests.conftest import SINGLE_ATTEMPT, GatewayFactory
from tests.emulators.mistral_api import API_KEY as MISTRAL_KEY
from tests.emulators.mistral_api import MistralEmulator
from tests.harness import ServerThread
from tests.keys_helpers import MASTER_KEY, Admin, key_records

MODEL = "mistral-large"


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
    return tmp_path_factory.mktemp("responses-clients") / "ledger.db"


@pytest.fixture(scope="module")
def gateway_url(mistral_upstream: MistralEmulator, start_gateway: GatewayFactory, db: Path) -> str:
    return start_gateway(
        {
            "auth": {"master_key": MASTER_KEY},
            "routing": SINGLE_ATTEMPT,
            "ledger": {"url": f"sqlite+aiosqlite:///{db}", "flush_interval": 0.05},
            "providers": {
                "mistral": {
                    "type": "mistral",
                    "api_key": MISTRAL_KEY,
                    "base_url": mistral_upstream.url + "/v1",
                }
            },
            "models": {
                MODEL: {"deployments": [{"provider": "mistral", "model": "mistral-large-latest"}]}
            },
        }
    )


@pytest.fixture
def new_key(gateway_url: str) -> dict[str, Any]:
    """A fresh key, so the ledger rows of one test are told apart from the others'."""
    return Admin(gateway_url).create_key(name="clients")


def recorded(db: Path, key: dict[str, Any], calls: int) -> list[SpendRecord]:
    records = asyncio.run(key_records(db, key["id"], at_least=calls))
    assert len(records) == calls
    return records


def assert_billed_as_responses(records: list[SpendRecord]) -> None:
    assert {r.operation for r in records} == {"responses"}
    assert {r.provider for r in records} == {"mistral"}
    for record in records:
        assert record.status == 200
        assert record.cost_usd is not None and record.cost_usd > 0


# --- the OpenAI Agents SDK ------------------------------------------------------------------


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny and 21C in {city}"


def test_an_agent_with_a_function_tool_runs_through_the_gateway(
    gateway_url, new_key, db, mistral_emu
):
    set_tracing_disabled(True)  # the SDK would otherwise export traces to OpenAI
    client = openai.AsyncOpenAI(base_url=gateway_url, api_key=new_key["key"], max_retries=0)
    agent = Agent(
        name="forecaster",
        instructions="Answer with the weather.",
        model=OpenAIResponsesModel(model=MODEL, openai_client=client),
        tools=[get_weather],
    )

    async def run() -> Any:
        try:
            return await Runner.run(agent, "What is the weather in Paris?", max_turns=3)
        finally:
            await client.close()

    result = asyncio.run(run())

    # the model asked for the tool, the SDK ran it, and the answer is built on its output
    assert result.final_output == "the tool said: sunny and 21C in Paris"
    first, second = (r.body for r in mistral_emu.requests)
    assert first["messages"][0] == {"role": "system", "content": "Answer with the weather."}
    assert first["tools"][0]["function"]["name"] == "get_weather"
    assert second["messages"][-1]["role"] == "tool"
    assert second["messages"][-1]["content"] == "sunny and 21C in Paris"
    assert_billed_as_responses(recorded(db, new_key, calls=2))


def test_a_streamed_agent_run_gets_the_tool_answer_as_text_deltas(
    gateway_url, new_key, db, mistral_emu
):
    set_tracing_disabled(True)
    client = openai.AsyncOpenAI(base_url=gateway_url, api_key=new_key["key"], max_retries=0)
    agent = Agent(
        name="forecaster",
        model=OpenAIResponsesModel(model=MODEL, openai_client=client),
        tools=[get_weather],
    )

    async def run() -> tuple[Any, list[str]]:
        try:
            streamed = Runner.run_streamed(agent, "Weather in Paris?", max_turns=3)
            deltas = [
                event.data.delta
                async for event in streamed.stream_events()
                if event.type == "raw_response_event"
                and event.data.type == "response.output_text.delta"
            ]
            return streamed, deltas
        finally:
            await client.close()

    streamed, deltas = asyncio.run(run())
    assert streamed.final_output == "the tool said: sunny and 21C in Paris"
    assert "".join(deltas) == streamed.final_output
    assert [r.body["stream"] for r in mistral_emu.requests] == [True, True]
    records = recorded(db, new_key, calls=2)
    assert_billed_as_responses(records)
    assert {r.stream for r in records} == {True}


# --- LangChain ------------------------------------------------------------------------------


@tool
def weather(city: str) -> str:
    """The weather in a city."""
    return f"rain in {city}"


def chat_model(gateway_url: str, key: str) -> ChatOpenAI:
    return ChatOpenAI(
        model=MODEL, use_responses_api=True, base_url=gateway_url, api_key=key, max_retries=0
    )


def test_langchain_chat_openai_answers_through_the_responses_api(
    gateway_url, new_key, db, mistral_emu
):
    answer = chat_model(gateway_url, new_key["key"]).invoke("bonjour")
    assert answer.text == "echo: bonjour"
    assert answer.usage_metadata is not None and answer.usage_metadata["input_tokens"] > 0
    assert len(mistral_emu.requests) == 1
    assert_billed_as_responses(recorded(db, new_key, calls=1))


def test_langchain_bind_tools_calls_the_tool_and_reads_its_result(
    gateway_url, new_key, db, mistral_emu
):
    model = chat_model(gateway_url, new_key["key"]).bind_tools([weather])
    question = HumanMessage("weather in Paris?")
    asked = model.invoke([question])
    assert len(asked.tool_calls) == 1
    call = asked.tool_calls[0]
    assert call["name"] == "weather" and call["args"] == {"city": "Paris"}

    output = weather.invoke(call["args"])
    answer = model.invoke([question, asked, ToolMessage(output, tool_call_id=call["id"])])
    assert answer.text == "the tool said: rain in Paris"
    sent = mistral_emu.requests[-1].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert_billed_as_responses(recorded(db, new_key, calls=2))
