"""``responses.create`` / ``retrieve`` / ``delete`` in the library: in-process (``Gateway``,
``AsyncGateway``) and against a running gateway (``GatewayClient``, ``AsyncGatewayClient``),
typed results with the same ``facts``."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gateway import (
    AsyncGateway,
    AsyncGatewayClient,
    Gateway,
    GatewayClient,
    NotFoundError,
    PermissionDeniedError,
)
from gateway.errors import InvalidRequestError
from gateway.sdk.local import LocalResponse
from gateway.types import ResponseDeleted, ResponseObject
from tests.conftest import SINGLE_ATTEMPT, GatewayFactory
from tests.emulators.openai_api import API_KEY, OpenAIEmulator


def emulator_config(emu: OpenAIEmulator, db: Path) -> dict[str, Any]:
    return {
        "routing": SINGLE_ATTEMPT,
        "ledger": {"url": f"sqlite+aiosqlite:///{db}", "flush_interval": 0.05},
        "providers": {
            "openai": {"type": "openai", "api_key": API_KEY, "base_url": emu.url + "/v1"}
        },
        "models": {"gpt-4o": {"deployments": [{"provider": "openai", "model": "gpt-4o"}]}},
    }


@pytest.fixture
def gw(openai_emu: OpenAIEmulator, tmp_path: Path) -> Iterator[Gateway]:
    with Gateway(emulator_config(openai_emu, tmp_path / "ledger.db")) as gw:
        yield gw


def test_local_conversation_keeps_to_the_regions_of_its_first_turn(openai_emu, tmp_path):
    config = emulator_config(openai_emu, tmp_path / "ledger.db")
    openai = config["providers"]["openai"]
    config["providers"] = {"eu": {**openai, "region": "eu"}, "us": {**openai, "region": "us"}}
    config["models"] = {
        name: {"deployments": [{"provider": name.split("-")[0], "model": "gpt-4o"}]}
        for name in ("eu-chat", "us-chat")
    }
    with Gateway(config) as gw:
        first = gw.responses.create(model="eu-chat", input="in the EU", regions=["eu"])
        assert first.facts.region == "eu"
        sent = len(openai_emu.requests)
        with pytest.raises(PermissionDeniedError) as refused:
            gw.responses.create(model="us-chat", input="more", previous_response_id=first.id)
        assert refused.value.code == "region_not_allowed"
        assert len(openai_emu.requests) == sent  # the EU turn was sent nowhere else
        kept = gw.responses.create(model="eu-chat", input="more", previous_response_id=first.id)
        assert kept.facts.region == "eu"


@pytest.fixture(scope="module")
def gateway_url(
    openai_upstream: OpenAIEmulator,
    start_gateway: GatewayFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    return start_gateway(
        emulator_config(openai_upstream, tmp_path_factory.mktemp("rsdk") / "ledger.db")
    )


def test_local_create_is_typed_with_facts_and_the_call(gw, openai_emu):
    response = gw.responses.create(model="gpt-4o", input="hello", instructions="short")
    assert isinstance(response, LocalResponse)
    assert response.output_text == "echo: hello"
    assert response.usage is not None and response.usage.input_tokens == 2
    assert response.facts.provider == "openai"
    assert response.facts.cost is not None and response.facts.cost > 0
    assert response.gateway is not None and response.gateway.operation == "responses"
    assert openai_emu.requests[-1].body["messages"][0] == {"role": "system", "content": "short"}


def test_local_stream_previous_response_retrieve_and_delete(gw, openai_emu):
    with gw.responses.create(model="gpt-4o", input="one two", stream=True) as events:
        seen = list(events)
    assert seen[0].type == "response.created"
    final = seen[-1]
    assert final.type == "response.completed" and final.response is not None
    assert final.response.output_text == "echo: one two"
    assert events.facts.cost is not None and events.facts.cost > 0

    second = gw.responses.create(
        model="gpt-4o", input="three", previous_response_id=final.response.id
    )
    assert second.output_text == "echo: three"
    assert len(openai_emu.requests[-1].body["messages"]) == 3

    assert gw.responses.retrieve(second.id).output_text == "echo: three"
    deleted = gw.responses.delete(second.id)
    assert isinstance(deleted, ResponseDeleted) and deleted.deleted
    with pytest.raises(NotFoundError):
        gw.responses.retrieve(second.id)
    with pytest.raises(InvalidRequestError, match=second.id):
        gw.responses.create(model="gpt-4o", input="x", previous_response_id=second.id)


async def test_async_local_create_and_stream(openai_emu, tmp_path):
    async with AsyncGateway(emulator_config(openai_emu, tmp_path / "ledger.db")) as gw:
        response = await gw.responses.create(model="gpt-4o", input="async hello")
        assert response.output_text == "echo: async hello"
        stream = await gw.responses.create(
            model="gpt-4o", input="more", previous_response_id=response.id, stream=True
        )
        kinds = [event.type async for event in stream]
        assert kinds[-1] == "response.completed"
        assert (await gw.responses.retrieve(response.id)).id == response.id


def test_remote_client_create_stream_retrieve_delete(gateway_url, openai_emu):
    with GatewayClient(gateway_url, api_key="unused", max_retries=0) as client:
        response = client.responses.create(model="gpt-4o", input="remote hello")
        assert isinstance(response, ResponseObject)
        assert response.output_text == "echo: remote hello"
        assert response.facts.provider == "openai"
        assert response.facts.cost == Decimal("0.000035")  # 2 in, 3 out at gpt-4o's prices

        events = list(
            client.responses.create(
                model="gpt-4o", input="next", previous_response_id=response.id, stream=True
            )
        )
        assert events[-1].type == "response.completed"
        assert events[-1].response is not None
        assert events[-1].response.output_text == "echo: next"
        assert len(openai_emu.requests[-1].body["messages"]) == 3

        assert client.responses.retrieve(response.id).id == response.id
        assert client.responses.delete(response.id).deleted
        with pytest.raises(NotFoundError):
            client.responses.retrieve(response.id)


async def test_async_remote_client_create_and_stream(gateway_url, openai_emu):
    async with AsyncGatewayClient(gateway_url, api_key="unused", max_retries=0) as client:
        response = await client.responses.create(model="gpt-4o", input="async remote")
        assert response.output_text == "echo: async remote"
        stream = await client.responses.create(model="gpt-4o", input="streamed", stream=True)
        events = [event async for event in stream]
        assert events[-1].type == "response.completed"
        deltas = "".join(e.delta or "" for e in events if e.type == "response.output_text.delta")
        assert deltas == "echo: streamed"
