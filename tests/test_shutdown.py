"""Stopping the gateway loses no spend record.

``llm-gateway serve`` (the real console script, in its own process) gets SIGTERM while
requests are in flight: uvicorn stops accepting connections, lets the requests it has finish,
then the app's shutdown writes what the ledger still holds. Afterwards the ledger has exactly
one record for every request the server received — and none for a request it never received.

"Received" is known two ways, and both must agree with the ledger: the upstream counts the
calls that reached it (every request here reaches it), and each client that got a response
holds its ``x-request-id``, which is the record's key.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.emulators.common import json_response, sse
from tests.emulators.openai_api import API_KEY, chunks, completion
from tests.harness import ServerThread, free_port
from tests.ledger_helpers import scratch_postgres
from tests.lifecycle_helpers import Served, ledger_records, running

CLI = Path(sys.executable).parent / "llm-gateway"
HOLD = 1.5  # seconds each answer is held upstream: SIGTERM arrives well inside it
IN_FLIGHT = 20  # half streaming
LATE = 4  # sent after SIGTERM: refused, or (if they beat the listener's close) served
HELLO = [{"role": "user", "content": "hello"}]
COST = Decimal("0.0000225")  # gpt-4o: 1 prompt token x $2.50/1M + 2 completion x $10.00/1M


class HeldUpstream:
    """An OpenAI upstream that holds each answer for ``hold`` seconds — a plain answer before
    it starts, a stream after its first two chunks (so the gateway is mid-stream, its status
    and headers already sent) — and counts the calls that arrived."""

    def __init__(self, hold: float) -> None:
        self.hold = hold
        self.arrived = 0
        self.url = ""
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        self.arrived += 1
        answer = completion(body, body["model"] + "-2024-08-06")
        if not body.get("stream"):
            await asyncio.sleep(self.hold)
            return json_response(answer)
        include = bool((body.get("stream_options") or {}).get("include_usage"))
        events = [sse(c) for c in chunks(answer, include)] + [b"data: [DONE]\n\n"]

        async def stream() -> AsyncIterator[bytes]:
            for i, event in enumerate(events):
                if i == 2:
                    await asyncio.sleep(self.hold)
                yield event

        return StreamingResponse(stream(), media_type="text/event-stream")


@dataclass
class Outcome:
    """What one client saw: the response's request id (None: no response at all)."""

    stream: bool
    request_id: str | None = None
    status: int | None = None
    complete: bool = False
    error: str | None = None


@pytest.fixture
def upstream() -> Iterator[HeldUpstream]:
    held = HeldUpstream(HOLD)
    with ServerThread(held.app) as server:
        held.url = server.url
        yield held


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    else:
        with scratch_postgres() as url:
            yield url


@pytest.fixture
def served(upstream: HeldUpstream, ledger_url: str, tmp_path: Path) -> Iterator[Served]:
    """``llm-gateway serve --config FILE --port P``, as it is deployed."""
    config = write_config(tmp_path, upstream, ledger_url)
    port = free_port()
    command = [str(CLI), "serve", "--config", str(config), "--port", str(port)]
    with running(command, port, tmp_path / "serve.log") as server:
        yield server


def write_config(folder: Path, upstream: HeldUpstream, ledger_url: str) -> Path:
    config = {
        "routing": {"retries": {"attempts_per_deployment": 1}, "circuit": {"enabled": False}},
        "ledger": {"url": ledger_url},  # defaults otherwise: flush 0.2 s, shutdown_timeout 10 s
        "providers": {
            "openai": {"type": "openai", "api_key": API_KEY, "base_url": upstream.url + "/v1"}
        },
        "models": {"gpt-4o": {"deployments": [{"provider": "openai", "model": "gpt-4o"}]}},
    }
    path = folder / "gateway.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


async def call(client: httpx.AsyncClient, url: str, stream: bool) -> Outcome:
    """One chat completion; what the client got out of it."""
    outcome = Outcome(stream)
    body = {"model": "gpt-4o", "messages": HELLO, "stream": stream}
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as resp:
            outcome.request_id = resp.headers.get("x-request-id")
            outcome.status = resp.status_code
            text = (await resp.aread()).decode()
    except httpx.TransportError as exc:
        outcome.error = repr(exc)
        return outcome
    if stream:
        outcome.complete = text.rstrip().endswith("data: [DONE]") and "echo:" in text
    else:
        outcome.complete = outcome.status == 200 and '"content":"echo: hello"' in text
    return outcome


async def wait_for(condition: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def test_sigterm_with_requests_in_flight_loses_no_record(served, upstream, ledger_url):
    limits = httpx.Limits(max_connections=IN_FLIGHT + LATE)
    async with httpx.AsyncClient(timeout=20, limits=limits) as client:
        in_flight = [
            asyncio.create_task(call(client, served.url, stream=i % 2 == 0))
            for i in range(IN_FLIGHT)
        ]
        await wait_for(lambda: upstream.arrived == IN_FLIGHT, 10, "every request upstream")
        served.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        await asyncio.sleep(0.3)  # uvicorn closes its listener within ~0.1 s of the signal
        late = [asyncio.create_task(call(client, served.url, stream=False)) for _ in range(LATE)]
        outcomes = await asyncio.gather(*in_flight)
        late_outcomes = await asyncio.gather(*late)
    returncode = await asyncio.to_thread(served.process.wait, 20)
    stopped_after = time.monotonic() - signalled
    log = served.log.read_text()
    records = await ledger_records(ledger_url)

    # The process stopped because of the signal (uvicorn re-raises it once it is done) …
    assert returncode in (0, -signal.SIGTERM), log
    assert stopped_after < HOLD + 5, f"shutdown took {stopped_after:.1f}s"
    # … after answering, completely, every request it had received.
    assert all(o.status == 200 and o.complete for o in outcomes), outcomes
    served_late = [o for o in late_outcomes if o.request_id is not None]
    assert all(o.status == 200 and o.complete for o in served_late), late_outcomes
    assert all(o.error for o in late_outcomes if o.request_id is None)

    # Exactly one record per request received: the ids the clients got back, no other.
    answered = {o.request_id for o in [*outcomes, *served_late]}
    assert {r.request_id for r in records} == answered
    assert len(records) == len(answered) == upstream.arrived == IN_FLIGHT + len(served_late)
    # Each complete, and priced.
    assert all(r.status == 200 and r.cost_usd == COST for r in records)
    streams = {o.request_id for o in [*outcomes, *served_late] if o.stream}
    assert {r.request_id for r in records if r.stream} == streams
    assert "lost" not in log and "dropped" not in log, log


# uvicorn as ``serve`` runs it, with a graceful-shutdown timeout below the 1 s minimum of
# server.shutdown_timeout.
SERVE_WITH_GRACE = (
    "import sys, uvicorn; uvicorn.run('gateway.server.app:create_app', factory=True, "
    "host='127.0.0.1', port=int(sys.argv[1]), timeout_graceful_shutdown=float(sys.argv[2]))"
)


async def test_requests_cut_by_a_graceful_shutdown_timeout_are_recorded_as_errors(
    upstream, tmp_path
):
    upstream.hold = 2.0  # longer than the grace below: every request is cut
    ledger_url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    config = write_config(tmp_path, upstream, ledger_url)
    port = free_port()
    command = [sys.executable, "-c", SERVE_WITH_GRACE, str(port), "0.5"]
    env = {"GATEWAY_CONFIG": str(config)}
    with running(command, port, tmp_path / "serve.log", env) as served:
        async with httpx.AsyncClient(timeout=20) as client:
            tasks = [asyncio.create_task(call(client, served.url, i % 2 == 0)) for i in range(6)]
            await wait_for(lambda: upstream.arrived == 6, 10, "every request upstream")
            served.process.send_signal(signal.SIGTERM)
            outcomes = await asyncio.gather(*tasks)
        await asyncio.to_thread(served.process.wait, 20)
    records = await ledger_records(ledger_url)

    assert not any(o.complete for o in outcomes)
    # Received, then cut: each still has its record, as an error.
    assert len(records) == upstream.arrived
    assert all(r.status >= 400 for r in records)
    started = {o.request_id for o in outcomes if o.request_id is not None}  # the streams
    assert started <= {r.request_id for r in records}
