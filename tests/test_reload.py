"""Reloading the config file (``POST /admin/reload``) swaps models, deployments and prices in
the running gateway without failing a request; an invalid file changes nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.server import create_app
from tests.harness import ServerThread, free_port
from tests.lifecycle_helpers import PacedUpstream, Seen, chat, ledger_records

MASTER_KEY = "sk-master-reload"
MASTER = {"authorization": f"Bearer {MASTER_KEY}"}
UPSTREAM_KEY = "sk-upstream"


def gateway_config(
    upstream_url: str, ledger_url: str, *, price: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    deployment: dict[str, Any] = {"provider": "upstream", "model": "gpt-4o"}
    if price is not None:
        deployment["price"] = price
    return {
        "auth": {"master_key": MASTER_KEY},
        "ledger": {"url": ledger_url},
        "routing": {"retries": {"attempts_per_deployment": 1}},
        "providers": {
            "upstream": {"type": "openai", "api_key": UPSTREAM_KEY, "base_url": upstream_url}
        },
        "models": {"gpt-4o": {"deployments": [deployment]}},
        **extra,
    }


class Site:
    """A gateway built from a config file, two upstreams to move it between, its ledger."""

    def __init__(self, folder: Path, a: PacedUpstream, b: PacedUpstream) -> None:
        self.a = a
        self.b = b
        self.path = folder / "gateway.yaml"
        self.ledger_url = f"sqlite+aiosqlite:///{folder / 'ledger.db'}"
        self.url = ""

    def write(self, config: dict[str, Any] | str) -> None:
        self.path.write_text(config if isinstance(config, str) else json.dumps(config))

    def config(self, upstream: PacedUpstream, **kwargs: Any) -> dict[str, Any]:
        return gateway_config(upstream.url + "/v1", self.ledger_url, **kwargs)

    def reload(self, headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.post(
            self.url + "/admin/reload", headers=MASTER if headers is None else headers
        )


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    a, b = PacedUpstream("A", pieces=10, pace=0.04), PacedUpstream("B", pieces=10, pace=0.04)
    with ServerThread(a.app) as sa, ServerThread(b.app) as sb:
        a.url, b.url = sa.url, sb.url
        s = Site(tmp_path, a, b)
        s.write(s.config(a))
        with ServerThread(create_app(str(s.path))) as gateway:
            s.url = gateway.url
            yield s


async def test_reload_under_load_fails_no_request_and_moves_new_ones(site):
    seen: list[Seen] = []
    stop = asyncio.Event()

    async def client_loop(client: httpx.AsyncClient, i: int) -> None:
        n = 0
        while not stop.is_set():
            seen.append(await chat(client, site.url, stream=(i + n) % 2 == 0, headers=MASTER))
            n += 1

    async with httpx.AsyncClient(timeout=20) as client:
        loops = [asyncio.create_task(client_loop(client, i)) for i in range(8)]
        await asyncio.sleep(0.6)  # streams from A in flight
        site.write(site.config(site.b))
        reloaded = await asyncio.to_thread(site.reload)
        after_reload = len(seen)
        await asyncio.sleep(0.6)
        stop.set()
        await asyncio.gather(*loops)
        a_calls = site.a.arrived
        probes = [await chat(client, site.url, stream=s, headers=MASTER) for s in (False, True)]

    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.json()["status"] == "reloaded"
    # Every call, before, during and after the swap, got a complete answer.
    assert all(s.status == 200 and s.complete for s in seen), [s for s in seen if not s.complete]
    from_a = [s for s in seen if "[A]" in s.text]
    from_b = [s for s in seen if "[B]" in s.text]
    assert len(from_a) + len(from_b) == len(seen) > after_reload
    assert from_a and from_b
    # Streams that began on A finished on A; after the reload nothing new went there.
    assert site.a.finished == site.a.arrived == a_calls
    assert all("[B]" in p.text and p.complete for p in probes)
    # One ledger record per call.
    await asyncio.sleep(0.5)  # the writer's flush interval
    records = await ledger_records(site.ledger_url)
    ids = {s.request_id for s in [*seen, *probes]}
    assert {r.request_id for r in records} == ids and len(records) == len(ids)


def test_invalid_configs_are_rejected_with_their_problems_and_the_old_one_keeps_serving(site):
    async def one() -> Seen:
        async with httpx.AsyncClient(timeout=10) as client:
            return await chat(client, site.url, stream=False, headers=MASTER)

    bad_files: list[tuple[dict[str, Any] | str, str]] = [
        ("models: {gpt-4o: [unclosed", "not valid YAML"),
        (
            {**site.config(site.b), "providers": {"upstream": {"type": "openia"}}},
            "unknown provider type 'openia'",
        ),
        (
            {
                **site.config(site.b),
                "models": {"gpt-4o": {"deployments": [{"provider": "nope", "model": "x"}]}},
            },
            "no provider named 'nope'",
        ),
        ({**site.config(site.b), "routing": {"strategy": "fastest"}}, "routing.strategy"),
    ]
    for content, problem in bad_files:
        site.write(content)
        resp = site.reload()
        assert resp.status_code == 422, resp.text
        body = resp.json()
        assert body["status"] == "rejected" and body["error"]["code"] == "invalid_config"
        assert any(problem in e for e in body["errors"]), body["errors"]
        assert UPSTREAM_KEY not in resp.text
        answer = asyncio.run(one())
        assert answer.status == 200 and "[A]" in answer.text


def test_new_prices_apply_to_new_requests(site):
    site.write(site.config(site.a, price={"input": 1, "output": 2}))
    assert site.reload().status_code == 200

    def cost() -> Decimal:
        resp = httpx.post(
            site.url + "/v1/chat/completions",
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
            headers=MASTER,
        )
        return Decimal(resp.headers["x-gateway-cost"])

    # 1 prompt token and 10 completion tokens, at USD per 1M tokens
    assert cost() == Decimal(1 * 1 + 10 * 2) / 10**6
    site.write(site.config(site.a, price={"input": 100, "output": 200}))
    assert site.reload().status_code == 200
    assert cost() == Decimal(1 * 100 + 10 * 200) / 10**6


def test_settings_that_need_a_restart_are_named_and_keep_their_running_value(site):
    config = site.config(site.b)
    config["server"] = {"port": free_port()}
    config["ledger"] = {"url": "sqlite+aiosqlite:///./elsewhere.db"}
    site.write(config)
    resp = site.reload()
    assert resp.status_code == 200
    assert resp.json()["restart_required"] == ["server", "ledger"]
    # The rest applied; still on the same port, writing the same ledger.
    answer = httpx.post(
        site.url + "/v1/chat/completions",
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
        headers=MASTER,
    )
    assert "[B]" in answer.text
    assert not Path("elsewhere.db").exists()


def test_reload_reports_what_changed(site):
    config = site.config(site.a)
    config["providers"]["other"] = {
        **config["providers"]["upstream"],
        "base_url": site.b.url + "/v1",
    }
    config["models"]["gpt-4o-mini"] = {
        "deployments": [{"provider": "other", "model": "gpt-4o-mini"}]
    }
    site.write(config)
    body = site.reload().json()
    assert body["models_added"] == ["gpt-4o-mini"] and body["models_removed"] == []
    assert body["deployments_added"] == ["other/gpt-4o-mini"]
    models = httpx.get(site.url + "/v1/models", headers=MASTER).json()["data"]
    assert {m["id"] for m in models} == {"gpt-4o", "gpt-4o-mini"}


def test_circuit_state_stays_with_an_unchanged_deployment_and_goes_with_a_removed_one(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    ledger_url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    config = gateway_config(dead, ledger_url)
    config["routing"]["circuit"] = {"consecutive_failures": 1, "cooldown": 60}
    path = tmp_path / "gateway.yaml"
    path.write_text(json.dumps(config))
    app = create_app(str(path))
    with ServerThread(app) as gateway:
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
        httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=MASTER, timeout=10)
        config["models"]["gpt-4o"]["fallbacks"] = []  # a change, same deployment id
        path.write_text(json.dumps(config))
        assert httpx.post(gateway.url + "/admin/reload", headers=MASTER).status_code == 200
        ready = httpx.get(gateway.url + "/health/ready", headers=MASTER).json()
        assert ready["checks"]["models"] == {"gpt-4o": 0}
        assert list(ready["checks"]["open_circuits"]) == ["upstream/gpt-4o"]

        # Moved to another upstream model: a new deployment id, a fresh circuit, the old
        # deployment's state forgotten.
        config["models"]["gpt-4o"]["deployments"][0]["model"] = "gpt-4o-2024-08-06"
        path.write_text(json.dumps(config))
        assert httpx.post(gateway.url + "/admin/reload", headers=MASTER).status_code == 200
        ready = httpx.get(gateway.url + "/health/ready", headers=MASTER).json()
        assert ready["checks"]["models"] == {"gpt-4o": 1}
        assert ready["checks"]["open_circuits"] == {}
        assert "upstream/gpt-4o" not in app.state.engine.health._health


def test_reload_needs_the_master_key(site):
    assert site.reload(headers={}).status_code == 401
    assert site.reload(headers={"authorization": "Bearer sk-wrong"}).status_code == 401


def test_without_a_master_key_reload_over_http_is_refused(tmp_path):
    upstream_url = f"http://127.0.0.1:{free_port()}/v1"
    config = gateway_config(upstream_url, f"sqlite+aiosqlite:///{tmp_path / 'l.db'}")
    del config["auth"]
    path = tmp_path / "gateway.yaml"
    path.write_text(json.dumps(config))
    with ServerThread(create_app(str(path))) as gateway:
        resp = httpx.post(gateway.url + "/admin/reload")
    assert resp.status_code == 403 and "SIGHUP" in resp.json()["error"]["message"]


def test_a_gateway_started_without_a_file_has_nothing_to_reload(monkeypatch):
    monkeypatch.delenv("GATEWAY_CONFIG", raising=False)
    monkeypatch.setenv("GATEWAY_MASTER_KEY", MASTER_KEY)
    with ServerThread(create_app()) as gateway:
        resp = httpx.post(gateway.url + "/admin/reload", headers=MASTER)
    assert resp.status_code == 409 and resp.json()["error"]["code"] == "no_config_file"
