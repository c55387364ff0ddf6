"""One set of rules for keys, whichever door a key comes through: the admin API, the dashboard's
form, the library's ``client.keys`` in-process, and ``llm-gateway keys create``. Each surface
refuses the same mistakes, naming the field, and stores nothing."""

from __future__ import annotations

import html
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway import Gateway, InvalidRequestError
from tests.keys_helpers import MASTER_KEY, gateway_config

CLI = Path(sys.executable).parent / "llm-gateway"

# A key spec with one mistake each, and the field the refusal must name.
MISTAKES: list[tuple[dict[str, Any], str]] = [
    ({"name": ""}, "name"),
    ({"name": "   "}, "name"),
    ({"name": "n" * 201}, "name"),
    ({"name": "ok", "expires_in_days": 0}, "expires_in_days"),
    ({"name": "ok", "expires_in_days": -1}, "expires_in_days"),
    ({"name": "ok", "expires_in_days": 36_501}, "expires_in_days"),
    ({"name": "ok", "rpm": 0}, "rpm"),
    ({"name": "ok", "max_parallel": -3}, "max_parallel"),
    ({"name": "ok", "budget_usd": "-1"}, "budget_usd"),
    ({"name": "ok", "budget_period": "hourly"}, "budget_period"),
]
IDS = [f"{field}={spec.get(field, spec['name'])!r}"[:40] for spec, field in MISTAKES]


def _config(db: Path) -> dict[str, Any]:
    return gateway_config("http://127.0.0.1:9", db)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from gateway.server import create_app
    from tests.harness import ServerThread

    db = tmp_path_factory.mktemp("rules") / "ledger.db"
    with ServerThread(create_app(_config(db))) as server:
        yield server.url


def _stored_names(root: str) -> set[str]:
    answer = httpx.get(
        root + "/admin/keys", headers={"authorization": f"Bearer {MASTER_KEY}"}, timeout=10
    )
    return {k["name"] for k in answer.json()["data"]}


@pytest.mark.parametrize(("spec", "field"), MISTAKES, ids=IDS)
def test_admin_api_refuses_each_mistake_naming_its_field(
    root: str, spec: dict[str, Any], field: str
) -> None:
    answer = httpx.post(
        root + "/admin/keys",
        json=spec,
        headers={"authorization": f"Bearer {MASTER_KEY}"},
        timeout=10,
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == field
    assert spec["name"] not in _stored_names(root)


def test_admin_api_refuses_a_key_that_would_expire_in_the_past(root: str) -> None:
    answer = httpx.post(
        root + "/admin/keys",
        json={"name": "stale", "expires_at": "2020-01-01T00:00:00Z"},
        headers={"authorization": f"Bearer {MASTER_KEY}"},
        timeout=10,
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "expires_at"
    assert "stale" not in _stored_names(root)


@pytest.mark.parametrize(("spec", "field"), MISTAKES, ids=IDS)
def test_dashboard_form_refuses_each_mistake_naming_its_field(
    root: str, spec: dict[str, Any], field: str
) -> None:
    with httpx.Client(base_url=root, timeout=10) as client:
        assert client.post("/ui/login", data={"key": MASTER_KEY}).status_code == 303
        token = client.get("/ui/keys").text.split('name="csrf" value="')[1].split('"')[0]
        form = {k: str(v) for k, v in spec.items()}
        answer = client.post("/ui/keys", data={**form, "csrf": token})
    assert answer.status_code == 400, answer.text[:500]
    assert f"'{field}'" in html.unescape(answer.text)  # the rule's message names the field
    assert spec["name"] not in _stored_names(root)


@pytest.mark.parametrize(("spec", "field"), MISTAKES, ids=IDS)
def test_library_keys_refuse_each_mistake_naming_its_field(
    tmp_path: Path, spec: dict[str, Any], field: str
) -> None:
    with Gateway(_config(tmp_path / "ledger.db")) as gw:
        with pytest.raises(InvalidRequestError) as refused:
            gw.keys.create(**spec)
        assert refused.value.param == field
        assert spec["name"] not in {k.name for k in gw.keys.list()}


CLI_FLAGS = {
    "name": "--name",
    "expires_in_days": "--expires-in-days",
    "rpm": "--rpm",
    "max_parallel": "--max-parallel",
    "budget_usd": "--budget",
    "budget_period": "--budget-period",
}


@pytest.mark.parametrize(
    ("spec", "field"),
    # The command line offers the periods as a choice of its own (its --help lists them).
    [m for m in MISTAKES if m[1] != "budget_period"],
    ids=[i for i, m in zip(IDS, MISTAKES, strict=True) if m[1] != "budget_period"],
)
def test_cli_refuses_each_mistake_naming_its_field(
    tmp_path: Path, spec: dict[str, Any], field: str
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "auth": {"master_key": MASTER_KEY},
                "ledger": {"url": f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}"},
            }
        )
    )
    args = [f"{CLI_FLAGS[k]}={v}" for k, v in spec.items()]
    env = {k: v for k, v in os.environ.items() if k not in ("GATEWAY_CONFIG", "GATEWAY_MASTER_KEY")}
    result = subprocess.run(
        [str(CLI), "keys", "create", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"'{field}'" in result.stderr
    assert "sk-gw-" not in result.stdout
    assert not (tmp_path / "keys.db").exists()  # refused before the database was touched


def test_the_api_and_the_library_accept_a_good_key_and_trim_its_name(
    root: str, tmp_path: Path
) -> None:
    spec: dict[str, Any] = {
        "name": "  ci  ",
        "rpm": 1,
        "budget_usd": "0",
        "expires_in_days": 36_500,
    }
    answer = httpx.post(
        root + "/admin/keys",
        json=spec,
        headers={"authorization": f"Bearer {MASTER_KEY}"},
        timeout=10,
    )
    assert answer.status_code == 201 and answer.json()["name"] == "ci"  # trimmed
    with Gateway(_config(tmp_path / "ledger.db")) as gw:
        assert gw.keys.create(**spec).info.name == "ci"
