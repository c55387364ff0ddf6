"""The fault-injecting upstream itself: each scenario, seen from a plain HTTP client or socket."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import orjson
import pytest

from tests.emulators.faulty import FaultyUpstream

CHAT = "/v1/chat/completions"
CONNECTION_ERRORS = (httpx.ReadError, httpx.RemoteProtocolError, httpx.ConnectError)


@pytest.fixture(scope="module")
def served() -> Iterator[FaultyUpstream]:
    with FaultyUpstream() as up:
        yield up


@pytest.fixture
def up(served: FaultyUpstream) -> FaultyUpstream:
    served.reset()
    return served


@pytest.fixture
def client(up: FaultyUpstream) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=up.url, timeout=3) as c:
        yield c


def chat(model: str, text: str = "hello there world", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def stream_chat(model: str, **extra: Any) -> dict[str, Any]:
    return chat(model, stream=True, **extra)


def data_of(lines: list[str]) -> list[str]:
    return [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]


def read_events(
    client: httpx.Client, body: dict[str, Any], received: list[str], timeout: float = 3
) -> None:
    """Stream ``body``, appending each event's data to ``received`` as it arrives."""
    with client.stream("POST", CHAT, json=body, timeout=timeout) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                received.append(line.removeprefix("data: "))


def events(client: httpx.Client, body: dict[str, Any]) -> list[str]:
    received: list[str] = []
    read_events(client, body, received)
    return received


def raw_request(body: bytes, extra_headers: str = "") -> bytes:
    return (
        f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra_headers}\r\n"
    ).encode() + body


def read_raw_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """Head and body of one Content-Length response from ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))[15:]
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head, body


# --- normal answers ------------------------------------------------------------------------


def test_plain_model_answers_ok_with_deterministic_usage(client: httpx.Client) -> None:
    body = chat("gpt-4o")
    body["messages"].insert(0, {"role": "system", "content": "be brief"})
    response = client.post(CHAT, json=body)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    answer = response.json()
    assert answer["model"] == "gpt-4o"
    assert answer["choices"][0]["message"]["content"] == "ok: hello there world"
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}


def test_plain_stream_sends_role_one_chunk_per_word_finish_and_done(client: httpx.Client) -> None:
    with client.stream("POST", CHAT, json=stream_chat("ok")) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["transfer-encoding"] == "chunked"
        received = data_of(list(response.iter_lines()))
    assert received[-1] == "[DONE]"
    chunks = [orjson.loads(d) for d in received[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0]["role"] == "assistant"
    assert [d.get("content") for d in deltas[1:-1]] == ["ok:", " hello", " there", " world"]
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "stop"
    assert all(c["model"] == "ok" and "usage" not in c for c in chunks)


def test_stream_with_include_usage_ends_with_a_usage_chunk(client: httpx.Client) -> None:
    body = stream_chat("ok", stream_options={"include_usage": True})
    chunks = [orjson.loads(d) for d in events(client, body)[:-1]]
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def test_keep_alive_serves_several_requests_on_one_connection(up: FaultyUpstream) -> None:
    with socket.create_connection(("127.0.0.1", up.port), timeout=3) as sock:
        for text in ("first", "second"):
            sock.sendall(raw_request(orjson.dumps(chat("ok", text))))
            head, body = read_raw_response(sock)
            assert head.startswith(b"HTTP/1.1 200 OK")
            assert orjson.loads(body)["choices"][0]["message"]["content"] == f"ok: {text}"


def test_one_httpx_client_reuses_its_connection(up: FaultyUpstream, client: httpx.Client) -> None:
    assert client.post(CHAT, json=chat("ok")).status_code == 200
    assert client.post(CHAT, json=stream_chat("ok")).status_code == 200
    assert client.post(CHAT, json=chat("ok")).status_code == 200
    assert len({a.connection for a in up.attempts}) == 1


def test_a_cut_stream_costs_its_connection(up: FaultyUpstream, client: httpx.Client) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        events(client, stream_chat("cut-after:1"))
    assert client.post(CHAT, json=chat("ok")).status_code == 200
    first, second = up.attempts
    assert first.connection != second.connection


def test_chunked_request_body_is_read(client: httpx.Client) -> None:
    raw = orjson.dumps(chat("ok", "in pieces"))
    pieces = iter([raw[:10], raw[10:]])  # an iterator makes httpx send Transfer-Encoding: chunked
    response = client.post(CHAT, content=pieces, headers={"content-type": "application/json"})
    assert response.json()["choices"][0]["message"]["content"] == "ok: in pieces"


def test_unreadable_json_body_is_a_400(up: FaultyUpstream, client: httpx.Client) -> None:
    response = client.post(CHAT, content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert up.attempts[0].body == {}


def test_other_paths_are_404(client: httpx.Client) -> None:
    assert client.get("/v1/models").status_code == 404
    assert client.post(CHAT, json=chat("ok")).status_code == 200  # connection still usable


# --- error statuses ------------------------------------------------------------------------


def test_429_once_retry_after_sends_the_header_then_answers(client: httpx.Client) -> None:
    first = client.post(CHAT, json=chat("429-once-retry-after:2"))
    assert first.status_code == 429
    assert first.headers["retry-after"] == "2"
    assert first.json()["error"]["code"] == "rate_limit_exceeded"
    assert first.json()["error"]["type"] == "requests"
    assert client.post(CHAT, json=chat("429-once-retry-after:2")).status_code == 200


def test_429_always_has_no_retry_after(client: httpx.Client) -> None:
    for _ in range(2):
        response = client.post(CHAT, json=chat("429-always"))
        assert response.status_code == 429
        assert "retry-after" not in response.headers


def test_429_retry_after_ms_sends_azure_headers_once(client: httpx.Client) -> None:
    first = client.post(CHAT, json=chat("429-retry-after-ms:250"))
    assert first.status_code == 429
    assert first.headers["retry-after-ms"] == "250"
    assert first.headers["x-ms-retry-after-ms"] == "250"
    assert client.post(CHAT, json=chat("429-retry-after-ms:250")).status_code == 200


def test_insufficient_quota_is_a_429_with_its_code(client: httpx.Client) -> None:
    response = client.post(CHAT, json=chat("insufficient-quota"))
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "insufficient_quota"


def test_500_once_then_normal(client: httpx.Client) -> None:
    first = client.post(CHAT, json=chat("500-once"))
    assert first.status_code == 500
    assert first.json()["error"]["type"] == "server_error"
    assert client.post(CHAT, json=chat("500-once")).status_code == 200


def test_503_always(client: httpx.Client) -> None:
    assert [client.post(CHAT, json=chat("503-always")).status_code for _ in range(2)] == [503, 503]


def test_context_length_is_openais_400(client: httpx.Client) -> None:
    response = client.post(CHAT, json=chat("context-length"))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert error["param"] == "messages"
    assert error["message"].startswith("This model's maximum context length is 128000 tokens.")


def test_content_filter_is_azures_400(client: httpx.Client) -> None:
    response = client.post(CHAT, json=chat("content-filter"))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "content_filter"
    assert error["innererror"]["code"] == "ResponsibleAIPolicyViolation"
    assert error["innererror"]["content_filter_result"]["violence"] == {
        "filtered": True,
        "severity": "high",
    }


def test_html_500_is_not_json(client: httpx.Client) -> None:
    response = client.post(CHAT, json=chat("html-500"))
    assert response.status_code == 500
    assert response.headers["content-type"] == "text/html"
    assert response.text.startswith("<html>")


def test_down_follows_set_down(up: FaultyUpstream, client: httpx.Client) -> None:
    assert client.post(CHAT, json=chat("down:east")).status_code == 200
    up.set_down("east")
    assert client.post(CHAT, json=chat("down:east")).status_code == 503
    assert client.post(CHAT, json=chat("down:west")).status_code == 200
    up.set_down("east", False)
    assert client.post(CHAT, json=chat("down:east")).status_code == 200
    assert len(up.attempts_for("down:east")) == 3


def test_unreadable_suffix_is_a_400_that_says_why(client: httpx.Client) -> None:
    response = client.post(CHAT, json=chat("cut-after:soon"))
    assert response.status_code == 400
    assert "whole number" in response.json()["error"]["message"]


# --- connection faults ---------------------------------------------------------------------


def test_reset_is_a_connection_reset_before_any_byte(up: FaultyUpstream) -> None:
    with socket.create_connection(("127.0.0.1", up.port), timeout=3) as sock:
        sock.sendall(raw_request(orjson.dumps(chat("reset"))))
        with pytest.raises(ConnectionResetError):
            sock.recv(65536)


def test_reset_is_a_connection_error_for_httpx(client: httpx.Client) -> None:
    with pytest.raises(CONNECTION_ERRORS):
        client.post(CHAT, json=chat("reset"))


def test_reset_once_then_normal(up: FaultyUpstream, client: httpx.Client) -> None:
    with pytest.raises(CONNECTION_ERRORS):
        client.post(CHAT, json=chat("reset-once"))
    assert client.post(CHAT, json=chat("reset-once")).status_code == 200
    assert len(up.attempts_for("reset-once")) == 2


def test_hang_never_answers(up: FaultyUpstream, client: httpx.Client) -> None:
    with pytest.raises(httpx.ReadTimeout):
        client.post(CHAT, json=chat("hang"), timeout=0.3)
    assert len(up.attempts_for("hang")) == 1


def test_slow_first_byte_delays_the_answer(client: httpx.Client) -> None:
    started = time.monotonic()
    response = client.post(CHAT, json=chat("slow-first-byte:0.4"))
    assert time.monotonic() - started >= 0.4
    assert response.json()["model"] == "slow-first-byte:0.4"


def test_slow_first_token_sends_headers_at_once_and_the_first_event_late(
    client: httpx.Client,
) -> None:
    started = time.monotonic()
    with client.stream("POST", CHAT, json=stream_chat("slow-first-token:0.5")) as response:
        assert time.monotonic() - started < 0.4
        assert response.status_code == 200
        first = next(line for line in response.iter_lines() if line)
        assert time.monotonic() - started >= 0.5
        assert first.startswith("data: ")


def test_slow_first_token_delays_a_json_answer(client: httpx.Client) -> None:
    started = time.monotonic()
    assert client.post(CHAT, json=chat("slow-first-token:0.3")).status_code == 200
    assert time.monotonic() - started >= 0.3


def test_cut_after_ends_the_chunked_body_early(client: httpx.Client) -> None:
    received: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
        read_events(client, stream_chat("cut-after:3"), received)
    assert len(received) == 3
    assert orjson.loads(received[0])["choices"][0]["delta"]["role"] == "assistant"


def test_cut_after_on_a_json_request_sends_half_the_body(client: httpx.Client) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        client.post(CHAT, json=chat("cut-after:3"))


def test_cut_after_once_then_a_complete_stream(client: httpx.Client) -> None:
    received: list[str] = []
    with pytest.raises(httpx.RemoteProtocolError):
        read_events(client, stream_chat("cut-after-once:2"), received)
    assert len(received) == 2
    assert events(client, stream_chat("cut-after-once:2"))[-1] == "[DONE]"


def test_stall_after_goes_silent_with_the_connection_open(client: httpx.Client) -> None:
    received: list[str] = []
    with pytest.raises(httpx.ReadTimeout):
        read_events(client, stream_chat("stall-after:2"), received, timeout=0.3)
    assert len(received) == 2


# --- stream framing faults -----------------------------------------------------------------


def test_malformed_mid_stream_inserts_one_broken_event(client: httpx.Client) -> None:
    received = events(client, stream_chat("malformed-mid-stream"))
    assert received[-1] == "[DONE]"
    broken = []
    for data in received[:-1]:
        try:
            orjson.loads(data)
        except orjson.JSONDecodeError:
            broken.append(data)
    assert broken == ['{"id": broken json']
    assert received.index(broken[0]) not in (0, len(received) - 2)


def test_no_done_ends_cleanly_after_finish_and_usage(client: httpx.Client) -> None:
    received = events(client, stream_chat("no-done"))
    assert "[DONE]" not in received
    chunks = [orjson.loads(d) for d in received]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["completion_tokens"] == 4


def test_no_finish_ends_cleanly_without_finish_reason_or_done(client: httpx.Client) -> None:
    received = events(client, stream_chat("no-finish"))
    assert "[DONE]" not in received
    chunks = [orjson.loads(d) for d in received]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == (
        "ok: hello there world"
    )


# --- attempt log ---------------------------------------------------------------------------


def test_attempts_record_model_path_stream_body_and_headers(
    up: FaultyUpstream, client: httpx.Client
) -> None:
    before = time.monotonic()
    client.post(
        "/openai/deployments/d1/chat/completions?api-version=2024-10-21",
        json=stream_chat("ok"),
        headers={"X-Trace": "t1"},
    )
    [attempt] = up.attempts
    assert attempt.model == "ok"
    assert attempt.path == "/openai/deployments/d1/chat/completions"
    assert attempt.query == "api-version=2024-10-21"
    assert attempt.stream is True
    assert attempt.body == stream_chat("ok")
    assert attempt.headers["x-trace"] == "t1"
    assert before <= attempt.started <= time.monotonic()


def test_gaps_measure_the_time_between_attempts_of_a_model(
    up: FaultyUpstream, client: httpx.Client
) -> None:
    for _ in range(3):
        client.post(CHAT, json=chat("503-always"))
        client.post(CHAT, json=chat("ok"))
        time.sleep(0.1)
    gaps = up.gaps("503-always")
    assert len(gaps) == 2
    assert all(0.1 <= gap < 1 for gap in gaps)
    assert len(up.attempts_for("ok")) == 3


def test_reset_forgets_attempts_and_once_state(up: FaultyUpstream, client: httpx.Client) -> None:
    assert client.post(CHAT, json=chat("500-once")).status_code == 500
    up.set_down("x")
    up.reset()
    assert up.attempts == []
    assert client.post(CHAT, json=chat("500-once")).status_code == 500
    assert client.post(CHAT, json=chat("down:x")).status_code == 200


def test_a_tag_keeps_its_own_once_counter(client: httpx.Client) -> None:
    assert client.post(CHAT, json=chat("500-once#a")).status_code == 500
    assert client.post(CHAT, json=chat("500-once#b")).status_code == 500
    assert client.post(CHAT, json=chat("500-once#a")).status_code == 200


# --- lifecycle -----------------------------------------------------------------------------


def test_shutdown_is_prompt_with_hanging_and_stalled_connections() -> None:
    with ExitStack() as clients:
        stack = ExitStack()
        up = stack.enter_context(FaultyUpstream())
        for model in ("hang", "stall-after:1", "slow-first-byte:30"):
            sock = clients.enter_context(socket.create_connection(("127.0.0.1", up.port), 3))
            sock.sendall(raw_request(orjson.dumps(stream_chat(model))))
        deadline = time.monotonic() + 3
        while len(up.attempts) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        stack.close()
        assert time.monotonic() - started < 2
        assert len(up.attempts) == 3
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", up.port), timeout=1).close()


async def test_runs_inside_the_callers_event_loop() -> None:
    async with FaultyUpstream() as up, httpx.AsyncClient(base_url=up.url, timeout=3) as client:
        first = await client.post(CHAT, json=chat("500-once"))
        second = await client.post(CHAT, json=chat("500-once"))
    assert (first.status_code, second.status_code) == (500, 200)
