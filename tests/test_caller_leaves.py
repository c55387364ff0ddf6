"""A caller that leaves before the answer starts stops its call: the upstream request is
closed at once, no retry or fallback starts, and the ledger records it as 499 — and a request
the server cuts at shutdown is answered 503 ``shutting_down`` with its request id, which the
ledger records the same way.

The gateway watches for ``http.disconnect`` from the moment it has read the request body;
the upstream here (``hang``) reads a request and never answers.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from gateway.server import create_app
from tests.emulators.faulty import FaultyUpstream
from tests.harness import ServerThread, free_port
from tests.lifecycle_helpers import ledger_records, wait_for

GIVE_UP = 0.5  # seconds the client waits before leaving


def config(upstream: str, db: Path) -> dict[str, Any]:
    provider = {
        "type": "openai",
        "api_key": "sk-upstream",
        "base_url": upstream + "/v1",
        "timeouts": {"connect": 2, "read": 3},
    }
    return {
        # Retries and a fallback that would run, were the call not stopped.
        "routing": {"retries": {"attempts_per_deployment": 3}, "circuit": {"enabled": False}},
        "ledger": {"url": f"sqlite+aiosqlite:///{db}", "flush_interval": 0.05},
        "providers": {"faulty": provider},
        "models": {
            "slow": {
                "deployments": [{"provider": "faulty", "model": "hang"}],
                "fallbacks": ["backup"],
            },
            "backup": {"deployments": [{"provider": "faulty", "model": "hang#backup"}]},
        },
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[FaultyUpstream]:
    with FaultyUpstream() as up:
        yield up


async def records_of(db: Path, client_id: str, wait: float = 5.0) -> list[Any]:
    deadline = time.monotonic() + wait
    while True:
        mine = [
            r
            for r in await ledger_records(f"sqlite+aiosqlite:///{db}")
            if r.tags.get("client_request_id") == client_id
        ]
        if mine or time.monotonic() > deadline:
            return mine
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(
    "path",
    ["/v1/chat/completions", "/openai/v1/chat/completions"],
    ids=["hot-route", "framework-route"],  # served without and through FastAPI's router
)
async def test_a_caller_leaving_before_the_first_byte_stops_the_upstream_request(
    upstream: FaultyUpstream, tmp_path: Path, stream: bool, path: str
) -> None:
    upstream.reset()
    db = tmp_path / "ledger.db"
    app = create_app(config(upstream.url, db))
    client_id = f"leaves-{stream}"
    with ServerThread(app) as server:
        body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        async with httpx.AsyncClient(timeout=GIVE_UP) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.post(
                    server.url + path,
                    json=body,
                    headers={"x-client-request-id": client_id},
                )
        left = time.monotonic()
        records = await records_of(db, client_id)
        # Held a moment longer than a retry's backoff: no new attempt may start.
        await asyncio.sleep(0.6)
        attempts = upstream.attempts

    assert [a.model for a in attempts] == ["hang"]  # no retry, no fallback
    closed = upstream.closed_at(attempts[0].connection)
    assert closed is not None and closed - left < 1.0, "the upstream request was left running"
    assert [(r.status, r.error_type) for r in records] == [(499, "client_disconnected")]
    assert not app.state.engine.calls.open


async def test_a_request_cut_at_shutdown_is_answered_503_with_its_request_id(
    upstream: FaultyUpstream, tmp_path: Path
) -> None:
    upstream.reset()
    db = tmp_path / "ledger.db"
    app = create_app(config(upstream.url, db))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            timeout_graceful_shutdown=0.3,  # type: ignore[arg-type]  # a float works
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    await wait_for(lambda: server.started, 10, "the gateway to start")
    body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(timeout=10) as client:
        pending = asyncio.create_task(
            client.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body)
        )
        await wait_for(lambda: upstream.attempts, 10, "the request upstream")
        server.should_exit = True  # as on SIGTERM: the request outlives the grace and is cut
        answer = await pending
    await asyncio.to_thread(thread.join, 10)
    records = await ledger_records(f"sqlite+aiosqlite:///{db}")

    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert error["code"] == "shutting_down" and error["type"] == "api_error"
    assert answer.headers["retry-after"] == "1"
    request_id = answer.headers["x-request-id"]
    assert [(r.request_id, r.status, r.error_type) for r in records] == [
        (request_id, 503, "shutting_down")
    ]
