"""/metrics with several worker processes: every worker counts into the run's
PROMETHEUS_MULTIPROC_DIR and a scrape, whichever worker answers it, adds them all up."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest
import yaml
from prometheus_client.multiprocess import MultiProcessCollector

from tests.harness import free_port
from tests.test_metrics import scrape, value

CLI = Path(sys.executable).parent / "llm-gateway"
REQUESTS = 40


def _start(tmp_path: Path, workers: int) -> tuple[subprocess.Popen[bytes], str, Path, Path]:
    config = {
        "ledger": {"url": f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"},
        "providers": {"mock": {"type": "mock"}},
        "models": {"mock-echo": {"deployments": [{"provider": "mock", "model": "mock-echo"}]}},
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    scratch = tmp_path / "tmp"  # where serve makes its per-run metrics directory
    scratch.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env["TMPDIR"] = str(scratch)
    port = free_port()
    log = tmp_path / "serve.log"
    process = subprocess.Popen(
        [str(CLI), "serve", "-c", str(path), "--port", str(port), "--workers", str(workers)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            pytest.fail(f"serve exited at start:\n{log.read_text()}")
        try:
            if httpx.get(url[:-3] + "/health/live", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"serve did not start:\n{log.read_text()}"
        time.sleep(0.1)
    return process, url, scratch, log


async def _requests(url: str, count: int) -> list[int]:
    # No keep-alive: each request may land on either worker.
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        body = {"model": "mock-echo", "messages": [{"role": "user", "content": "hi"}]}
        answers = await asyncio.gather(
            *(client.post(url + "/chat/completions", json=body) for _ in range(count))
        )
    return [a.status_code for a in answers]


def _pids(directory: Path) -> set[str]:
    return {p.stem.rsplit("_", 1)[1] for p in directory.glob("counter_*.db")}


def test_two_workers_report_the_sum_of_their_counts(tmp_path: Path) -> None:
    process, url, scratch, log = _start(tmp_path, workers=2)
    try:
        directories = list(scratch.glob("llm-gateway-metrics-*"))
        assert len(directories) == 1, "serve should make one metrics directory per run"
        deadline = time.monotonic() + 30
        while len(_pids(directories[0])) < 2:  # each worker counts in files of its own
            assert time.monotonic() < deadline, f"two workers never started:\n{log.read_text()}"
            time.sleep(0.1)

        assert asyncio.run(_requests(url, REQUESTS)) == [200] * REQUESTS

        # Files per worker hold that worker's share; together, every request.
        shares = []
        for pid in _pids(directories[0]):
            files = [str(p) for p in directories[0].glob(f"*_{pid}.db")]
            merged = MultiProcessCollector.merge(files)  # type: ignore[no-untyped-call]
            samples = [(s.name, s.labels, s.value) for m in merged for s in m.samples]
            shares.append(value(samples, "gateway_requests_total", model="mock-echo"))
        assert sum(shares) == REQUESTS

        # Whichever worker answers the scrape, it shows every worker's requests.
        for _ in range(8):
            samples = scrape(url)
            assert value(samples, "gateway_requests_total", model="mock-echo", status="200") == (
                REQUESTS
            )
            assert value(samples, "gateway_request_duration_seconds_count") == REQUESTS
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert not list(scratch.glob("llm-gateway-metrics-*")), "the metrics directory is left over"
    access = [
        orjson.loads(line)
        for line in log.read_text().splitlines()
        if line.startswith("{") and '"gateway.access"' in line
    ]
    assert len(access) == REQUESTS
    assert {line["status"] for line in access} == {200}
