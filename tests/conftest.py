"""Fixtures: upstream emulators and gateways served over real HTTP on 127.0.0.1."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from gateway.server import create_app
from tests.emulators.openai_api import OpenAIEmulator
from tests.harness import ServerThread

GatewayFactory = Callable[[dict[str, Any]], str]

# For tests that watch a single upstream exchange: no retries, no circuit breaker.
SINGLE_ATTEMPT: dict[str, Any] = {
    "retries": {"attempts_per_deployment": 1},
    "circuit": {"enabled": False},
}


@pytest.fixture(scope="session", autouse=True)
def _scratch_working_directory(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Gateways write their default SQLite ledger in the working directory: keep it out of
    the repository."""
    os.chdir(tmp_path_factory.mktemp("cwd"))


def service_missing(reason: str) -> None:
    """Skip a test whose real service is absent — or fail it where CI requires services."""
    if os.environ.get("GATEWAY_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (GATEWAY_REQUIRE_SERVICES=1 forbids skipping)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A reachable Redis (GATEWAY_TEST_REDIS_URL, default 127.0.0.1:6379/15)."""
    import redis

    url = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1.0).ping()
    except redis.RedisError as exc:
        service_missing(f"Redis is not reachable at {url}: {exc}")
    return url


@pytest.fixture(scope="session")
def openai_upstream() -> Iterator[OpenAIEmulator]:
    emulator = OpenAIEmulator()
    with ServerThread(emulator.app) as server:
        emulator.url = server.url
        yield emulator


@pytest.fixture
def openai_emu(openai_upstream: OpenAIEmulator) -> OpenAIEmulator:
    """The session's OpenAI emulator, with no recorded requests and no queued faults."""
    openai_upstream.reset()
    return openai_upstream


@pytest.fixture(scope="module")
def start_gateway() -> Iterator[GatewayFactory]:
    """Start a gateway for a config mapping on a free port; returns its base URL (…/v1)."""
    with ExitStack() as stack:

        def start(config: dict[str, Any]) -> str:
            server = stack.enter_context(ServerThread(create_app(config)))
            return server.url + "/v1"

        yield start
