"""Virtual keys and teams through the real proxy: the admin API (who may call it, what it
shows, how changes take effect) and what a key may reach — its models and its regions."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.server import create_app
from tests.conftest import GatewayFactory
from tests.emulators.faulty import FaultyUpstream
from tests.emulators.openai_api import API_KEY, OpenAIEmulator
from tests.harness import ServerThread
from tests.keys_helpers import (
    MASTER_KEY,
    Admin,
    chat,
    gateway_config,
    key_records,
    server_root,
)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys") / "ledger.db"


@pytest.fixture(scope="module")
def proxy(openai_upstream: OpenAIEmulator, start_gateway: GatewayFactory, db: Path) -> str:
    return start_gateway(gateway_config(openai_upstream.url, db))


@pytest.fixture(scope="module")
def admin(proxy: str) -> Admin:
    return Admin(proxy)


def admin_get(proxy: str, path: str, key: str | None = MASTER_KEY) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.get(server_root(proxy) + path, headers=headers, timeout=10)


# --- the admin API ------------------------------------------------------------------------


def test_create_returns_the_plaintext_once(proxy, admin):
    created = admin.create_key(name="once")
    plaintext = created["key"]
    assert plaintext.startswith("sk-gw-") and len(plaintext) > 40
    shown = admin_get(proxy, f"/admin/keys/{created['id']}")
    assert shown.status_code == 200
    assert "key" not in shown.json() and plaintext not in shown.text


def test_list_shows_the_prefix_only_never_the_hash_or_plaintext(proxy, admin):
    created = admin.create_key(name="listed")
    plaintext = created["key"]
    listing = admin_get(proxy, "/admin/keys")
    assert listing.status_code == 200
    (entry,) = [k for k in listing.json()["data"] if k["id"] == created["id"]]
    assert entry["prefix"] == plaintext[:12]
    assert "key" not in entry and "key_hash" not in entry
    assert plaintext not in listing.text
    assert hashlib.sha256(plaintext.encode()).hexdigest() not in listing.text


def test_new_key_works_for_chat(proxy, admin, openai_emu):
    key = admin.create_key(name="works")["key"]
    response = chat(proxy, key)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "echo: hello"


def test_non_admin_key_gets_403_on_admin_routes(proxy, admin):
    key = admin.create_key(name="plain")["key"]
    for response in (
        admin_get(proxy, "/admin/keys", key),
        admin_get(proxy, "/admin/teams", key),
        httpx.post(
            server_root(proxy) + "/admin/keys",
            json={"name": "escalate", "admin": True},
            headers={"authorization": f"Bearer {key}"},
        ),
    ):
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "admin_required"


def test_admin_key_may_use_the_admin_api(proxy, admin):
    key = admin.create_key(name="ops", admin=True)["key"]
    created = Admin(proxy, key).create_key(name="made-by-an-admin-key")
    assert created["key"].startswith("sk-gw-")


def test_admin_routes_without_a_key_get_401(proxy):
    response = admin_get(proxy, "/admin/keys", key=None)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_api_key"


def test_invalid_field_gets_400_naming_it(proxy):
    for body, field in (
        ({"name": "x", "rpm": 0}, "rpm"),
        ({"name": "x", "budget_period": "yearly"}, "budget_period"),
        ({"name": "x", "budget_usd": "lots"}, "budget_usd"),
        ({"name": "x", "colour": "red"}, "colour"),
        ({"name": "x", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
    ):
        response = httpx.post(
            server_root(proxy) + "/admin/keys",
            json=body,
            headers={"authorization": f"Bearer {MASTER_KEY}"},
        )
        assert response.status_code == 400, body
        error = response.json()["error"]
        assert error["param"] == field and field in error["message"]


def test_unknown_key_id_gets_404(proxy):
    response = admin_get(proxy, "/admin/keys/no-such-key")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "key_not_found"


def test_key_for_an_unknown_team_gets_404_naming_the_team(proxy, admin):
    response = admin.client.post("/admin/keys", json={"name": "x", "team": "nobody"})
    assert response.status_code == 404
    assert response.json()["error"] == {
        "message": "no team with id or name 'nobody'",
        "type": "invalid_request_error",
        "param": "team",
        "code": "team_not_found",
    }


def test_budget_is_a_decimal_string_from_a_number_or_a_string(admin):
    assert admin.create_key(budget_usd=0.1)["budget_usd"] == "0.1"
    assert admin.create_key(budget_usd="12.345")["budget_usd"] == "12.345"


def test_team_can_be_named_instead_of_its_id_and_lists_its_keys(proxy, admin):
    team = admin.create_team(name="research", budget_usd="100", budget_period="monthly")
    key = admin.create_key(name="r1", team="research")
    assert key["team_id"] == team["id"]
    listed = admin_get(proxy, "/admin/keys?team=research").json()["data"]
    assert [k["id"] for k in listed] == [key["id"]]


def test_team_update_changes_its_limits(proxy, admin):
    team = admin.create_team(name="support", rpm=100)
    response = admin.client.patch(f"/admin/teams/{team['id']}", json={"rpm": None, "tpm": 5000})
    assert response.status_code == 200, response.text
    assert (response.json()["rpm"], response.json()["tpm"]) == (None, 5000)
    shown = admin_get(proxy, "/admin/teams/support").json()
    assert shown["tpm"] == 5000 and shown["spend"]["budget_usd"] is None


def test_team_names_are_unique(admin):
    admin.create_team(name="unique-team")
    response = admin.client.post("/admin/teams", json={"name": "unique-team"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "name"


async def test_key_details_carry_the_current_periods_spend(proxy, admin, db, openai_emu):
    created = admin.create_key(name="spender", budget_usd="1", budget_period="daily")
    assert chat(proxy, created["key"]).status_code == 200
    await key_records(db, created["id"])  # the request has ended and been settled
    spend = admin_get(proxy, f"/admin/keys/{created['id']}").json()["spend"]
    assert spend["period"] == "daily" and spend["since"].startswith(
        datetime.now(UTC).strftime("%Y-%m-%d")
    )
    # The emulator's answer: 1 prompt token x $2.50/1M + 2 completion tokens x $10.00/1M.
    assert spend["spent_usd"] == "0.0000225"
    assert Decimal(spend["remaining_usd"]) == Decimal("1") - Decimal("0.0000225")


def test_admin_api_answers_503_when_the_ledger_is_disabled(
    openai_upstream: OpenAIEmulator, start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    config = gateway_config(openai_upstream.url, tmp_path / "unused.db")
    config["ledger"] = {"enabled": False}
    url = start_gateway(config)
    response = admin_get(url, "/admin/keys")
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "key_store_disabled" and "ledger.enabled" in error["message"]


# --- what a key may do, and changes to it -------------------------------------------------


def test_revoked_key_gets_401_on_this_replica_at_once(proxy, admin, openai_emu):
    created = admin.create_key(name="to-revoke")
    assert chat(proxy, created["key"]).status_code == 200  # now cached as valid
    admin.revoke(created["id"])
    response = chat(proxy, created["key"])
    assert response.status_code == 401
    assert "revoked" in response.json()["error"]["message"]


def test_rotated_key_old_plaintext_gets_401_and_new_one_works(proxy, admin, openai_emu):
    created = admin.create_key(name="to-rotate")
    assert chat(proxy, created["key"]).status_code == 200
    rotated = admin.rotate(created["id"])
    assert rotated["id"] == created["id"] and rotated["key"] != created["key"]
    assert chat(proxy, created["key"]).status_code == 401
    assert chat(proxy, rotated["key"]).status_code == 200


def test_expired_key_gets_401_saying_it_expired(proxy, admin, openai_emu):
    created = admin.create_key(name="short-lived", expires_in_days=1)
    assert chat(proxy, created["key"]).status_code == 200
    yesterday = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    admin.update_key(created["id"], expires_at=yesterday)
    response = chat(proxy, created["key"])
    assert response.status_code == 401
    assert "expired" in response.json()["error"]["message"]


def test_disallowed_model_gets_403_naming_the_allowed_ones(proxy, admin, openai_emu):
    key = admin.create_key(name="4o-only", allowed_models=["gpt-4o*"])["key"]
    response = chat(proxy, key, model="text-embedding-3-small")
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "model_not_allowed" and error["param"] == "model"
    assert error["message"].endswith("allowed: gpt-4o, gpt-4o-mini")
    assert openai_emu.requests == []


def test_allowed_models_change_applies_at_once(proxy, admin, openai_emu):
    created = admin.create_key(name="narrowed")
    assert chat(proxy, created["key"], model="gpt-4o-mini").status_code == 200
    admin.update_key(created["id"], allowed_models=["gpt-4o"])
    assert chat(proxy, created["key"], model="gpt-4o-mini").status_code == 403


# --- regions ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eu_upstream() -> Iterator[OpenAIEmulator]:
    emulator = OpenAIEmulator()
    with ServerThread(emulator.app) as server:
        emulator.url = server.url
        yield emulator


@pytest.fixture
def upstreams(
    openai_emu: OpenAIEmulator, eu_upstream: OpenAIEmulator
) -> tuple[OpenAIEmulator, OpenAIEmulator]:
    """The us upstream (the session's emulator) and the eu one, both with no requests."""
    eu_upstream.reset()
    return openai_emu, eu_upstream


@pytest.fixture(scope="module")
def regional(
    openai_upstream: OpenAIEmulator,
    eu_upstream: OpenAIEmulator,
    start_gateway: GatewayFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    """gpt-4o is served in us and falls back to eu; us-only is served (and backed up) in us."""
    config: dict[str, Any] = gateway_config(
        openai_upstream.url, tmp_path_factory.mktemp("regions") / "ledger.db"
    )

    def provider(url: str, region: str) -> dict[str, Any]:
        return {"type": "openai", "api_key": API_KEY, "base_url": url + "/v1", "region": region}

    config["providers"] = {
        "us": provider(openai_upstream.url, "us"),
        "eu": provider(eu_upstream.url, "eu"),
    }

    def model(provider: str, fallbacks: list[str]) -> dict[str, Any]:
        return {"deployments": [{"provider": provider, "model": "gpt-4o"}], "fallbacks": fallbacks}

    config["models"] = {
        "gpt-4o": model("us", ["gpt-4o-eu"]),
        "gpt-4o-eu": model("eu", []),
        "us-only": model("us", ["us-only-backup"]),
        "us-only-backup": model("us", []),
    }
    return start_gateway(config)


def test_eu_key_skips_the_us_primary_and_is_served_by_the_eu_fallback(regional, upstreams):
    us, eu = upstreams
    key = Admin(regional).create_key(name="eu", regions=["eu"])["key"]
    response = chat(regional, key)
    assert response.status_code == 200, response.text
    assert response.headers["x-gateway-provider"] == "eu"
    assert (len(us.requests), len(eu.requests)) == (0, 1)


def test_eu_key_gets_403_for_a_model_served_only_in_us(regional, upstreams):
    us, eu = upstreams
    key = Admin(regional).create_key(name="eu", regions=["eu"])["key"]
    response = chat(regional, key, model="us-only")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "region_not_allowed"
    assert us.requests == [] and eu.requests == []


def test_regions_header_cannot_widen_a_keys_regions(regional, upstreams):
    us, eu = upstreams
    key = Admin(regional).create_key(name="eu", regions=["eu"])["key"]
    response = chat(regional, key, headers={"x-gateway-regions": "us"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "region_not_allowed"
    assert us.requests == [] and eu.requests == []


def test_regions_header_narrows_a_keys_regions(regional, upstreams):
    us, eu = upstreams
    key = Admin(regional).create_key(name="anywhere", regions=["eu", "us"])["key"]
    response = chat(regional, key, headers={"x-gateway-regions": "eu"})
    assert response.status_code == 200, response.text
    assert (len(us.requests), len(eu.requests)) == (0, 1)


# --- every model a Plan may reach ----------------------------------------------------------


@pytest.fixture(scope="module")
def faulty() -> Iterator[FaultyUpstream]:
    with FaultyUpstream() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def reaching(
    faulty: FaultyUpstream,
    openai_upstream: OpenAIEmulator,
    start_gateway: GatewayFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    """``small`` answers context_length_exceeded and has ``big`` as its context-window
    fallback; ``flaky`` always answers 503 and falls back to ``big``; ``big`` answers."""
    config = gateway_config(openai_upstream.url, tmp_path_factory.mktemp("reach") / "ledger.db")
    config["providers"] = {"faulty": {"type": "openai", "api_key": "x", "base_url": faulty.url}}

    def model(upstream: str, **options: Any) -> dict[str, Any]:
        return {"deployments": [{"provider": "faulty", "model": upstream}], **options}

    config["models"] = {
        "small": model("context-length#small", context_window_fallbacks=["big"]),
        "flaky": model("503-always#flaky", fallbacks=["big"]),
        "big": model("ok#big"),
    }
    return start_gateway(config)


@pytest.fixture
def up(faulty: FaultyUpstream) -> FaultyUpstream:
    faulty.reset()
    return faulty


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_context_window_fallback_a_key_may_not_use_is_never_reached(reaching, up, stream):
    key = Admin(reaching).create_key(name="small-only", allowed_models=["small"])["key"]
    response = chat(reaching, key, model="small", stream=stream)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "context_length_exceeded"
    assert len(up.attempts_for("context-length#small")) == 1
    assert up.attempts_for("ok#big") == []


def test_context_window_fallback_a_team_may_not_use_is_never_reached(reaching, up):
    admin = Admin(reaching)
    team = admin.create_team(name="small-team", allowed_models=["small"])
    key = admin.create_key(name="in-small-team", team=team["id"])["key"]
    response = chat(reaching, key, model="small")
    assert response.status_code == 400, response.text
    assert up.attempts_for("ok#big") == []


def test_context_window_fallback_a_key_may_use_answers(reaching, up):
    key = Admin(reaching).create_key(name="both", allowed_models=["small", "big"])["key"]
    response = chat(reaching, key, model="small")
    assert response.status_code == 200, response.text
    assert len(up.attempts_for("ok#big")) == 1


@pytest.mark.parametrize("per_request", [False, True], ids=["configured", "per-request"])
def test_fallback_a_key_may_not_use_is_dropped_not_refused(reaching, up, per_request):
    key = Admin(reaching).create_key(name="flaky-only", allowed_models=["flaky"])["key"]
    body: dict[str, Any] = {"fallbacks": ["big"]} if per_request else {}
    response = chat(reaching, key, model="flaky", **body)
    assert response.status_code == 503, response.text
    assert len(up.attempts_for("503-always#flaky")) == 1
    assert up.attempts_for("ok#big") == []


# --- wrong keys ---------------------------------------------------------------------------


def test_unknown_keys_past_the_limit_are_refused_without_a_database_lookup(
    openai_upstream: OpenAIEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = gateway_config(openai_upstream.url, tmp_path / "ledger.db")
    config["auth"] = {
        "master_key": MASTER_KEY,
        "failed_lookups_per_minute": 3,
        "key_cache_seconds": 0,  # every valid key is looked up again, each time
    }
    app = create_app(config)
    with ServerThread(app) as server:
        proxy = server.url + "/v1"
        good = Admin(proxy).create_key(name="good")["key"]
        assert chat(proxy, good).status_code == 200
        store = app.state.engine.keys
        lookups: list[str] = []
        find_key = store.find_key

        async def counted(token: str) -> Any:
            lookups.append(token)
            return await find_key(token)

        monkeypatch.setattr(store, "find_key", counted)
        answers = [chat(proxy, f"sk-gw-wrong-{i}") for i in range(5)]
        assert [a.status_code for a in answers] == [401, 401, 401, 429, 429]
        assert len(lookups) == 3  # the refused ones cost no query
        error = answers[-1].json()["error"]
        assert error["code"] == "too_many_failed_authentications"
        assert 1 <= int(answers[-1].headers["retry-after"]) <= 20
        # A key this process has seen valid still works from the throttled address.
        assert chat(proxy, good).status_code == 200
