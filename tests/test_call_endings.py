"""Whatever is raised inside a call, the call ends exactly once: one ledger record with its
status, the key's admission released, and the caller answered in the OpenAI shape with the
request id — through the HTTP server and through the library.

Two inputs reached the adapter and broke it before: JSON nested deeper than orjson writes
(254 levels; it reads 1024), and text with a lone surrogate (a library caller can pass one).
Both are now refused with 400. A genuine fault (here: an upstream whose ``usage`` is not an
object, which the cost arithmetic cannot read) answers 500 ``internal_error`` and still ends
the call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway import AsyncGateway
from gateway.engine import Engine
from gateway.errors import GatewayError, InvalidRequestError
from gateway.server import create_app
from tests.emulators.common import sse
from tests.emulators.openai_api import chunks, completion
from tests.harness import ServerThread
from tests.keys_helpers import Admin, gateway_config, key_records
from tests.lifecycle_helpers import ledger_records

HELLO = [{"role": "user", "content": "hello"}]
UNREADABLE_USAGE = "unreadable-usage"  # the upstream answers with "usage": "lots"


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


async def chat(request: Request) -> Response:
    body = await request.json()
    answer = completion(body, body["model"])
    if body["model"] == UNREADABLE_USAGE:
        answer["usage"] = "lots"
    if body.get("stream"):  # a first chunk, then one whose "choices" is not a list
        start = [sse(c) for c in chunks(answer, False)[:2]]  # the role, then some text

        async def events() -> AsyncIterator[bytes]:
            yield b"".join(start)
            await asyncio.sleep(0.2)  # the answer has started by then
            yield sse({"id": "x", "object": "chat.completion.chunk", "choices": "oops"})

        return StreamingResponse(events(), media_type="text/event-stream")
    return JSONResponse(answer)


@pytest.fixture(scope="module")
def upstream_url() -> Iterator[str]:
    app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])
    with ServerThread(app) as server:
        yield server.url


def config(upstream_url: str, db: Path) -> dict[str, Any]:
    cfg = gateway_config(upstream_url, db)
    cfg["models"][UNREADABLE_USAGE] = {
        "deployments": [
            {
                "provider": "openai",
                "model": UNREADABLE_USAGE,
                "price": {"input": "1", "output": "2"},  # budgets need a price to meter
            }
        ]
    }
    return cfg


@dataclass
class Served:
    url: str  # …/v1
    db: Path
    engine: Engine
    admin: Admin


@pytest.fixture(scope="module")
def served(upstream_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    db = tmp_path_factory.mktemp("endings") / "ledger.db"
    app = create_app(config(upstream_url, db))
    with ServerThread(app) as server:
        url = server.url + "/v1"
        yield Served(url, db, app.state.engine, Admin(url))


def post(served: Served, key: str, **body: Any) -> httpx.Response:
    return httpx.post(
        served.url + "/chat/completions",
        json={"model": "gpt-4o", "messages": HELLO, **body},
        headers={"authorization": f"Bearer {key}"},
        timeout=10,
    )


def holds_nothing(engine: Engine, wait: float = 2.0) -> bool:
    """No call open, no parallel slot or budget reservation held (memory limits), once the
    settling that follows an answer has run (waiting at most ``wait`` seconds)."""
    limits: Any = engine.limits
    deadline = time.monotonic() + wait
    while True:
        held = engine.calls.open or any(limits._parallel.values()) or any(limits._reserved.values())
        if not held:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def deep_json(depth: int) -> str:
    """Arrays nested ``depth`` deep, as JSON text (beyond what a JSON library will write)."""
    return "[" * depth + '"x"' + "]" * depth


@pytest.mark.parametrize(
    "fields",
    [
        f'"metadata": {{"deep": {deep_json(300)}}}',
        f'"user": "u", "stop": {deep_json(1000)}',
        f'"tools": [{{"type": "function", "function": {{"name": "f", "x": {deep_json(255)}}}}}]',
    ],
    ids=["metadata-300", "stop-1000", "tools-255"],
)
def test_json_nested_too_deep_is_refused_with_400_and_holds_no_slot(
    served: Served, fields: str
) -> None:
    key = served.admin.create_key(name="deep", max_parallel=2, budget_usd="1")
    body = f'{{"model": "gpt-4o", "messages": [{{"role": "user", "content": "hi"}}], {fields}}}'

    answers = [
        httpx.post(
            served.url + "/chat/completions",
            content=body,
            headers={"authorization": f"Bearer {key['key']}", "content-type": "application/json"},
            timeout=10,
        )
        for _ in range(3)
    ]

    for answer in answers:
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == "nesting_too_deep"
        assert "128 levels" in answer.json()["error"]["message"]
        assert answer.headers["x-request-id"]
    # Before, two such calls held both parallel slots of the key for good.
    assert post(served, key["key"]).status_code == 200
    assert holds_nothing(served.engine)


def test_json_nested_within_the_limit_is_served(served: Served) -> None:
    key = served.admin.create_key(name="nested-ok")
    answer = post(served, key["key"], metadata={"deep": nested(100)})
    assert answer.status_code == 200, answer.text


def test_an_unexpected_error_answers_500_with_its_request_id_and_is_recorded_and_released(
    served: Served,
) -> None:
    key = served.admin.create_key(name="fault", max_parallel=1, budget_usd="1")

    answers = [post(served, key["key"], model=UNREADABLE_USAGE) for _ in range(2)]

    ids = []
    for answer in answers:
        assert answer.status_code == 500, answer.text
        error = answer.json()["error"]
        assert error["code"] == "internal_error" and error["type"] == "api_error"
        request_id = answer.headers["x-request-id"]
        assert request_id in error["message"]
        ids.append(request_id)
    records = asyncio.run(key_records(served.db, key["id"], at_least=2))
    assert sorted(r.request_id for r in records) == sorted(ids)
    assert all(r.status == 500 and r.error_type == "internal_error" for r in records)
    # The key's one parallel slot was released each time.
    assert post(served, key["key"]).status_code == 200
    assert holds_nothing(served.engine)


def test_an_unexpected_error_mid_stream_ends_the_stream_and_records_it_as_500(
    served: Served,
) -> None:
    key = served.admin.create_key(name="stream-fault", max_parallel=1)
    with httpx.stream(
        "POST",
        served.url + "/chat/completions",
        json={"model": "gpt-4o", "messages": HELLO, "stream": True},
        headers={"authorization": f"Bearer {key['key']}"},
        timeout=10,
    ) as answer:
        text = answer.read().decode()
        request_id = answer.headers["x-request-id"]

    assert answer.status_code == 200  # the answer had started: the error comes as an event
    assert text.startswith("data: ") and "echo" in text
    assert '"code":"internal_error"' in text and request_id in text
    assert "[DONE]" not in text
    records = asyncio.run(key_records(served.db, key["id"]))
    assert [(r.status, r.error_type) for r in records] == [(500, "internal_error")]
    assert holds_nothing(served.engine)


# --- the library ----------------------------------------------------------------------------


@pytest.fixture
def library_config(upstream_url: str, tmp_path: Path) -> dict[str, Any]:
    cfg = config(upstream_url, tmp_path / "ledger.db")
    del cfg["auth"]
    return cfg


async def test_library_refuses_deep_json_and_unencodable_text_with_400_and_ends_each_call(
    library_config: dict[str, Any],
) -> None:
    async with AsyncGateway(library_config) as gw:
        create = gw.chat.completions.create
        with pytest.raises(InvalidRequestError) as deep:
            await create(model="gpt-4o", messages=HELLO, metadata={"d": nested(300)})
        # A lone surrogate is a valid Python str but cannot be written as UTF-8 JSON.
        with pytest.raises(InvalidRequestError) as surrogate:
            await create(model="gpt-4o", messages=[{"role": "user", "content": "a\ud800b"}])
        served = await create(model="gpt-4o", messages=HELLO)
        assert not gw.engine.calls.open
    records = await ledger_records(library_config["ledger"]["url"])

    assert deep.value.code == "nesting_too_deep"
    assert surrogate.value.status == 400 and surrogate.value.code == "unencodable_request"
    # The refused-at-the-door call never started; the other two have one record each.
    assert sorted(r.status for r in records) == [200, 400]
    assert served.id


async def test_library_unexpected_error_raises_a_500_gateway_error_and_records_the_call(
    library_config: dict[str, Any],
) -> None:
    async with AsyncGateway(library_config) as gw:
        with pytest.raises(GatewayError) as raised:
            await gw.chat.completions.create(model=UNREADABLE_USAGE, messages=HELLO)
        assert not gw.engine.calls.open
    records = await ledger_records(library_config["ledger"]["url"])

    assert raised.value.status == 500 and raised.value.code == "internal_error"
    assert [(r.status, r.error_type) for r in records] == [(500, "internal_error")]
