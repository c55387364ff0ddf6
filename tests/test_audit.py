"""The audit trail through the real proxy: every admin act (admin API, dashboard, reload) is
appended with who, what, on what, the outcome and from where; the entries form a hash chain
that ``llm-gateway audit verify`` (and ``GET /admin/audit/verify``) check, and that breaks
when a row is edited or removed — on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from gateway.cli import app as cli_app
from gateway.governance.audit import AuditTrail, config_diff
from gateway.ledger.db import create_ledger_engine
from gateway.ledger.migrate import upgrade
from gateway.server import create_app
from tests.emulators.openai_api import API_KEY, OpenAIEmulator
from tests.harness import ServerThread
from tests.keys_helpers import MASTER_KEY, Admin, gateway_config, server_root
from tests.ledger_helpers import postgres, scratch_postgres

MASTER = {"authorization": f"Bearer {MASTER_KEY}"}


@pytest.fixture
def site(openai_upstream: OpenAIEmulator, tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """A gateway started from a config file: (its root URL, the file, the ledger)."""
    db = tmp_path / "ledger.db"
    path = tmp_path / "gateway.yaml"
    path.write_text(json.dumps(gateway_config(openai_upstream.url, db)))
    with ServerThread(create_app(str(path))) as server:
        yield server_root(server.url + "/v1"), path, db


def audit(root: str, key: str = MASTER_KEY, **params: Any) -> httpx.Response:
    return httpx.get(
        root + "/admin/audit",
        params=params,
        headers={"authorization": f"Bearer {key}"},
        timeout=10,
    )


def entries(root: str, **params: Any) -> list[dict[str, Any]]:
    response = audit(root, **params)
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def verify_cli(path: Path) -> Any:
    return CliRunner().invoke(cli_app, ["audit", "verify", "--config", str(path)])


# --- what is recorded -----------------------------------------------------------------------


def test_every_key_and_team_act_is_recorded_with_actor_target_outcome_and_source(site):
    root, _, _ = site
    admin = Admin(root + "/v1")
    team = admin.create_team(name="auditors")
    created = admin.create_key(name="audited", team=team["id"], rpm=5)
    admin.update_key(created["id"], rpm=7)
    rotated = admin.rotate(created["id"])
    admin.revoke(created["id"])
    httpx.patch(root + f"/admin/teams/{team['id']}", json={"rpm": 9}, headers=MASTER)
    refused = httpx.patch(root + "/admin/keys/nope", json={"rpm": 1}, headers=MASTER)
    assert refused.status_code == 404

    trail = entries(root)
    acts = [(e["action"], e["target"], e["outcome"]) for e in trail]
    assert acts == [
        ("team.create", team["id"], "ok"),
        ("key.create", created["id"], "ok"),
        ("key.update", created["id"], "ok"),
        ("key.rotate", created["id"], "ok"),
        ("key.revoke", created["id"], "ok"),
        ("team.update", team["id"], "ok"),
        ("key.update", "nope", "refused 404 key_not_found"),
    ]
    assert {e["actor"] for e in trail} == {"master"}
    assert {e["source"] for e in trail} == {"127.0.0.1"}
    assert trail[2]["detail"]["fields"] == {"rpm": 7}
    # No key plaintext, of the key made or of its rotation, is ever in the trail.
    text = audit(root).text + audit(root, format="csv").text
    assert created["key"] not in text and rotated["key"] not in text
    assert MASTER_KEY not in text


def test_reads_are_not_recorded_and_an_admin_key_acts_under_its_own_id(site):
    root, _, _ = site
    admin = Admin(root + "/v1")
    boss = admin.create_key(name="boss", admin=True)
    httpx.get(root + "/admin/keys", headers=MASTER)
    as_boss = Admin(root + "/v1", key=boss["key"])
    made = as_boss.create_key(name="made-by-boss")
    trail = entries(root)
    assert [e["action"] for e in trail] == ["key.create", "key.create"]
    assert trail[1]["actor"] == f"key:{boss['id']}"
    assert trail[1]["detail"]["actor_name"] == "boss"
    assert trail[1]["target"] == made["id"]
    # The trail itself is for the master key only.
    assert audit(root, key=boss["key"]).status_code == 403


def test_reload_is_recorded_with_a_diff_of_what_changed_and_secrets_masked(site):
    root, path, _ = site
    config = yaml.safe_load(path.read_text())
    config["providers"]["openai"]["api_key"] = "sk-new-upstream-secret"
    config["models"]["gpt-4o-2"] = config["models"]["gpt-4o"]
    path.write_text(json.dumps(config))
    assert httpx.post(root + "/admin/reload", headers=MASTER, timeout=10).status_code == 200
    path.write_text("models: [not, a, mapping")
    assert httpx.post(root + "/admin/reload", headers=MASTER, timeout=10).status_code == 422

    applied, rejected = entries(root, action="config")
    assert (applied["action"], applied["outcome"], applied["actor"]) == (
        "config.reload",
        "ok",
        "master",
    )
    changes = applied["detail"]["changes"]
    assert "models.gpt-4o-2.deployments" in changes
    assert changes["providers.openai.api_key"] == {"old": "***", "new": "***"}
    assert "sk-new-upstream-secret" not in audit(root).text and API_KEY not in audit(root).text
    assert rejected["outcome"] == "rejected" and rejected["detail"]["errors"]


def test_dashboard_logins_logouts_and_changes_are_recorded(site):
    root, _, _ = site
    with httpx.Client(base_url=root, timeout=10) as client:
        assert client.post("/ui/login", data={"key": "sk-wrong"}).status_code == 401
        assert client.post("/ui/login", data={"key": MASTER_KEY}).status_code == 303
        token = client.get("/ui/keys").text.split('name="csrf" value="')[1].split('"')[0]
        made = client.post("/ui/keys", data={"name": "from-ui", "csrf": token})
        assert made.status_code == 200
        assert client.post("/ui/logout", data={"csrf": token}).status_code == 303
    trail = entries(root)
    acts = [(e["actor"], e["action"], e["outcome"]) for e in trail]
    assert acts == [
        ("unknown", "ui.login", "refused 401"),
        ("master", "ui.login", "ok"),
        ("master", "key.create", "ok"),
        ("master", "ui.logout", "ok"),
    ]
    assert trail[2]["detail"] == {"via": "dashboard", "fields": {"name": "from-ui"}}
    assert trail[2]["target"]  # the new key's id
    assert token not in audit(root).text


def test_filters_paging_and_csv(site):
    root, _, _ = site
    admin = Admin(root + "/v1")
    ids = [admin.create_key(name=f"k{i}")["id"] for i in range(3)]
    admin.revoke(ids[0])
    first = audit(root, limit=2).json()
    assert [e["target"] for e in first["data"]] == ids[:2]
    rest = audit(root, limit=2, after=first["next_after"]).json()
    assert [e["action"] for e in rest["data"]] == ["key.create", "key.revoke"]
    assert rest["next_after"] == rest["data"][-1]["id"]
    assert [e["target"] for e in entries(root, action="key.revoke")] == [ids[0]]
    assert entries(root, target=ids[1])[0]["action"] == "key.create"
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert entries(root, since=future) == []
    rows = list(csv.DictReader(io.StringIO(audit(root, format="csv").text)))
    assert [r["action"] for r in rows] == ["key.create"] * 3 + ["key.revoke"]
    assert rows[1]["prev_hash"] == rows[0]["hash"]
    assert audit(root, bogus=1).status_code == 400


# --- the chain ------------------------------------------------------------------------------


def test_verify_passes_on_an_intact_trail_and_fails_after_a_row_is_altered(site):
    root, path, db = site
    admin = Admin(root + "/v1")
    for i in range(3):
        admin.create_key(name=f"chain-{i}")
    result = verify_cli(path)
    assert result.exit_code == 0, result.output
    assert "3 entries checked" in result.output
    assert httpx.get(root + "/admin/audit/verify", headers=MASTER).json()["ok"] is True

    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE audit_log SET actor = 'key:someone-else' WHERE id = 2")
    result = verify_cli(path)
    assert result.exit_code == 1
    assert "BROKEN at entry 2" in result.output
    answer = httpx.get(root + "/admin/audit/verify", headers=MASTER)
    assert answer.status_code == 409 and answer.json()["broken_id"] == 2


def test_verify_fails_after_a_row_is_removed(site):
    root, path, db = site
    admin = Admin(root + "/v1")
    for i in range(3):
        admin.create_key(name=f"gone-{i}")
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM audit_log WHERE id = 2")
    result = verify_cli(path)
    assert result.exit_code == 1 and "entry 2 is missing" in result.output


async def _exercise_chain(url: str) -> None:
    """Concurrent appends stay one chain; an edit anywhere breaks it; so does a swap."""
    await upgrade(url)
    engine = create_ledger_engine(url)
    trail = AuditTrail(engine)
    try:
        await asyncio.gather(
            *(trail.append("master", "key.create", f"k{i}", detail={"i": i}) for i in range(12))
        )
        result = await trail.verify()
        assert result.ok and result.checked == 12
        async with engine.begin() as conn:
            from sqlalchemy import text

            await conn.execute(text("UPDATE audit_log SET detail = '{}' WHERE id = 5"))
        broken = await trail.verify()
        assert (broken.ok, broken.broken_id, broken.checked) == (False, 5, 4)
    finally:
        await engine.dispose()


async def test_chain_on_sqlite(tmp_path: Path) -> None:
    await _exercise_chain(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")


def test_chain_on_postgresql() -> None:
    with scratch_postgres() as url:
        asyncio.run(_exercise_chain(url))


async def _exercise_prune(url: str) -> None:
    await upgrade(url)
    engine = create_ledger_engine(url)
    trail = AuditTrail(engine)
    try:
        for i in range(5):
            await trail.append("master", "key.create", f"k{i}")
        cutoff = datetime.now(UTC)
        for i in range(2):
            await trail.append("master", "key.revoke", f"k{i}")
        assert await trail.prune(cutoff, batch=2) == 5
        kept = await trail.entries()
        assert [e.action for e in kept] == ["key.revoke", "key.revoke"]
        result = await trail.verify()  # the oldest entry kept anchors the chain
        assert result.ok and result.first_id == 6
    finally:
        await engine.dispose()


async def test_audit_retention_prunes_oldest_first_and_keeps_a_verifiable_chain_sqlite(
    tmp_path: Path,
) -> None:
    await _exercise_prune(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")


def test_audit_retention_prunes_oldest_first_and_keeps_a_verifiable_chain_postgresql() -> None:
    with scratch_postgres() as url:
        asyncio.run(_exercise_prune(url))


def test_config_diff_masks_secrets_and_credentials_in_urls():
    old = {
        "ledger": {"url": "postgresql+asyncpg://gw:hunter2@db/ledger"},
        "providers": {"a": {"api_key": "**********", "headers": {"x-token": "t1"}}},
        "models": {"m": {"fallbacks": []}},
    }
    new = {
        "ledger": {"url": "postgresql+asyncpg://gw:swordfish@db2/ledger"},
        "providers": {"a": {"api_key": "**********", "headers": {"x-token": "t2"}}},
        "models": {"m": {"fallbacks": ["n"]}},
    }
    diff = config_diff(old, new)
    assert diff["ledger.url"] == {
        "old": "postgresql+asyncpg://gw:***@db/ledger",
        "new": "postgresql+asyncpg://gw:***@db2/ledger",
    }
    assert diff["providers.a.headers.x-token"] == {"old": "***", "new": "***"}
    assert diff["models.m.fallbacks"] == {"old": [], "new": ["n"]}
    assert "providers.a.api_key" not in diff  # unchanged
    text = json.dumps(diff)
    assert "hunter2" not in text and "swordfish" not in text and "t2" not in text


def test_dashboard_audit_page_lists_the_trail_and_verifies_it_for_the_master_key(site):
    root, _, db = site
    admin = Admin(root + "/v1")
    boss = admin.create_key(name="boss", admin=True)
    with httpx.Client(base_url=root, timeout=10) as client:
        assert client.post("/ui/login", data={"key": MASTER_KEY}).status_code == 303
        page = client.get("/ui/audit")
        assert page.status_code == 200
        assert page.text.count('data-action="key.create"') == 1
        assert page.text.count('data-action="ui.login"') == 1
        verified = client.get("/ui/audit", params={"verify": "1"})
        assert 'data-ok="true"' in verified.text
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE audit_log SET outcome = 'refused' WHERE id = 1")
        assert 'data-ok="false"' in client.get("/ui/audit", params={"verify": "1"}).text
    with httpx.Client(base_url=root, timeout=10) as client:
        assert client.post("/ui/login", data={"key": boss["key"]}).status_code == 303
        assert client.get("/ui/audit").status_code == 403


async def _trail_of(db: Path) -> list[Any]:
    engine = create_ledger_engine(f"sqlite+aiosqlite:///{db}")
    try:
        return await AuditTrail(engine).entries()
    finally:
        await engine.dispose()


def test_cli_and_library_key_changes_are_recorded_under_their_own_actor(
    openai_upstream: OpenAIEmulator, tmp_path: Path
) -> None:
    from gateway import Gateway

    db = tmp_path / "ledger.db"
    config = gateway_config(openai_upstream.url, db)
    path = tmp_path / "gateway.yaml"
    path.write_text(json.dumps(config))
    runner = CliRunner()
    made = runner.invoke(cli_app, ["keys", "create", "--name", "from-cli", "--config", str(path)])
    assert made.exit_code == 0, made.output
    plaintext = made.stdout.strip().splitlines()[-1]
    with Gateway(config) as gw:
        created = gw.keys.create(name="from-library")
        gw.keys.revoke(created.info.id)
    trail = asyncio.run(_trail_of(db))
    assert [(e.actor, e.action) for e in trail] == [
        ("cli", "key.create"),
        ("library", "key.create"),
        ("library", "key.revoke"),
    ]
    assert json.loads(trail[0].detail)["fields"]["name"] == "from-cli"
    assert all(plaintext not in e.detail and created.key not in e.detail for e in trail)
    assert verify_cli(path).exit_code == 0


def test_through_the_proxy_on_postgresql_verify_fails_after_a_row_is_altered(
    openai_upstream: OpenAIEmulator, tmp_path: Path
) -> None:
    with scratch_postgres() as url:
        config = gateway_config(openai_upstream.url, tmp_path / "unused.db")
        config["ledger"]["url"] = url
        path = tmp_path / "gateway.yaml"
        path.write_text(json.dumps(config))
        with ServerThread(create_app(str(path))) as server:
            root = server.url
            admin = Admin(root + "/v1")
            team = admin.create_team(name="pg-team")
            admin.create_key(name="pg-key", team=team["id"])
            assert [e["action"] for e in entries(root)] == ["team.create", "key.create"]
            assert verify_cli(path).exit_code == 0
            postgres(
                url.replace("postgresql+asyncpg://", "postgresql://"),
                "UPDATE audit_log SET target = 'someone-else' WHERE id = 1",
            )
            result = verify_cli(path)
            assert result.exit_code == 1 and "BROKEN at entry 1" in result.output
            answer = httpx.get(root + "/admin/audit/verify", headers=MASTER, timeout=10)
            assert answer.status_code == 409 and answer.json()["broken_id"] == 1
