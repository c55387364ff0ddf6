"""Prometheus /metrics, scraped from a running gateway after real requests: successes,
an upstream failure answered by a fallback, refusals by a key's rate limit and budget, an
open circuit; parsed with prometheus_client's own parser."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.server import create_app
from tests.conftest import GatewayFactory
from tests.emulators.common import Fault
from tests.emulators.openai_api import API_KEY, OpenAIEmulator
from tests.harness import ServerThread, free_port
from tests.keys_helpers import MASTER_KEY, Admin, chat, gateway_config, server_root

Samples = list[tuple[str, dict[str, str], float]]


def scrape(base_url: str, key: str | None = None) -> Samples:
    """Every sample /metrics shows, as (name, labels, value)."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    response = httpx.get(server_root(base_url) + "/metrics", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    ]


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 if none)."""
    return sum(
        v
        for n, have, v in samples
        if n == name and all(have.get(k) == want for k, want in labels.items())
    )


@pytest.fixture(scope="module")
def proxy(
    openai_upstream: OpenAIEmulator,
    start_gateway: GatewayFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    config = gateway_config(openai_upstream.url, tmp_path_factory.mktemp("metrics") / "ledger.db")
    config["models"]["gpt-4o"]["fallbacks"] = ["gpt-4o-mini"]
    return start_gateway(config)


@pytest.fixture(scope="module")
def admin(proxy: str) -> Admin:
    return Admin(proxy)


def test_successful_requests_count_tokens_and_spend_for_their_key(proxy, admin, openai_emu):
    team = admin.create_team(name="metrics-team")
    key = admin.create_key(name="metrics-ok", team=team["id"])
    answers = [chat(proxy, key["key"]) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]

    samples = scrape(proxy)
    mine = {"key": key["id"], "team": team["id"], "model": "gpt-4o", "provider": "openai"}
    assert value(samples, "gateway_requests_total", model="gpt-4o", status="200") >= 3
    prompt = sum(a.json()["usage"]["prompt_tokens"] for a in answers)
    completion = sum(a.json()["usage"]["completion_tokens"] for a in answers)
    assert value(samples, "gateway_tokens_total", kind="prompt", **mine) == prompt
    assert value(samples, "gateway_tokens_total", kind="completion", **mine) == completion
    spent = sum(Decimal(a.headers["x-gateway-cost"]) for a in answers)
    assert value(samples, "gateway_spend_usd_total", **mine) == pytest.approx(float(spent))
    latency = value(samples, "gateway_request_duration_seconds_count", model="gpt-4o")
    assert latency >= 3
    assert value(samples, "gateway_overhead_seconds_count", operation="chat") >= 3
    assert (
        value(
            samples,
            "gateway_upstream_attempts_total",
            deployment="openai/gpt-4o",
            outcome="success",
        )
        >= 3
    )


def test_an_upstream_failure_counts_the_failed_attempt_and_the_fallback(proxy, openai_emu):
    before = scrape(proxy, MASTER_KEY)
    openai_emu.fail_next(Fault(status=500, body=b'{"error": {"message": "down"}}'))
    answer = chat(proxy, MASTER_KEY)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-gateway-fallback-used"] == "true"
    after = scrape(proxy, MASTER_KEY)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    failed = [
        labels
        for name, labels, v in after
        if name == "gateway_upstream_attempts_total"
        and labels["deployment"] == "openai/gpt-4o"
        and labels["outcome"] != "success"
        and v > value(before, name, **labels)
    ]
    assert len(failed) == 1 and failed[0]["provider"] == "openai"
    assert delta("gateway_upstream_attempts_total", deployment="openai/gpt-4o-mini") == 1
    assert delta("gateway_fallbacks_total", model="gpt-4o") == 1
    assert delta("gateway_requests_total", model="gpt-4o", status="200") == 1
    assert delta("gateway_upstream_attempt_duration_seconds_count") == 2


def test_a_rate_limit_refusal_is_counted_for_its_key(proxy, admin, openai_emu):
    key = admin.create_key(name="metrics-rpm", rpm=1)
    assert chat(proxy, key["key"]).status_code == 200
    refused = chat(proxy, key["key"])
    assert refused.status_code == 429
    samples = scrape(proxy)
    assert value(samples, "gateway_limit_rejections_total", reason="rate_limit", key=key["id"]) == 1
    assert value(samples, "gateway_limit_rejections_total", reason="budget", key=key["id"]) == 0
    assert value(samples, "gateway_errors_total", model="gpt-4o", type="rate_limit_exceeded") >= 1
    assert value(samples, "gateway_requests_total", model="gpt-4o", status="429") >= 1


def test_a_budget_refusal_is_counted_for_its_key(proxy, admin, openai_emu):
    key = admin.create_key(name="metrics-budget", budget_usd="0.0000001")
    refused = chat(proxy, key["key"])
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "budget_exceeded"
    samples = scrape(proxy)
    assert value(samples, "gateway_limit_rejections_total", reason="budget", key=key["id"]) == 1
    assert value(samples, "gateway_errors_total", type="budget_exceeded") >= 1


def test_requests_refused_before_the_engine_are_counted_too(proxy):
    before = value(scrape(proxy), "gateway_requests_total", status="401")
    response = httpx.post(
        proxy + "/chat/completions",
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": "Bearer sk-gw-not-a-key"},
    )
    assert response.status_code == 401
    assert value(scrape(proxy), "gateway_requests_total", status="401") == before + 1


@pytest.mark.parametrize(
    "path",
    [
        "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
        "/openai/v1/embeddings",
        "/v1/fim/completions",
    ],
)
def test_refusals_on_the_azure_and_mistral_routes_are_counted_too(proxy, path):
    root = proxy.removesuffix("/v1")
    before = value(scrape(proxy), "gateway_requests_total", status="401")
    response = httpx.post(
        root + path,
        json={"model": "gpt-4o", "prompt": "def f(", "input": "hi", "messages": []},
        headers={"api-key": "sk-gw-not-a-key"},
    )
    assert response.status_code == 401
    assert value(scrape(proxy), "gateway_requests_total", status="401") == before + 1


def test_unknown_model_names_share_one_label_value(proxy, openai_emu):
    for name in ("no-such-model-1", "no-such-model-2"):
        assert chat(proxy, MASTER_KEY, model=name).status_code == 404
    samples = scrape(proxy)
    models = {labels["model"] for name, labels, _ in samples if name == "gateway_requests_total"}
    assert "other" in models
    assert not any(m.startswith("no-such-model") for m in models)


def test_ledger_backlog_and_written_records_are_exported(proxy, openai_emu):
    assert chat(proxy, MASTER_KEY).status_code == 200
    deadline = time.monotonic() + 10
    while True:
        samples = scrape(proxy)
        if value(samples, "gateway_ledger_written_records_total") >= 1:
            break
        assert time.monotonic() < deadline, "the ledger's writes never showed in /metrics"
        time.sleep(0.1)
    assert any(name == "gateway_ledger_backlog_records" for name, _, _ in samples)
    assert value(samples, "gateway_ledger_dropped_records_total") == 0


def test_the_circuit_of_an_unreachable_deployment_shows_open(
    start_gateway: GatewayFactory, openai_upstream: OpenAIEmulator
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    config: dict[str, Any] = {
        "ledger": {"enabled": False},
        "routing": {
            "retries": {"attempts_per_deployment": 1},
            "circuit": {"consecutive_failures": 1, "cooldown": 60},
        },
        "providers": {
            "dead": {"type": "openai", "api_key": "x", "base_url": dead},
            "live": {"type": "openai", "api_key": API_KEY, "base_url": openai_upstream.url + "/v1"},
        },
        "models": {
            "m": {"deployments": [{"provider": "dead", "model": "gpt-4o"}]},
            "n": {"deployments": [{"provider": "live", "model": "gpt-4o"}]},
        },
    }
    url = start_gateway(config)
    samples = scrape(url)
    assert value(samples, "gateway_circuit_state", deployment="dead/gpt-4o") == 0
    assert chat(url, "unused", model="m").status_code == 502
    samples = scrape(url)
    assert value(samples, "gateway_circuit_state", deployment="dead/gpt-4o", provider="dead") == 2
    assert value(samples, "gateway_circuit_state", deployment="live/gpt-4o") == 0
    assert value(samples, "gateway_errors_total", model="m", type="upstream_unreachable") == 1


def test_metrics_can_require_an_admin_key(
    start_gateway: GatewayFactory, openai_upstream: OpenAIEmulator, tmp_path: Path
) -> None:
    url = start_gateway(
        gateway_config(openai_upstream.url, tmp_path / "ledger.db", metrics={"require_auth": True})
    )
    root = server_root(url)
    assert httpx.get(root + "/metrics").status_code == 401
    plain = Admin(url).create_key(name="not-admin")
    refused = httpx.get(root + "/metrics", headers={"authorization": f"Bearer {plain['key']}"})
    assert refused.status_code == 403
    assert plain["key"] not in refused.text
    assert scrape(url, MASTER_KEY)


def test_metrics_can_be_switched_off(start_gateway: GatewayFactory) -> None:
    url = start_gateway({"ledger": {"enabled": False}, "metrics": {"enabled": False}})
    assert httpx.get(server_root(url) + "/metrics").status_code == 404


def test_keys_can_be_left_out_of_the_labels(
    start_gateway: GatewayFactory, openai_upstream: OpenAIEmulator, tmp_path: Path
) -> None:
    url = start_gateway(
        gateway_config(openai_upstream.url, tmp_path / "ledger.db", metrics={"per_key": False})
    )
    key = Admin(url).create_key(name="unlabelled")
    assert chat(url, key["key"]).status_code == 200
    samples = scrape(url)
    assert value(samples, "gateway_tokens_total", kind="prompt", model="gpt-4o") > 0
    assert {labels["key"] for name, labels, _ in samples if name == "gateway_tokens_total"} == {""}


def test_a_reload_leaves_metrics_settings_to_a_restart(
    openai_upstream: OpenAIEmulator, tmp_path: Path
) -> None:
    config = gateway_config(openai_upstream.url, tmp_path / "ledger.db")
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    with ServerThread(create_app(str(path))) as server:
        config["metrics"] = {"require_auth": True}
        config["tracing"] = {"sample_ratio": 0.5}
        path.write_text(yaml.safe_dump(config))
        reload = httpx.post(
            server.url + "/admin/reload", headers={"authorization": f"Bearer {MASTER_KEY}"}
        )
        assert reload.status_code == 200, reload.text
        assert reload.json()["restart_required"] == ["metrics", "tracing"]
        assert httpx.get(server.url + "/metrics").status_code == 200  # as it started
