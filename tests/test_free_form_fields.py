"""Whatever a caller puts in a free-form field, the gateway answers 2xx or 4xx, records every
call it started exactly once, and holds nothing afterwards.

Arbitrary JSON values — text with NUL and lone surrogates, nesting far past what JSON
libraries write, numbers too large for a double — go into ``user``, ``metadata``, a message's
content, a tool call's arguments and the ``x-client-request-id`` header, through the real HTTP
server, with a key that has a parallel limit and a budget, on a SQLite and a PostgreSQL
ledger. Afterwards: no 5xx was answered; each call that reached the engine has exactly one
ledger record, with the status the caller got (a body refused at the door, as invalid JSON or
against the schema, never started a call and has none); no call is open and no parallel slot
or budget reservation is held.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.engine import Engine
from gateway.server import create_app
from tests.emulators.openai_api import OpenAIEmulator
from tests.harness import ServerThread
from tests.keys_helpers import Admin, gateway_config
from tests.ledger_helpers import scratch_postgres
from tests.lifecycle_helpers import ledger_records

FIELDS = ("user", "metadata", "content", "tool_arguments", "client_request_id")

# Text as it can arrive: any code point, and half the time one the storage and encoding
# layers find hard — NUL above all, a lone surrogate, a line or byte-order mark.
plain_text = st.text(st.characters(codec="utf-8"), max_size=10)
any_text = st.one_of(
    plain_text,
    st.builds(
        "".join,
        st.tuples(
            plain_text,
            st.sampled_from(["\x00", "\x00", "\x00", "\ud800", "\udfff", "\u2028", "\ufeff"]),
            plain_text,
        ),
    ),
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=False, allow_infinity=False)
    | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)


@dataclass(frozen=True)
class Case:
    field: str
    value: Any
    depth: int  # arrays wrapped around the value's JSON text, beyond what encoders write
    stream: bool


def json_text(value: Any, depth: int) -> str:
    """``value`` as JSON text, lone surrogates escaped (``\\ud800``, which the JSON grammar
    allows), wrapped in ``depth`` arrays."""
    return "[" * depth + json.dumps(value) + "]" * depth


def request_of(case: Case) -> tuple[str, dict[bytes, bytes]]:
    """The request body (JSON text) and extra headers for ``case``."""
    value = json_text(case.value, case.depth)
    headers: dict[bytes, bytes] = {}
    user = '"someone"'
    metadata = '{"k": "v"}'
    content = '"hello"'
    arguments = '"{}"'
    if case.field == "user":
        user = value
    elif case.field == "metadata":
        metadata = f'{{"free": {value}}}'
    elif case.field == "content":
        content = value
    elif case.field == "tool_arguments":
        arguments = value
    else:  # a header carries bytes: those an HTTP client may send
        text = json.dumps(case.value, ensure_ascii=False).encode("utf-8", "surrogatepass")
        allowed = bytes(b for b in text if b == 0x20 or 0x21 <= b <= 0x7E or b >= 0x80)
        headers[b"x-client-request-id"] = allowed.strip() or b"x"
    messages = (
        '[{"role": "user", "content": "what is the weather?"},'
        ' {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1",'
        f' "type": "function", "function": {{"name": "weather", "arguments": {arguments}}}}}]}},'
        ' {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},'
        f' {{"role": "user", "content": {content}}}]'
    )
    body = (
        f'{{"model": "gpt-4o", "messages": {messages}, "user": {user}, '
        f'"metadata": {metadata}, "max_tokens": 5, "stream": {json.dumps(case.stream)}}}'
    )
    return body, headers


cases = st.builds(
    Case,
    field=st.sampled_from(FIELDS),
    value=st.one_of(any_text, json_values),  # text often: most free-form fields are text
    depth=st.one_of(st.just(0), st.just(0), st.integers(min_value=0, max_value=1100)),
    stream=st.booleans(),
)


@dataclass
class Served:
    url: str
    ledger_url: str
    engine: Engine
    key: str


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    emulator = OpenAIEmulator()
    with ServerThread(emulator.app) as server:
        yield server.url


@pytest.fixture(
    scope="module",
    params=[
        "sqlite",
        "postgresql",
    ],
)
def served(
    request: pytest.FixtureRequest, upstream: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    db: Path = tmp_path_factory.mktemp("free-form") / "ledger.db"
    config = gateway_config(upstream, db)
    config["ledger"]["shutdown_timeout"] = 2  # a stuck writer should not hold the run up
    with scratch_postgres() if request.param == "postgresql" else nullcontext("") as url:
        if url:
            config["ledger"]["url"] = url
        app = create_app(config)
        with ServerThread(app) as server:
            base = server.url + "/v1"
            key = Admin(base).create_key(name="fuzzed", max_parallel=4, budget_usd="100")
            yield Served(base, config["ledger"]["url"], app.state.engine, key["key"])


def send(client: httpx.Client, served: Served, case: Case) -> httpx.Response:
    body, headers = request_of(case)
    return client.post(
        served.url + "/chat/completions",
        content=body.encode("utf-8", "surrogatepass"),
        headers={
            b"authorization": f"Bearer {served.key}".encode(),
            b"content-type": b"application/json",
            **headers,
        },
    )


def test_any_free_form_value_is_answered_recorded_once_and_leaves_nothing_held(
    served: Served,
) -> None:
    answers: dict[str, int] = {}  # request id → status

    with httpx.Client(timeout=10) as client:

        @settings(
            max_examples=60,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(case=cases)
        def answered_without_a_server_error(case: Case) -> None:
            answer = send(client, served, case)
            answer.read()
            assert answer.status_code < 500, (case, answer.text[:500])
            answers[answer.headers["x-request-id"]] = answer.status_code

        answered_without_a_server_error()

    records = asyncio.run(records_settled(served, answers))
    by_id: dict[str, list[int]] = {}
    for record in records:
        by_id.setdefault(record.request_id, []).append(record.status)
    assert set(by_id) <= set(answers), "a record for a request nobody was answered"
    for request_id, statuses in by_id.items():
        assert statuses == [answers[request_id]], (request_id, statuses)
    served_ok = {rid for rid, status in answers.items() if status < 300}
    assert served_ok <= set(by_id), "an answered call has no record"
    assert holds_nothing(served.engine)


async def records_settled(served: Served, answers: dict[str, int], wait: float = 5.0) -> list[Any]:
    """The ledger's records once every successful answer has its record (or ``wait`` passed)."""
    ok = {rid for rid, status in answers.items() if status < 300}
    deadline = time.monotonic() + wait
    while True:
        records = await ledger_records(served.ledger_url)
        if ok <= {r.request_id for r in records} or time.monotonic() > deadline:
            return records
        await asyncio.sleep(0.1)


def holds_nothing(engine: Engine, wait: float = 5.0) -> bool:
    limits: Any = engine.limits
    deadline = time.monotonic() + wait
    while True:
        if not (
            engine.calls.open or any(limits._parallel.values()) or any(limits._reserved.values())
        ):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
