"""The admin key API under awkward input and damaged rows.

No key may exist whose plaintext the admin never got: a ``POST /admin/keys`` is refused
before the key is made (400), or answers with its plaintext. One key row that cannot be
read or shown must not make ``GET /admin/keys`` fail for everyone: the others are listed,
and the bad one is flagged (or, when its row cannot be read at all, left out and logged).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.server import create_app
from tests.emulators.openai_api import OpenAIEmulator
from tests.harness import ServerThread
from tests.keys_helpers import MASTER_KEY, Admin, gateway_config, server_root


@pytest.fixture
def served(openai_emu: OpenAIEmulator, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    db = tmp_path / "ledger.db"
    with ServerThread(create_app(gateway_config(openai_emu.url, db))) as server:
        yield server.url + "/v1", db


def deep_json(depth: int) -> str:
    return "[" * depth + '"x"' + "]" * depth


def listing(url: str) -> httpx.Response:
    return httpx.get(
        server_root(url) + "/admin/keys",
        headers={"authorization": f"Bearer {MASTER_KEY}"},
        timeout=10,
    )


def test_no_key_is_created_whose_plaintext_the_admin_did_not_get(
    served: tuple[str, Path],
) -> None:
    url, _ = served
    answer = httpx.post(
        server_root(url) + "/admin/keys",
        content=f'{{"name": "deep", "metadata": {{"x": {deep_json(300)}}}}}',
        headers={"authorization": f"Bearer {MASTER_KEY}", "content-type": "application/json"},
        timeout=10,
    )

    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"] == "nesting_too_deep"
    listed = listing(url)
    assert listed.status_code == 200 and listed.json()["data"] == []


def test_one_key_that_cannot_be_shown_is_flagged_and_the_others_listed(
    served: tuple[str, Path],
) -> None:
    url, db = served
    admin = Admin(url)
    good, bad = admin.create_key(name="good"), admin.create_key(name="bad")
    with sqlite3.connect(db) as conn:  # a row written by other means, nested past 254 levels
        conn.execute(
            "UPDATE api_keys SET metadata = ? WHERE id = ?",
            (json.dumps({"x": json.loads(deep_json(300))}), bad["id"]),
        )

    answer = listing(url)

    assert answer.status_code == 200, answer.text
    data = {k["id"]: k for k in answer.json()["data"]}
    assert data[good["id"]]["name"] == "good" and "unreadable" not in data[good["id"]]
    assert data[bad["id"]]["unreadable"] is True and data[bad["id"]]["prefix"] == bad["prefix"]


def test_one_key_row_that_cannot_be_read_is_left_out_and_the_others_listed(
    served: tuple[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    url, db = served
    admin = Admin(url)
    good, bad = admin.create_key(name="good"), admin.create_key(name="bad")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE api_keys SET metadata = '{not json' WHERE id = ?", (bad["id"],))

    answer = listing(url)

    assert answer.status_code == 200, answer.text
    assert [k["id"] for k in answer.json()["data"]] == [good["id"]]
    assert bad["id"] in caplog.text
