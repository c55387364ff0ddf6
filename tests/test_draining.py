"""SIGTERM under streaming load, and SIGHUP, on the real ``llm-gateway serve`` process.

Twenty slow streams are open when SIGTERM arrives. Readiness turns 503 at once; for
``server.drain_delay`` the gateway still serves, then stops accepting; the streams run to
their end (within ``server.shutdown_timeout``) or, past it, are cut — and either way the
ledger, read from its SQLite file after the process exited, has exactly one record per call.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import ServerThread, free_port
from tests.lifecycle_helpers import (
    PacedUpstream,
    Seen,
    Served,
    chat,
    ledger_records,
    running,
    wait_for,
)

CLI = Path(sys.executable).parent / "llm-gateway"
STREAMS = 20


@pytest.fixture
def upstream() -> Iterator[PacedUpstream]:
    paced = PacedUpstream("A")
    with ServerThread(paced.app) as server:
        paced.url = server.url
        yield paced


def write_config(
    folder: Path, upstream: PacedUpstream, auth: dict[str, str] | None = None, **server: Any
) -> tuple[Path, str]:
    ledger_url = f"sqlite+aiosqlite:///{folder / 'ledger.db'}"
    config = {
        "server": server,
        "auth": auth or {},
        "routing": {"retries": {"attempts_per_deployment": 1}, "circuit": {"enabled": False}},
        "ledger": {"url": ledger_url},
        "providers": {
            "openai": {"type": "openai", "api_key": "sk-up", "base_url": upstream.url + "/v1"}
        },
        "models": {"gpt-4o": {"deployments": [{"provider": "openai", "model": "gpt-4o"}]}},
    }
    path = folder / "gateway.yaml"
    path.write_text(json.dumps(config))
    return path, ledger_url


def serve(config: Path, log: Path, *extra: str) -> Any:
    port = free_port()
    command = [str(CLI), "serve", "--config", str(config), "--port", str(port), *extra]
    return running(command, port, log)


async def open_streams(url: str, client: httpx.AsyncClient) -> list[asyncio.Task[Seen]]:
    return [asyncio.create_task(chat(client, url, stream=True)) for _ in range(STREAMS)]


async def stopped(served: Served, seconds: float) -> tuple[int, float]:
    started = time.monotonic()
    code = await asyncio.to_thread(served.process.wait, seconds)
    return code, time.monotonic() - started


async def test_sigterm_mid_stream_drains_every_stream_and_records_each(upstream, tmp_path):
    upstream.pieces, upstream.pace = 20, 0.1  # 2 s a stream
    config, ledger_url = write_config(tmp_path, upstream, drain_delay=1.0, shutdown_timeout=15)
    with serve(config, tmp_path / "serve.log") as served:
        limits = httpx.Limits(max_connections=STREAMS + 5)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            streams = await open_streams(served.url, client)
            await wait_for(lambda: upstream.arrived == STREAMS, 10, "every stream upstream")
            await asyncio.sleep(0.3)  # mid-stream: status and first chunks sent
            served.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()

            # At once: not ready (to anyone), yet still serving during the drain delay.
            ready = await client.get(served.url + "/health/ready")
            assert time.monotonic() - signalled < 0.5
            assert ready.status_code == 503
            assert ready.json() == {"status": "not ready", "failing": ["draining"]}
            during = await chat(client, served.url, stream=False)
            assert during.status == 200 and during.complete
            assert during.closing  # its keep-alive connection ends cleanly, after the answer

            # After it: no new connections.
            await asyncio.sleep(1.0 - (time.monotonic() - signalled) + 0.3)
            async with httpx.AsyncClient(timeout=5) as fresh:
                late = await chat(fresh, served.url, stream=False)
            assert late.request_id is None and late.error is not None

            seen = await asyncio.gather(*streams)
        code, took = await stopped(served, 30)
        log = served.log.read_text()
    records = await ledger_records(ledger_url)

    assert code in (0, -signal.SIGTERM), log
    assert took < 5, f"the process took {took:.1f}s to exit after the last stream ended"
    assert all(s.status == 200 and s.complete for s in seen), [s for s in seen if not s.complete]
    assert all(s.text.count(" tick") == upstream.pieces - 1 for s in seen)
    answered = {s.request_id for s in [*seen, during]}
    assert len(answered) == STREAMS + 1
    assert {r.request_id for r in records} == answered and len(records) == len(answered)
    assert all(r.status == 200 and r.cost_usd and r.cost_usd > 0 for r in records)
    assert sum(r.stream for r in records) == STREAMS
    assert "lost" not in log and "dropped" not in log, log


async def test_streams_longer_than_the_drain_timeout_are_cut_and_recorded_as_cut(
    upstream, tmp_path
):
    upstream.pieces, upstream.pace = 100, 0.1  # 10 s a stream; the drain allows 1 s
    config, ledger_url = write_config(tmp_path, upstream, shutdown_timeout=1)
    with serve(config, tmp_path / "serve.log") as served:
        limits = httpx.Limits(max_connections=STREAMS)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            streams = await open_streams(served.url, client)
            await wait_for(lambda: upstream.arrived == STREAMS, 10, "every stream upstream")
            await asyncio.sleep(0.5)
            served.process.send_signal(signal.SIGTERM)
            seen = await asyncio.gather(*streams)
        code, took = await stopped(served, 30)
        log = served.log.read_text()
    records = await ledger_records(ledger_url)

    assert code in (0, -signal.SIGTERM), log
    assert took < 8, f"shutdown took {took:.1f}s after the streams ended"
    # No stream is presented as complete …
    assert not any(s.complete for s in seen)
    started = {s.request_id for s in seen}
    assert None not in started and len(started) == STREAMS
    # … and each has its one record, as cut (499), with what it had produced billed.
    assert {r.request_id for r in records} == started and len(records) == STREAMS
    assert all(r.status == 499 and r.stream for r in records)
    assert all(r.completion_tokens and r.completion_tokens > 0 for r in records)
    assert "lost" not in log, log


async def test_sighup_reloads_the_config_file_and_a_bad_file_is_logged_and_ignored(
    upstream, tmp_path
):
    other = PacedUpstream("B")
    with ServerThread(other.app) as b:
        other.url = b.url
        config, _ = write_config(tmp_path, upstream)
        with serve(config, tmp_path / "serve.log") as served:
            async with httpx.AsyncClient(timeout=10) as client:
                assert "[A]" in (await chat(client, served.url, stream=False)).text
                write_config(tmp_path, other)
                served.process.send_signal(signal.SIGHUP)

                async def answered_by_b() -> bool:
                    return "[B]" in (await chat(client, served.url, stream=False)).text

                deadline = time.monotonic() + 10
                while not await answered_by_b():
                    assert time.monotonic() < deadline, served.log.read_text()
                    await asyncio.sleep(0.05)

                config.write_text("models: [oops")
                served.process.send_signal(signal.SIGHUP)
                await wait_for(
                    lambda: "rejected" in served.log.read_text(), 10, "the rejection logged"
                )
                assert served.process.poll() is None
                assert await answered_by_b()
            log = served.log.read_text()
    assert "SIGHUP: config reloaded" in log
    assert "not valid YAML" in log and "sk-up" not in log


@pytest.mark.parametrize("trigger", ["SIGHUP", "POST /admin/reload"])
async def test_with_two_workers_a_reload_replaces_every_worker_without_failing_a_request(
    upstream, tmp_path, trigger
):
    upstream.pieces, upstream.pace = 5, 0.05
    other = PacedUpstream("B", pieces=5, pace=0.05)
    auth = {"master_key": "sk-master-workers"}
    master = {"authorization": "Bearer sk-master-workers"}
    with ServerThread(other.app) as b:
        other.url = b.url
        # A replaced worker first answers with Connection: close for a second, so no client
        # sends a request on a keep-alive connection just as the worker closes it.
        config, _ = write_config(tmp_path, upstream, auth, drain_delay=1)
        with serve(config, tmp_path / "serve.log", "--workers", "2") as served:
            seen: list[Seen] = []
            stop = asyncio.Event()

            async def client_loop(client: httpx.AsyncClient, i: int) -> None:
                n = 0
                while not stop.is_set():
                    stream = (i + n) % 2 == 0
                    seen.append(await chat(client, served.url, stream=stream, headers=master))
                    n += 1

            async with httpx.AsyncClient(timeout=30) as client:
                loops = [asyncio.create_task(client_loop(client, i)) for i in range(4)]
                await asyncio.sleep(0.5)
                write_config(tmp_path, other, auth, drain_delay=1)
                if trigger == "SIGHUP":
                    # The supervisor's own answer: replace the workers one by one, each
                    # reading the file as it starts.
                    served.process.send_signal(signal.SIGHUP)
                else:
                    # One worker answers, applies the file, and asks the supervisor for that.
                    resp = await client.post(served.url + "/admin/reload", headers=master)
                    assert resp.status_code == 200, resp.text
                    assert resp.json()["workers"] == "restarting"
                try:
                    await wait_for(
                        lambda: served.log.read_text().count("Finished server process") >= 2,
                        60,
                        "both workers replaced",
                    )
                except AssertionError as exc:
                    raise AssertionError(f"{exc}:\n{served.log.read_text()}") from None
                finally:
                    stop.set()
                    await asyncio.gather(*loops)
                probes = [
                    await chat(client, served.url, stream=False, headers=master) for _ in range(6)
                ]
            log = served.log.read_text()

    assert all(s.status == 200 and s.complete for s in seen), [s for s in seen if not s.complete]
    assert any("[A]" in s.text for s in seen)
    assert all("[B]" in p.text for p in probes), log
