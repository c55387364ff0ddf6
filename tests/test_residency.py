"""Data residency through the real proxy: the region that answered (header, facts, ledger) and
regions enforced on every path a request's data takes — primary, fallbacks, context-window
fallbacks, stream continuation — for a key, a team, a model and an exporter."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config import TracingConfig
from gateway.governance.residency import allowed, narrow
from tests.conftest import GatewayFactory
from tests.emulators.faulty import FaultyUpstream
from tests.emulators.openai_api import OpenAIEmulator
from tests.keys_helpers import MASTER_KEY, Admin, chat, gateway_config, key_records

PREFILL = {"assistant_prefill": True}


@pytest.fixture(scope="module")
def faulty() -> Iterator[FaultyUpstream]:
    with FaultyUpstream() as upstream:
        yield upstream


@pytest.fixture
def up(faulty: FaultyUpstream) -> FaultyUpstream:
    faulty.reset()
    return faulty


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("residency") / "ledger.db"


@pytest.fixture(scope="module")
def proxy(
    faulty: FaultyUpstream,
    openai_upstream: OpenAIEmulator,
    start_gateway: GatewayFactory,
    db: Path,
) -> str:
    config = gateway_config(openai_upstream.url, db)

    def provider(region: str | None) -> dict[str, Any]:
        return {"type": "openai", "api_key": "x", "base_url": faulty.url, "region": region}

    config["providers"] = {"eu": provider("eu"), "us": provider("us"), "nowhere": provider(None)}

    def model(provider: str, upstream: str, **options: Any) -> dict[str, Any]:
        return {"deployments": [{"provider": provider, "model": upstream}], **options}

    def prefill(provider: str, upstream: str) -> dict[str, Any]:
        dep = {"provider": provider, "model": upstream, "capabilities": PREFILL}
        return {"deployments": [dep]}

    config["models"] = {
        "eu-chat": model("eu", "ok#eu-chat", fallbacks=["us-chat"]),
        "us-chat": model("us", "ok#us-chat"),
        "plain": model("nowhere", "ok#plain"),
        # A model restricted to the EU: its us fallback is never reached.
        "eu-flaky": model("eu", "503-always#eu-flaky", regions=["eu"], fallbacks=["us-chat"]),
        "eu-but-us": model("us", "ok#eu-but-us", regions=["eu"]),
        # Context-window fallbacks: the us one is skipped, the eu one answers.
        "eu-small": model(
            "eu",
            "context-length#eu-small",
            regions=["eu"],
            context_window_fallbacks=["us-big", "eu-big"],
        ),
        "us-big": model("us", "ok#us-big"),
        "eu-big": model("eu", "ok#eu-big"),
        # A cut stream is continued within the region, never on the us deployment before it.
        "eu-cut": model(
            "eu", "cut-after:3#eu-cut", regions=["eu"], fallbacks=["us-prefill", "eu-prefill"]
        ),
        "us-prefill": prefill("us", "prefill#us-prefill"),
        "eu-prefill": prefill("eu", "prefill#eu-prefill"),
    }
    return start_gateway(config)


def stream_text(response: httpx.Response) -> str:
    import orjson

    text = ""
    for line in response.text.splitlines():
        if line.startswith("data: {"):
            for choice in orjson.loads(line[6:]).get("choices", []):
                text += (choice.get("delta") or {}).get("content") or ""
    return text


# --- the region that answered ---------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_answer_carries_the_region_of_the_deployment_that_answered(proxy, up, stream):
    response = chat(proxy, MASTER_KEY, model="eu-chat", stream=stream)
    assert response.status_code == 200, response.text
    assert response.headers["x-gateway-region"] == "eu"


def test_region_header_names_the_fallback_that_answered(proxy, up):
    response = chat(proxy, MASTER_KEY, model="eu-chat", fallbacks=["us-chat"])
    assert response.headers["x-gateway-region"] == "eu"
    fell_back = chat(proxy, MASTER_KEY, model="eu-flaky", fallbacks=[], headers={})
    assert fell_back.status_code == 503
    assert "x-gateway-region" not in fell_back.headers  # nothing answered


def test_region_header_is_absent_when_the_deployment_has_none(proxy, up):
    response = chat(proxy, MASTER_KEY, model="plain")
    assert response.status_code == 200, response.text
    assert "x-gateway-region" not in response.headers


def test_ledger_records_the_region_that_answered(proxy, up, db):
    admin = Admin(proxy)
    key = admin.create_key(name="ledgered")
    assert chat(proxy, key["key"], model="eu-chat").status_code == 200
    assert chat(proxy, key["key"], model="plain").status_code == 200
    records = asyncio.run(key_records(db, key["id"], at_least=2))
    assert sorted(r.region or "" for r in records) == ["", "eu"]


# --- a model restricted to regions ----------------------------------------------------------


def test_model_regions_keep_its_fallbacks_in_the_region(proxy, up):
    response = chat(proxy, MASTER_KEY, model="eu-flaky")
    assert response.status_code == 503, response.text
    assert len(up.attempts_for("503-always#eu-flaky")) == 1
    assert up.attempts_for("ok#us-chat") == []


def test_per_request_fallback_cannot_leave_a_models_regions(proxy, up):
    response = chat(proxy, MASTER_KEY, model="eu-flaky", fallbacks=["us-chat"])
    assert response.status_code == 503, response.text
    assert up.attempts_for("ok#us-chat") == []


def test_model_restricted_to_a_region_it_is_not_served_in_fails_closed(proxy, up):
    response = chat(proxy, MASTER_KEY, model="eu-but-us")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "region_not_allowed"
    assert up.attempts == []


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_context_window_fallback_outside_the_region_is_skipped(proxy, up, stream):
    response = chat(proxy, MASTER_KEY, model="eu-small", stream=stream)
    assert response.status_code == 200, response.text
    assert up.attempts_for("ok#us-big") == []
    assert len(up.attempts_for("ok#eu-big")) == 1


def test_cut_stream_is_continued_only_within_the_region(proxy, up):
    response = chat(proxy, MASTER_KEY, model="eu-cut", stream=True)
    assert response.status_code == 200, response.text
    assert up.attempts_for("prefill#us-prefill") == []
    assert len(up.attempts_for("prefill#eu-prefill")) == 1
    assert stream_text(response)  # the caller got the answer, finished in the EU


# --- keys and teams -------------------------------------------------------------------------


def test_team_regions_block_a_fallback_outside_them(proxy, up):
    admin = Admin(proxy)
    team = admin.create_team(name="eu-team", regions=["eu"])
    key = admin.create_key(name="in-eu-team", team=team["id"])["key"]
    response = chat(proxy, key, model="us-chat")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "region_not_allowed"
    assert up.attempts == []


def test_key_restricted_to_a_region_refuses_a_deployment_without_region(proxy, up):
    key = Admin(proxy).create_key(name="eu-key", regions=["eu"])["key"]
    response = chat(proxy, key, model="plain")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "region_not_allowed"
    assert up.attempts == []


# --- stored responses: a conversation keeps to the regions of its earlier turns -------------


def respond(proxy: str, key: str, model: str, **body: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}", **body.pop("headers", {})}
    return httpx.post(
        proxy + "/responses",
        json={"model": model, "input": "hello", **body},
        headers=headers,
        timeout=10,
    )


def test_a_conversation_restricted_to_a_region_cannot_be_continued_outside_it(proxy, up):
    first = respond(proxy, MASTER_KEY, "eu-chat", headers={"x-gateway-regions": "eu"})
    assert first.status_code == 200, first.text
    assert first.headers["x-gateway-region"] == "eu"
    up.reset()
    # The caller itself may use any region; the conversation's first turn was kept to the EU.
    moved = respond(proxy, MASTER_KEY, "us-chat", previous_response_id=first.json()["id"])
    assert moved.status_code == 403, moved.text
    assert moved.json()["error"]["code"] == "region_not_allowed"
    assert up.attempts == []  # the EU turn's text was sent nowhere
    # Within the region it goes on, and its fallback outside the region is not used.
    kept = respond(proxy, MASTER_KEY, "eu-flaky", previous_response_id=first.json()["id"])
    assert kept.status_code == 503, kept.text
    assert up.attempts_for("ok#us-chat") == []
    stays = respond(proxy, MASTER_KEY, "eu-chat", previous_response_id=first.json()["id"])
    assert stays.status_code == 200, stays.text
    assert stays.headers["x-gateway-region"] == "eu"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_conversation_answered_outside_a_keys_regions_is_refused_to_it(proxy, up, stream):
    admin = Admin(proxy)
    team = admin.create_team(name=f"shares-responses-{stream}")
    anywhere = admin.create_key(name=f"anywhere-{stream}", team=team["id"])["key"]
    eu_only = admin.create_key(name=f"eu-only-{stream}", team=team["id"], regions=["eu"])["key"]
    first = respond(proxy, anywhere, "us-chat")
    assert first.status_code == 200, first.text
    assert first.headers["x-gateway-region"] == "us"
    up.reset()
    # The EU-only key of the same team may read the team's responses, but continuing this
    # conversation would put its US turn under the key's EU-only policy: refused.
    refused = respond(
        proxy, eu_only, "eu-chat", previous_response_id=first.json()["id"], stream=stream
    )
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"] == "region_not_allowed"
    assert up.attempts == []
    fresh = respond(proxy, eu_only, "eu-chat", stream=stream)
    assert fresh.status_code == 200, fresh.text


# --- the check itself, and an exporter ------------------------------------------------------


def test_allowed_fails_closed_for_an_unknown_region():
    assert allowed(None, None) and allowed("us", None)
    assert allowed("eu", frozenset({"eu"}))
    assert not allowed("us", frozenset({"eu"}))
    assert not allowed(None, frozenset({"eu"}))
    assert narrow(None, ["eu", "us"], frozenset({"eu"})) == frozenset({"eu"})
    assert narrow(None, None) is None


def test_trace_exporter_in_another_region_gets_no_span_of_a_restricted_call(
    openai_upstream: OpenAIEmulator, tmp_path: Path
) -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from gateway import Gateway
    from gateway.observability.tracing import Tracing

    config = gateway_config(openai_upstream.url, tmp_path / "ledger.db")
    config["auth"] = {}
    config["providers"]["openai"]["region"] = "eu"
    spans = {"us": InMemorySpanExporter(), "eu": InMemorySpanExporter()}
    with Gateway(config) as gw:
        tracers = [
            Tracing(gw.engine, TracingConfig(enabled=True, region=region), exporter)
            for region, exporter in spans.items()
        ]
        for tracer in tracers:
            gw.engine.observers.append(tracer.observe)
        messages = [{"role": "user", "content": "hi"}]
        answered = gw.chat.completions.create(model="gpt-4o", messages=messages, regions=["eu"])
        assert answered.facts.region == "eu"  # the library reports the region too
        gw.chat.completions.create(model="gpt-4o", messages=messages)  # unrestricted
        for tracer in tracers:
            tracer.provider.force_flush()

    def calls(exporter: InMemorySpanExporter) -> int:
        return sum(1 for span in exporter.get_finished_spans() if span.parent is None)

    assert calls(spans["eu"]) == 2
    assert calls(spans["us"]) == 1  # only the unrestricted call's
