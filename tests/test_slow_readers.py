"""A caller that opens a stream and reads nothing: the gateway stops pulling the upstream
(backpressure), holds a bounded amount of memory for it, and still estimates a long answer's
usage as if it had kept the whole text.

Numbers for many such callers: ``python -m benchmarks.slow_readers`` (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import socket
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.config import LedgerConfig
from gateway.costs import count_tokens_sync, estimate_usage
from gateway.costs.tally import FOLD_CHARS, TextTally
from gateway.ledger.ledger import Ledger
from gateway.ledger.records import SpendRecord
from tests.conftest import SINGLE_ATTEMPT, GatewayFactory
from tests.emulators.long_stream import LongStreamUpstream, varied_text

ENDLESS = 2**30  # max_tokens: the upstream streams (practically) forever
MIB = 2**20


@pytest.fixture(scope="module")
def upstream() -> Iterator[LongStreamUpstream]:
    with LongStreamUpstream(varied_text(60_000), default_bytes=ENDLESS) as up:
        yield up


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("slow") / "ledger.db"


@pytest.fixture(scope="module")
def proxy(upstream: LongStreamUpstream, start_gateway: GatewayFactory, db: Path) -> str:
    config: dict[str, Any] = {
        "routing": {**SINGLE_ATTEMPT, "timeouts": {"idle": 30, "total": 120}},
        "ledger": {"url": f"sqlite+aiosqlite:///{db}", "flush_interval": 0.05},
        "providers": {"up": {"type": "openai", "api_key": "x", "base_url": upstream.url + "/v1"}},
        "models": {"long": {"deployments": [{"provider": "up", "model": "gpt-4o"}]}},
    }
    return start_gateway(config)


def request_bytes(**body: Any) -> bytes:
    payload = orjson.dumps(
        {"model": "long", "stream": True, "messages": [{"role": "user", "content": "go"}], **body}
    )
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\n"
        b"content-type: application/json\r\n"
        + f"content-length: {len(payload)}\r\n\r\n".encode()
        + payload
    )


def silent_caller(proxy: str) -> socket.socket:
    """A client that sends a streaming request and never reads (a small receive window)."""
    host, port = proxy.removeprefix("http://").removesuffix("/v1").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.connect((host, int(port)))
    sock.sendall(request_bytes())
    return sock


def written_when_still(upstream: LongStreamUpstream, slot: int, quiet: float = 0.5) -> int:
    """The bytes stream ``slot`` got out once its count stopped moving for ``quiet`` s."""
    deadline = time.monotonic() + 60
    while len(upstream.written) <= slot:
        assert time.monotonic() < deadline, "the stream never reached the upstream"
        time.sleep(0.02)
    last, since = -1, time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, "the upstream never stopped writing"
        time.sleep(0.05)
        now = upstream.written[slot]
        if now != last:
            last, since = now, time.monotonic()
    return last


def read_whole_stream(proxy: str, size: int) -> str:
    """Read a stream of ``size`` bytes of events to its end; its request id."""
    body = {
        "model": "long",
        "stream": True,
        "max_tokens": size,
        "messages": [{"role": "user", "content": "go"}],
    }
    with httpx.stream("POST", proxy + "/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        for _ in response.iter_bytes():
            pass
        return response.headers["x-request-id"]


async def ledger_record(db: Path, request_id: str) -> SpendRecord:
    """The ledger's record of one request (waiting, bounded, for the writer's batch)."""
    ledger = Ledger(LedgerConfig(url=f"sqlite+aiosqlite:///{db}", migrate=False))
    try:
        deadline = time.monotonic() + 10
        while True:
            page = await ledger.spend_records(
                datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC) + timedelta(hours=1)
            )
            found = [r for r in page.records if r.request_id == request_id]
            if found:
                return found[0]
            assert time.monotonic() < deadline, "no ledger record"
            await asyncio.sleep(0.05)
    finally:
        await ledger.engine.dispose()


def test_a_caller_that_reads_nothing_stops_the_gateway_reading_upstream(proxy, upstream):
    slot = len(upstream.written)
    caller = silent_caller(proxy)
    try:
        written = written_when_still(upstream, slot)
    finally:
        caller.close()
    # What kernel buffers hold between the upstream and the caller (a few MiB on loopback),
    # not the endless answer.
    assert written < 32 * MIB


def test_a_stream_a_caller_does_not_read_holds_little_gateway_memory(proxy, upstream):
    """Before, the gateway kept the whole text generated so far (twice) and whatever one
    upstream read brought (up to ~0.5 MiB, decoded into chunks): ~8 MiB here."""
    read_whole_stream(proxy, 200_000)  # the tokenizer is loaded, as in a running gateway
    slot = len(upstream.written)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        caller = silent_caller(proxy)
        try:
            written = written_when_still(upstream, slot)
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            caller.close()
    finally:
        tracemalloc.stop()
    assert written > 2 * MIB  # the answer went well past what the gateway may hold
    assert held < 2.5 * MIB, f"{held / MIB:.1f} MiB held for one stream"


async def test_a_long_streams_estimate_counts_the_whole_answer(proxy, upstream, db):
    """The generated text is counted in pieces as it arrives (only a tail is kept); the
    estimate is that of the whole text."""
    size = 400_000  # about 330 kB of text: several pieces
    request_id = read_whole_stream(proxy, size)
    record = await ledger_record(db, request_id)
    assert record.usage_estimated
    whole = estimate_usage(
        [{"role": "user", "content": "go"}], upstream.sent_text(size), "openai", "gpt-4o"
    )
    assert abs(record.completion_tokens - whole["completion_tokens"]) <= 1
    assert record.prompt_tokens == whole["prompt_tokens"]


@pytest.mark.parametrize(
    ("family", "model"),
    [("openai", "gpt-4o"), ("openai", "gpt-4"), ("mistral", "mistral-small-latest")],
)
async def test_a_text_counted_in_pieces_counts_as_the_whole(family, model):
    text = varied_text(200_000)
    tally = TextTally()
    for start in range(0, len(text), 997):  # deltas of any size
        if tally.add(text[start : start + 997]):
            await tally.fold(family, model)
    assert tally.counted > 0 and len(tally.tail) <= FOLD_CHARS
    whole = count_tokens_sync(text, family, model)
    assert tally.counted + count_tokens_sync(tally.tail, family, model) == whole
