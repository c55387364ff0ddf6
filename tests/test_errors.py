"""Bad input and broken upstreams: each gets a clear OpenAI-style error, and the gateway
keeps answering the next request."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import SINGLE_ATTEMPT, GatewayFactory
from tests.emulators.common import Fault
from tests.emulators.openai_api import API_KEY, OpenAIEmulator
from tests.harness import free_port

MASTER_KEY = "sk-gateway-master-test"
HELLO: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def gateway_url(openai_upstream: OpenAIEmulator, start_gateway: GatewayFactory) -> str:
    return start_gateway(
        {
            "server": {"max_body_bytes": 4096},
            "auth": {"master_key": MASTER_KEY},
            "routing": SINGLE_ATTEMPT,
            "providers": {
                "openai": {
                    "type": "openai",
                    "api_key": API_KEY,
                    "base_url": openai_upstream.url + "/v1",
                },
                "nowhere": {
                    "type": "openai",
                    "api_key": "x",
                    "base_url": f"http://127.0.0.1:{free_port()}/v1",
                    "timeouts": {"connect": 2, "read": 2},
                },
            },
            "models": {
                "gpt-4o": {"deployments": [{"provider": "openai", "model": "gpt-4o"}]},
                "unreachable": {"deployments": [{"provider": "nowhere", "model": "gpt-4o"}]},
            },
        }
    )


@pytest.fixture
def http(gateway_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=gateway_url, timeout=10, headers={"authorization": f"Bearer {MASTER_KEY}"}
    ) as client:
        yield client


def assert_error(resp: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "Traceback" not in error["message"]
    if code is not None:
        assert error["code"] == code
    return dict(error)


def assert_still_answers(http: httpx.Client) -> None:
    resp = http.post("/chat/completions", json=HELLO)
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == "echo: hi"


def test_malformed_json_is_400_saying_json(http, openai_emu):
    resp = http.post(
        "/chat/completions",
        content=b'{"model": "gpt-4o", "messages": [',
        headers={"content-type": "application/json"},
    )
    error = assert_error(resp, 400)
    assert "not valid JSON" in error["message"]
    assert openai_emu.requests == []
    assert_still_answers(http)


def test_body_that_is_not_an_object_is_400(http):
    error = assert_error(http.post("/chat/completions", json=[1, 2]), 400)
    assert "JSON object" in error["message"]


def test_missing_messages_is_400_naming_the_field(http, openai_emu):
    error = assert_error(http.post("/chat/completions", json={"model": "gpt-4o"}), 400)
    assert error["param"] == "messages"
    assert "'messages'" in error["message"]
    assert openai_emu.requests == []
    assert_still_answers(http)


def test_wrong_field_type_is_400_naming_the_field(http):
    body = {**HELLO, "temperature": "hot"}
    error = assert_error(http.post("/chat/completions", json=body), 400)
    assert error["param"] == "temperature"


def test_unknown_model_is_404_listing_available_models(http):
    error = assert_error(
        http.post("/chat/completions", json={**HELLO, "model": "gpt-9"}), 404, "model_not_found"
    )
    assert "gpt-9" in error["message"]
    assert "gpt-4o" in error["message"] and "unreachable" in error["message"]
    assert_still_answers(http)


def test_wrong_key_is_401_and_key_is_not_echoed(gateway_url, http):
    resp = httpx.post(
        gateway_url + "/chat/completions",
        json=HELLO,
        headers={"authorization": "Bearer sk-wrong-secret-123"},
    )
    error = assert_error(resp, 401, "invalid_api_key")
    assert "sk-wrong-secret-123" not in resp.text
    assert "key" in error["message"]
    assert_still_answers(http)


def test_missing_key_is_401_saying_how_to_send_it(gateway_url):
    resp = httpx.post(gateway_url + "/chat/completions", json=HELLO)
    error = assert_error(resp, 401, "missing_api_key")
    assert "Authorization: Bearer" in error["message"]


def test_models_list_requires_the_key(gateway_url):
    assert_error(httpx.get(gateway_url + "/models"), 401)


def test_openai_sdk_sees_authentication_error(gateway_url):
    client = openai.OpenAI(base_url=gateway_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(**HELLO)


def test_oversized_body_is_413_with_the_limit(http, openai_emu):
    big = {**HELLO, "messages": [{"role": "user", "content": "x" * 10_000}]}
    error = assert_error(http.post("/chat/completions", json=big), 413, "request_too_large")
    assert "4096" in error["message"]
    assert openai_emu.requests == []
    assert_still_answers(http)


def test_oversized_chunked_body_without_length_is_413(http):
    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b"x" * 1000

    resp = http.post(
        "/chat/completions", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_error(resp, 413)
    assert_still_answers(http)


def test_upstream_500_with_html_body_names_provider_and_hides_html(http, openai_emu):
    openai_emu.fail_next(
        Fault(status=500, body=b"<html><body>Internal oops</body></html>", content_type="text/html")
    )
    resp = http.post("/chat/completions", json=HELLO)
    error = assert_error(resp, 500)
    assert "openai" in error["message"] and "openai/gpt-4o" in error["message"]
    assert "<html>" not in error["message"]
    assert "text/html" in error["message"]
    assert resp.headers["x-gateway-provider"] == "openai"
    assert_still_answers(http)


def test_upstream_400_keeps_status_and_upstream_message(http, openai_emu):
    openai_emu.fail_next(
        Fault(
            status=400,
            body=b'{"error": {"message": "Invalid value for '
            b'\'top_p\'", "type": "invalid_request_error", "param": "top_p",'
            b' "code": "invalid_value"}}',
        )
    )
    error = assert_error(http.post("/chat/completions", json=HELLO), 400, "invalid_value")
    assert "Invalid value for 'top_p'" in error["message"]
    assert error["param"] == "top_p"
    assert len(openai_emu.requests) == 1


def test_unreachable_upstream_is_502_naming_the_deployment(http):
    error = assert_error(
        http.post("/chat/completions", json={**HELLO, "model": "unreachable"}),
        502,
        "upstream_unreachable",
    )
    assert "nowhere" in error["message"]
    assert_still_answers(http)


def test_cut_stream_ends_with_error_event_and_no_done(http, openai_emu):
    openai_emu.fail_next(Fault(cut_after=3))
    with http.stream("POST", "/chat/completions", json={**HELLO, "stream": True}) as resp:
        assert resp.status_code == 200
        body = resp.read().decode()
    assert "[DONE]" not in body
    last = [line for line in body.split("\n\n") if line.strip()][-1]
    assert '"error"' in last and "stream_interrupted" in last
    assert_still_answers(http)


def test_openai_sdk_raises_on_cut_stream(gateway_url, openai_emu):
    openai_emu.fail_next(Fault(cut_after=2))
    client = openai.OpenAI(base_url=gateway_url, api_key=MASTER_KEY, max_retries=0)
    stream = client.chat.completions.create(**HELLO, stream=True)
    with pytest.raises(openai.APIError, match="before it was complete"):
        for _ in stream:
            pass


def test_unknown_route_is_openai_shaped_404(http):
    assert_error(http.post("/completions-typo", json=HELLO), 404, "unknown_route")


def test_error_responses_carry_the_gateway_id_and_echo_the_callers(http):
    resp = http.post(
        "/chat/completions",
        json={"model": "gpt-9", "messages": []},
        headers={"x-request-id": "req-abc-123"},
    )
    assert resp.headers["x-client-request-id"] == "req-abc-123"
    assert len(resp.headers["x-request-id"]) == 32  # the gateway's own, unique id


def test_health_endpoints_answer_without_key(gateway_url):
    root = gateway_url.removesuffix("/v1")
    assert httpx.get(root + "/health/live").json() == {"status": "ok"}
    assert httpx.get(root + "/health/ready").json() == {"status": "ready"}
    master = {"authorization": f"Bearer {MASTER_KEY}"}
    ready = httpx.get(root + "/health/ready", headers=master).json()
    assert ready["status"] == "ready" and len(ready["checks"]["models"]) == 2
    assert ready["checks"]["ledger"]["running"] is True
    assert ready["checks"]["ledger"]["dropped"] == 0
