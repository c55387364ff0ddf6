"""Gateway replicas as real ``llm-gateway serve`` processes on 127.0.0.1, for the tests of
several replicas sharing one database and one Redis."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from tests.harness import free_port

CLI = Path(sys.executable).parent / "llm-gateway"
START_TIMEOUT = 30.0


@dataclass
class Replica:
    """One ``llm-gateway serve`` process and where it answers."""

    name: str
    process: subprocess.Popen[bytes]
    url: str  # …/v1
    log: Path

    def wait_live(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"replica {self.name} exited at start:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url[:-3] + "/health/live", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        pytest.fail(
            f"replica {self.name} did not start in {START_TIMEOUT}s:\n{self.log.read_text()}"
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@contextmanager
def serve_replicas(
    config: dict[str, Any], workdir: Path, names: tuple[str, ...] = ("a", "b")
) -> Iterator[list[Replica]]:
    """Start one replica per name on ``config`` (all at once, as a deployment does), wait
    until each is live, and stop them all afterwards."""
    path = workdir / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    started: list[Replica] = []
    try:
        for name in names:
            port = free_port()
            log = workdir / f"replica-{name}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(
                    [str(CLI), "serve", "--config", str(path), "--port", str(port)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=workdir,
                )
            started.append(Replica(name, process, f"http://127.0.0.1:{port}/v1", log))
        deadline = time.monotonic() + START_TIMEOUT
        for replica in started:
            replica.wait_live(deadline)
        yield started
    finally:
        for replica in started:
            replica.stop()


def forget_redis_keys(url: str, prefix: str) -> None:
    """Delete what a test's replicas left in Redis under their own key prefix."""
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
