"""``llm-gateway keys`` and ``llm-gateway teams``, run as the installed console script against
a database of the test's own."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.keys import KeyStore, VirtualKey
from gateway.ledger.db import create_ledger_engine
from tests.keys_helpers import MASTER_KEY

CLI = Path(sys.executable).parent / "llm-gateway"


def clean_env() -> dict[str, str]:
    return {
        k: v for k, v in os.environ.items() if k not in ("GATEWAY_CONFIG", "GATEWAY_MASTER_KEY")
    }


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "auth": {"master_key": MASTER_KEY},
                "ledger": {"url": f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}"},
            }
        )
    )
    return path


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(CLI), *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert result.returncode == 0, result.stderr
    return result


async def stored_key(config: Path, plaintext: str) -> VirtualKey | None:
    engine = create_ledger_engine(f"sqlite+aiosqlite:///{config.parent / 'keys.db'}")
    try:
        return await KeyStore(engine).find_key(plaintext)
    finally:
        await engine.dispose()


async def test_keys_create_prints_the_plaintext_once_with_a_warning(config):
    result = cli(config, "keys", "create", "--name", "ci", "--budget", "10")
    (plaintext,) = result.stdout.split()  # stdout is the key alone, so $(…) captures it
    assert plaintext.startswith("sk-gw-")
    assert (result.stdout + result.stderr).count(plaintext) == 1
    assert "only time it is shown" in result.stderr
    key = await stored_key(config, plaintext)
    assert key is not None and key.name == "ci" and str(key.budget_usd) == "10"


def test_keys_list_shows_the_prefix_only(config):
    plaintext = cli(config, "keys", "create", "--name", "listed").stdout.strip()
    listing = cli(config, "keys", "list").stdout
    assert plaintext[:12] + "…" in listing and "listed" in listing
    assert plaintext not in listing
    assert hashlib.sha256(plaintext.encode()).hexdigest() not in listing


async def test_keys_revoke_stops_the_key(config):
    plaintext = cli(config, "keys", "create", "--name", "doomed").stdout.strip()
    key = await stored_key(config, plaintext)
    assert key is not None
    result = cli(config, "keys", "revoke", key.id)
    assert f"Revoked key 'doomed' (id {key.id}" in result.stdout
    assert " revoked " in cli(config, "keys", "list").stdout
    revoked = await stored_key(config, plaintext)
    assert revoked is not None and revoked.revoked_at is not None


def test_keys_list_by_team_shows_only_that_teams_keys(config):
    cli(config, "teams", "create", "--name", "research", "--budget", "500", "--region", "eu")
    cli(config, "keys", "create", "--name", "in-team", "--team", "research")
    cli(config, "keys", "create", "--name", "no-team")
    listing = cli(config, "keys", "list", "--team", "research").stdout
    assert "in-team" in listing and "research" in listing and "no-team" not in listing


def test_keys_commands_refuse_a_config_without_a_ledger(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"ledger": {"enabled": False}}))
    result = subprocess.run(
        [str(CLI), "keys", "list", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert result.returncode == 2 and "ledger.enabled: false" in result.stderr
