"""``/health/ready``: 503 with the failing checks when the process should get no traffic,
details for the master key only, and cheap under a storm of probes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.server import create_app
from gateway.server.readiness import CachedPing
from tests.conftest import SINGLE_ATTEMPT
from tests.emulators.openai_api import API_KEY
from tests.harness import ServerThread, free_port

MASTER_KEY = "sk-master-readiness"
MASTER = {"authorization": f"Bearer {MASTER_KEY}"}
HELLO = [{"role": "user", "content": "hello"}]


def config(upstream_url: str, tmp_path: Path, **sections: Any) -> dict[str, Any]:
    return {
        "auth": {"master_key": MASTER_KEY},
        "ledger": {"url": f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"},
        "routing": {
            **SINGLE_ATTEMPT,
            "circuit": {"consecutive_failures": 1, "cooldown": 60},
        },
        "providers": {
            "openai": {"type": "openai", "api_key": API_KEY, "base_url": upstream_url + "/v1"}
        },
        "models": {
            "gpt-4o": {"deployments": [{"provider": "openai", "model": "gpt-4o"}]},
            "gpt-4o-mini": {"deployments": [{"provider": "openai", "model": "gpt-4o-mini"}]},
        },
        **sections,
    }


@pytest.fixture
def serve() -> Iterator[Callable[[dict[str, Any]], str]]:
    """Start a gateway for a config on a free port; returns its root URL."""
    with ExitStack() as stack:

        def start(cfg: dict[str, Any]) -> str:
            return stack.enter_context(ServerThread(create_app(cfg))).url

        yield start


def test_ready_gateway_tells_anyone_only_that_it_is_ready(serve, openai_emu, tmp_path):
    url = serve(config(openai_emu.url, tmp_path))
    resp = httpx.get(url + "/health/ready")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ready"}


def test_master_key_gets_every_check_in_detail(serve, openai_emu, tmp_path):
    url = serve(config(openai_emu.url, tmp_path))
    body = httpx.get(url + "/health/ready", headers=MASTER).json()
    assert body["status"] == "ready" and body["reasons"] == [] and body["warnings"] == []
    checks = body["checks"]
    assert checks["draining"] is False
    assert checks["database"]["ok"] is True and checks["database"]["error"] is None
    assert "redis" not in checks  # not configured, not checked
    assert checks["models"] == {"gpt-4o": 1, "gpt-4o-mini": 1}
    assert checks["open_circuits"] == {}
    assert checks["ledger"]["running"] is True and checks["ledger"]["backlog"] == 0


def test_a_wrong_key_gets_the_public_answer_not_a_401(serve, openai_emu, tmp_path):
    url = serve(config(openai_emu.url, tmp_path))
    resp = httpx.get(url + "/health/ready", headers={"authorization": "Bearer sk-wrong"})
    assert resp.status_code == 200 and resp.json() == {"status": "ready"}


def open_circuit(url: str, model: str) -> None:
    resp = httpx.post(
        url + "/v1/chat/completions",
        json={"model": model, "messages": HELLO},
        headers=MASTER,
        timeout=10,
    )
    assert resp.status_code >= 500


def test_one_model_with_every_circuit_open_is_a_warning_not_a_reason_to_leave(serve, tmp_path):
    # Every replica sees the same upstream: were this 503, all would leave the load balancer
    # at once and the models that work would go down with it.
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: the attempt fails, circuit opens
    url = serve(config(dead, tmp_path))
    open_circuit(url, "gpt-4o")

    public = httpx.get(url + "/health/ready")
    assert public.status_code == 200 and public.json() == {"status": "ready"}
    detailed = httpx.get(url + "/health/ready", headers=MASTER).json()
    assert detailed["checks"]["models"] == {"gpt-4o": 0, "gpt-4o-mini": 1}
    assert detailed["checks"]["open_circuits"] == {"openai/gpt-4o": "upstream_unreachable"}
    assert detailed["warnings"] == ["model 'gpt-4o': every deployment's circuit is open"]


def test_no_servable_model_at_all_makes_the_gateway_not_ready(serve, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    url = serve(config(dead, tmp_path))
    open_circuit(url, "gpt-4o")
    open_circuit(url, "gpt-4o-mini")

    public = httpx.get(url + "/health/ready")
    assert public.status_code == 503
    assert public.json() == {"status": "not ready", "failing": ["models"]}  # no model names
    detailed = httpx.get(url + "/health/ready", headers=MASTER).json()
    assert detailed["checks"]["models"] == {"gpt-4o": 0, "gpt-4o-mini": 0}
    assert detailed["reasons"] == ["no model can be served: every deployment's circuit is open"]


def test_an_unreachable_database_makes_the_gateway_not_ready_without_showing_its_password(
    serve, openai_emu, tmp_path
):
    ledger = {
        "url": f"postgresql+asyncpg://gateway:pw-do-not-show@127.0.0.1:{free_port()}/ledger",
        "migrate": False,  # else it would refuse to start at all
    }
    url = serve(config(openai_emu.url, tmp_path, ledger=ledger))
    public = httpx.get(url + "/health/ready", timeout=10)
    assert public.status_code == 503
    assert public.json() == {"status": "not ready", "failing": ["database"]}
    detailed = httpx.get(url + "/health/ready", headers=MASTER, timeout=10)
    assert detailed.json()["checks"]["database"]["ok"] is False
    assert "pw-do-not-show" not in detailed.text


def test_redis_is_checked_when_configured(serve, openai_emu, tmp_path, redis_url):
    url = serve(config(openai_emu.url, tmp_path, redis={"url": redis_url}))
    body = httpx.get(url + "/health/ready", headers=MASTER).json()
    assert body["status"] == "ready" and body["checks"]["redis"]["ok"] is True

    gone = serve(
        config(openai_emu.url, tmp_path, redis={"url": f"redis://127.0.0.1:{free_port()}/0"})
    )
    resp = httpx.get(gone + "/health/ready", timeout=10)
    assert resp.status_code == 503 and resp.json()["failing"] == ["redis"]


async def test_a_probe_storm_pings_once_per_cache_period():
    pings = 0

    async def ping() -> None:
        nonlocal pings
        pings += 1
        await asyncio.sleep(0.05)

    cached = CachedPing(ping, ttl=1.0, timeout=1.0)
    started = time.monotonic()
    while time.monotonic() - started < 0.5:
        results = await asyncio.gather(*(cached.check() for _ in range(50)))
        assert all(r.error is None for r in results)
    assert pings == 1


async def test_a_ping_that_hangs_is_reported_after_its_timeout():
    async def hang() -> None:
        await asyncio.sleep(30)

    cached = CachedPing(hang, ttl=1.0, timeout=0.2)
    started = time.monotonic()
    result = await cached.check()
    assert time.monotonic() - started < 2
    assert result.error == "no answer within 0.2s"
