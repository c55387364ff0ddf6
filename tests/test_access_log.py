"""The access log: one JSON line per request on ``gateway.access``, with who called and what
happened, and no prompts, answers or secrets unless the caller's key asks for its content."""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.observability.logs import (
    ACCESS_LOGGER,
    BackgroundHandler,
    JsonFormatter,
    TextFormatter,
)
from tests.conftest import GatewayFactory
from tests.emulators.openai_api import API_KEY, OpenAIEmulator
from tests.keys_helpers import MASTER_KEY, Admin, chat, gateway_config

PROMPT = "my password is hunter2"


class Lines(logging.Handler):
    """Keeps each formatted line."""

    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__()
        self.setFormatter(formatter)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def line_of(self, request_id: str, wait: float = 5.0) -> str:
        """The line of one request (a stream's comes once it has ended)."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            found = [line for line in self.lines if request_id in line]
            if found:
                assert len(found) == 1, found
                return found[0]
            time.sleep(0.02)
        raise AssertionError(f"no access log line for {request_id}")


def capture(formatter: logging.Formatter) -> Iterator[Lines]:
    logger = logging.getLogger(ACCESS_LOGGER)
    handler = Lines(formatter)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture
def access() -> Iterator[Lines]:
    yield from capture(JsonFormatter())


@pytest.fixture(scope="module")
def proxy(
    openai_upstream: OpenAIEmulator,
    start_gateway: GatewayFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    db = tmp_path_factory.mktemp("access") / "ledger.db"
    return start_gateway(gateway_config(openai_upstream.url, db))


@pytest.fixture(scope="module")
def admin(proxy: str) -> Admin:
    return Admin(proxy)


def test_each_request_logs_one_json_line_of_facts(proxy, admin, access, openai_emu):
    team = admin.create_team(name="access-team")
    key = admin.create_key(name="access", team=team["id"])
    answer = chat(proxy, key["key"], headers={"x-request-id": "caller-7"})
    assert answer.status_code == 200
    fields = orjson.loads(access.line_of(answer.headers["x-request-id"]))
    usage = answer.json()["usage"]
    assert fields["logger"] == ACCESS_LOGGER and fields["level"] == "info"
    assert fields["client_request_id"] == "caller-7"
    assert (fields["key_id"], fields["team"]) == (key["id"], team["id"])
    assert (fields["model"], fields["provider"], fields["deployment"]) == (
        "gpt-4o",
        "openai",
        "openai/gpt-4o",
    )
    assert fields["upstream_model"] == answer.json()["model"]
    assert fields["status"] == 200 and fields["error_type"] is None
    assert fields["attempts"] == 1 and fields["fallback_used"] is False
    assert fields["prompt_tokens"] == usage["prompt_tokens"]
    assert fields["completion_tokens"] == usage["completion_tokens"]
    assert fields["cost_usd"] == pytest.approx(float(answer.headers["x-gateway-cost"]))
    assert fields["usage_estimated"] is False
    assert fields["latency_ms"] > 0 and fields["ttft_ms"] is None


def test_prompts_answers_and_keys_stay_out_of_the_log_by_default(
    proxy: str, admin: Admin, access: Lines, openai_emu: OpenAIEmulator
) -> None:
    key = admin.create_key(name="quiet")
    answer = chat(
        proxy,
        key["key"],
        messages=[{"role": "user", "content": PROMPT}],
        metadata={"log_content": True},  # the caller cannot turn content logging on
    )
    assert answer.status_code == 200
    said = answer.json()["choices"][0]["message"]["content"]
    assert "hunter2" in said  # the emulator repeats the prompt
    line = access.line_of(answer.headers["x-request-id"])
    for secret in ("hunter2", said, key["key"], MASTER_KEY, API_KEY):
        assert secret not in line
    fields = orjson.loads(line)
    assert not {"content", "tags", "end_user", "error_message"} & fields.keys()


def test_a_refused_request_is_logged_without_the_key_it_sent(proxy, access):
    wrong = "sk-gw-this-is-not-a-real-key-but-looks-like-one"
    response = httpx.post(
        proxy + "/chat/completions",
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": PROMPT}]},
        headers={"authorization": f"Bearer {wrong}"},
    )
    assert response.status_code == 401
    line = access.line_of(response.headers["x-request-id"])
    assert wrong not in line and "hunter2" not in line
    fields = orjson.loads(line)
    assert fields["status"] == 401 and fields["error_type"] == "invalid_api_key"


def test_an_upstream_failure_is_logged_with_its_type_not_its_message(
    proxy: str, admin: Admin, access: Lines, openai_emu: OpenAIEmulator
) -> None:
    from tests.emulators.common import Fault

    openai_emu.fail_next(Fault(status=400, body=b'{"error": {"message": "you said hunter2"}}'))
    answer = chat(proxy, MASTER_KEY, messages=[{"role": "user", "content": PROMPT}])
    assert answer.status_code == 400
    line = access.line_of(answer.headers["x-request-id"])
    assert "hunter2" not in line
    assert orjson.loads(line)["status"] == 400


def test_a_key_with_log_content_gets_its_prompts_and_answers_logged(
    proxy: str, admin: Admin, access: Lines, openai_emu: OpenAIEmulator
) -> None:
    key = admin.create_key(name="verbose", metadata={"log_content": True})
    answer = chat(proxy, key["key"], messages=[{"role": "user", "content": PROMPT}])
    assert answer.status_code == 200
    fields = orjson.loads(access.line_of(answer.headers["x-request-id"]))
    content: dict[str, Any] = fields["content"]
    assert content["messages"] == [{"role": "user", "content": PROMPT}]
    assert content["choices"][0]["message"] == answer.json()["choices"][0]["message"]
    assert fields["tags"]["log_content"] is True
    assert key["key"] not in orjson.dumps(fields).decode()


def test_a_team_with_log_content_gets_its_streamed_answers_logged(
    proxy: str, admin: Admin, access: Lines, openai_emu: OpenAIEmulator
) -> None:
    team = admin.create_team(name="verbose-team", metadata={"log_content": "true"})
    key = admin.create_key(name="verbose-member", team=team["id"])
    with httpx.stream(
        "POST",
        proxy + "/chat/completions",
        json={"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": PROMPT}]},
        headers={"authorization": f"Bearer {key['key']}"},
    ) as response:
        assert response.status_code == 200
        body = response.read().decode()
        request_id = response.headers["x-request-id"]
    assert "[DONE]" in body
    fields = orjson.loads(access.line_of(request_id))
    assert fields["stream"] is True and fields["ttft_ms"] > 0
    assert fields["content"]["messages"] == [{"role": "user", "content": PROMPT}]
    assert "hunter2" in fields["content"]["output"][0]


def test_text_format_writes_key_value_pairs(proxy: str, openai_emu: OpenAIEmulator) -> None:
    for lines in capture(TextFormatter()):
        answer = chat(proxy, MASTER_KEY)
        line = lines.line_of(answer.headers["x-request-id"])
    assert " INFO gateway.access " in line
    assert "status=200" in line and "model=gpt-4o" in line and "fallback_used=false" in line
    assert "null" not in line and "None" not in line


def test_the_access_log_can_be_switched_off(
    start_gateway: GatewayFactory, openai_upstream: OpenAIEmulator, access: Lines, tmp_path: Path
) -> None:
    url = start_gateway(
        gateway_config(openai_upstream.url, tmp_path / "l.db", logging={"access_log": False})
    )
    answer = chat(url, MASTER_KEY)
    assert answer.status_code == 200
    time.sleep(0.2)
    assert not [line for line in access.lines if answer.headers["x-request-id"] in line]


class StuckStream(io.StringIO):
    """A stream whose writes wait until ``release`` is set (a full pipe to a log shipper)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        self.entered.set()
        assert self.release.wait(10)
        return super().write(text)


def test_a_stuck_log_stream_delays_access_lines_not_requests() -> None:
    stream = StuckStream()
    handler = BackgroundHandler(stream, capacity=2)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.background")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        logger.info("request", extra={"access": {"n": 0}})
        assert stream.entered.wait(10)  # the writer thread is stuck in the first write
        started = time.monotonic()
        for n in range(1, 5):
            logger.info("request", extra={"access": {"n": n}})
        assert time.monotonic() - started < 1.0
        assert handler.dropped == 2  # two wait in the list, two did not fit
        stream.release.set()
    finally:
        logger.removeHandler(handler)
        handler.close()  # writes what waits
    assert [orjson.loads(line)["n"] for line in stream.getvalue().splitlines()] == [0, 1, 2]


def test_other_log_lines_are_written_at_once_after_the_access_lines_before_them() -> None:
    stream = io.StringIO()
    handler = BackgroundHandler(stream, interval=60)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.background.order")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        logger.info("request", extra={"access": {"n": 1}})
        assert stream.getvalue() == ""  # waits for the writer thread
        logger.warning("shutting down")
        lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
        assert [line.get("n", line.get("message")) for line in lines] == [1, "shutting down"]
    finally:
        logger.removeHandler(handler)
        handler.close()


def test_a_refused_embeddings_request_is_logged_as_embeddings(proxy: str, access: Lines) -> None:
    response = httpx.post(
        proxy + "/embeddings",
        content=b"not json",
        headers={"authorization": f"Bearer {MASTER_KEY}"},
    )
    assert response.status_code == 400
    fields = orjson.loads(access.line_of(response.headers["x-request-id"]))
    assert (fields["operation"], fields["status"], fields["model"]) == ("embeddings", 400, None)


def test_fill_in_the_middle_is_logged_with_its_prompt_for_a_key_with_log_content(
    start_gateway: GatewayFactory, access: Lines, tmp_path: Path
) -> None:
    from tests.emulators.mistral_api import API_KEY as MISTRAL_KEY
    from tests.emulators.mistral_api import MistralEmulator
    from tests.harness import ServerThread

    mistral = MistralEmulator()
    with ServerThread(mistral.app) as upstream:
        provider = {"type": "mistral", "api_key": MISTRAL_KEY, "base_url": upstream.url + "/v1"}
        config = gateway_config("http://127.0.0.1:9", tmp_path / "ledger.db")
        config["providers"] = {"mistral": provider}
        config["models"] = {
            "codestral": {"deployments": [{"provider": "mistral", "model": "codestral-latest"}]}
        }
        url = start_gateway(config)
        key = Admin(url).create_key(name="fim", metadata={"log_content": True})
        response = httpx.post(
            url + "/fim/completions",
            json={"model": "codestral", "prompt": "def add(a, b):", "suffix": "return c"},
            headers={"authorization": f"Bearer {key['key']}"},
        )
    assert response.status_code == 200, response.text
    fields = orjson.loads(access.line_of(response.headers["x-request-id"]))
    assert (fields["operation"], fields["surface"]) == ("fim", "mistral")
    assert fields["content"]["messages"] == [{"role": "user", "content": "def add(a, b):return c"}]
