"""PII redaction through the proxy and the library: personal data in a prompt never reaches
the upstream (it sees placeholders), and the caller's answer has it back — streamed answers
too, with placeholders split across chunks; off unless a key, team or model asks for it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway.governance.pii import StreamRestorer, Vault
from tests.conftest import GatewayFactory
from tests.harness import ServerThread
from tests.keys_helpers import MASTER_KEY, Admin, chat, gateway_config

EMAIL = "alice.martin@example.com"
IBAN = "DE89 3704 0044 0532 0130 00"
CARD = "4111 1111 1111 1111"
PHONE = "+33 6 12 34 56 78"
DNI = "12345678Z"
PROMPT = f"I am {EMAIL}, phone {PHONE}; pay from {IBAN} or card {CARD}; DNI {DNI}."


class Echo:
    """An upstream that answers with the last user message, streamed 3 characters a chunk
    (so placeholders arrive cut), and keeps every body it received."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])

    async def chat(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        self.bodies.append(body)
        text = "echo " + str(body["messages"][-1]["content"])
        head = {"id": "c1", "created": 1, "model": body["model"]}
        if not body.get("stream"):
            message = {"role": "assistant", "content": text}
            answer = {
                **head,
                "object": "chat.completion",
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
            }
            return Response(orjson.dumps(answer), media_type="application/json")

        def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
            chunk = {
                **head,
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return b"data: " + orjson.dumps(chunk) + b"\n\n"

        async def events() -> Any:
            yield event({"role": "assistant", "content": ""})
            for k in range(0, len(text), 3):
                yield event({"content": text[k : k + 3]})
            yield event({}, "stop")
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")


@pytest.fixture(scope="module")
def echo() -> Iterator[Echo]:
    upstream = Echo()
    with ServerThread(upstream.app) as server:
        upstream.url = server.url  # type: ignore[attr-defined]
        yield upstream


@pytest.fixture(scope="module")
def proxy(
    echo: Echo, start_gateway: GatewayFactory, tmp_path_factory: pytest.TempPathFactory
) -> str:
    config = gateway_config(echo.url, tmp_path_factory.mktemp("pii") / "ledger.db")  # type: ignore[attr-defined]
    deployment = {"provider": "openai", "model": "gpt-4o"}
    config["models"] = {
        "gpt-4o": {"deployments": [deployment]},
        "private": {"deployments": [deployment], "redact_pii": True},
    }
    return start_gateway(config)


def streamed(response: httpx.Response) -> str:
    text = ""
    for line in response.text.splitlines():
        if line.startswith("data: {"):
            for choice in orjson.loads(line[6:]).get("choices", []):
                text += (choice.get("delta") or {}).get("content") or ""
    return text


def answer(response: httpx.Response, stream: bool) -> str:
    assert response.status_code == 200, response.text
    if stream:
        return streamed(response)
    return str(response.json()["choices"][0]["message"]["content"])


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_model_with_redaction_sends_placeholders_and_answers_with_the_data(proxy, echo, stream):
    echo.bodies.clear()
    messages = [{"role": "user", "content": PROMPT}]
    response = chat(proxy, MASTER_KEY, model="private", messages=messages, stream=stream)
    assert answer(response, stream) == "echo " + PROMPT
    (sent,) = echo.bodies
    upstream_text = sent["messages"][-1]["content"]
    for value in (EMAIL, IBAN, CARD, PHONE, DNI):
        assert value not in upstream_text
    assert upstream_text == (
        "I am [EMAIL_1], phone [PHONE_1]; pay from [IBAN_1] or card [CARD_1]; DNI [NATIONAL_ID_1]."
    )


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_key_with_redaction_metadata_redacts_on_any_model(proxy, echo, stream):
    key = Admin(proxy).create_key(name="private", metadata={"redact_pii": True})["key"]
    echo.bodies.clear()
    messages = [{"role": "user", "content": f"write to {EMAIL}"}]
    response = chat(proxy, key, model="gpt-4o", messages=messages, stream=stream)
    assert answer(response, stream) == f"echo write to {EMAIL}"
    assert echo.bodies[0]["messages"][-1]["content"] == "write to [EMAIL_1]"


def test_without_redaction_the_prompt_goes_as_it_is(proxy, echo):
    echo.bodies.clear()
    messages = [{"role": "user", "content": PROMPT}]
    assert answer(chat(proxy, MASTER_KEY, model="gpt-4o", messages=messages), False)
    assert echo.bodies[0]["messages"][-1]["content"] == PROMPT


def test_the_library_redacts_too(echo: Echo, tmp_path: Path) -> None:
    from gateway import Gateway

    config = gateway_config(echo.url, tmp_path / "ledger.db")  # type: ignore[attr-defined]
    config["auth"] = {}
    config["models"] = {
        "private": {
            "deployments": [{"provider": "openai", "model": "gpt-4o"}],
            "redact_pii": True,
        }
    }
    echo.bodies.clear()
    with Gateway(config) as gw:
        messages = [{"role": "user", "content": f"IBAN {IBAN}"}]
        result = gw.chat.completions.create(model="private", messages=messages)
        assert result.choices[0].message.content == f"echo IBAN {IBAN}"
        stream = gw.chat.completions.create(model="private", messages=messages, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == f"echo IBAN {IBAN}"
    assert [b["messages"][-1]["content"] for b in echo.bodies] == ["IBAN [IBAN_1]"] * 2


# --- detection and restoring, offline ------------------------------------------------------


def test_detects_each_kind_and_leaves_ordinary_numbers():
    vault = Vault()
    text = (
        f"{EMAIL} {PHONE} {IBAN} {CARD} CF RSSMRA85T10A562S NIR 295109912611193 PESEL 44051401359"
        " — order 12345, 2024-05-01, 3.14, card 4111 1111 1111 1112 (bad check digit)"
    )
    redacted = vault.redact(text)
    assert sorted(vault.values) == [
        "[CARD_1]",
        "[EMAIL_1]",
        "[IBAN_1]",
        "[NATIONAL_ID_1]",
        "[NATIONAL_ID_2]",
        "[NATIONAL_ID_3]",
        "[PHONE_1]",
    ]
    assert "order 12345, 2024-05-01, 3.14, card 4111 1111 1111 1112" in redacted
    assert vault.restore(redacted) == text


def test_the_same_value_gets_the_same_placeholder():
    vault = Vault()
    assert vault.redact(f"{EMAIL} and {EMAIL}") == "[EMAIL_1] and [EMAIL_1]"


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=80), max_size=12))
def test_a_stream_cut_anywhere_restores_to_the_same_text(cuts: list[int]) -> None:
    vault = Vault()
    original = f"Dear {EMAIL}, your IBAN {IBAN} [not a placeholder] ends [EMAIL_9]."
    redacted = vault.redact(original)
    points = sorted({min(c, len(redacted)) for c in cuts})
    pieces = [redacted[a:b] for a, b in zip([0, *points], [*points, len(redacted)], strict=True)]
    restorer = StreamRestorer(vault)
    out = ""
    for k, piece in enumerate(pieces):
        last = k == len(pieces) - 1
        delta: dict[str, Any] = {"content": piece}
        choice: dict[str, Any] = {"index": 0, "delta": delta}
        if last:
            choice["finish_reason"] = "stop"
        restorer.chunk({"choices": [choice]})
        out += delta["content"]
    assert out == original
    assert restorer.rest({}) is None


def test_a_redacted_prompt_is_never_answered_from_the_response_cache(
    echo: Echo, start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """Two people whose prompts redact to the same placeholders must never share an answer:
    the second would receive the first one's data. Redacted calls bypass the cache."""
    config = gateway_config(echo.url, tmp_path / "ledger.db", cache={"enabled": True})  # type: ignore[attr-defined]
    deployment = {"provider": "openai", "model": "gpt-4o"}
    config["models"] = {"private": {"deployments": [deployment], "redact_pii": True}}
    base = start_gateway(config)
    echo.bodies.clear()
    answers = [
        chat(
            base,
            MASTER_KEY,
            model="private",
            temperature=0,
            messages=[{"role": "user", "content": f"I am {who}"}],
        )
        for who in (EMAIL, "bob.stone@example.org")
    ]
    assert [a.headers["x-gateway-cache"] for a in answers] == ["bypass", "bypass"]
    assert answer(answers[1], False) == "echo I am bob.stone@example.org"
    assert len(echo.bodies) == 2


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_names_are_redacted_where_a_detector_is_configured(
    echo: Echo, start_gateway: GatewayFactory, tmp_path: Path, stream: bool
) -> None:
    config = gateway_config(echo.url, tmp_path / "ledger.db")  # type: ignore[attr-defined]
    config["pii"] = {"names_detector": "tests.pii_names:detect"}
    deployment = {"provider": "openai", "model": "gpt-4o"}
    config["models"] = {"private": {"deployments": [deployment], "redact_pii": True}}
    base = start_gateway(config)
    echo.bodies.clear()
    said = "Alice Martin wrote to Jan de Vries; Alice Martin again"
    messages = [{"role": "user", "content": said}]
    response = chat(base, MASTER_KEY, model="private", messages=messages, stream=stream)
    assert answer(response, stream) == "echo " + said
    assert echo.bodies[0]["messages"][-1]["content"] == (
        "[NAME_1] wrote to [NAME_2]; [NAME_1] again"
    )


def test_a_names_detector_that_cannot_be_imported_is_a_config_error() -> None:
    from gateway.config import GatewayConfig
    from gateway.errors import ConfigError

    with pytest.raises((ConfigError, ValueError), match="cannot be imported"):
        GatewayConfig.model_validate({"pii": {"names_detector": "no_such_module:detect"}})
