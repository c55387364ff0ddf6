"""Requests refused at the door with the status that says why.

- A JSON route given a body declared as something else answers 415; ``application/json`` with
  parameters, ``application/<x>+json`` and no Content-Type at all (as some clients send) are
  read as JSON.
- A key or team name with a NUL (or another control character) is a 400 naming the field —
  on PostgreSQL it used to reach the database and come back as a 503.
- ``POST /admin/reload`` tells a caller without a valid key 401, and a valid key that is not
  the master key 403.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext

import httpx
import pytest

from gateway.server import create_app
from tests.emulators.openai_api import OpenAIEmulator
from tests.harness import ServerThread
from tests.keys_helpers import MASTER_KEY, Admin, gateway_config, server_root
from tests.ledger_helpers import scratch_postgres

CHAT = b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}'
MASTER = {"authorization": f"Bearer {MASTER_KEY}"}


@pytest.fixture(scope="module")
def upstream() -> Iterator[OpenAIEmulator]:
    emulator = OpenAIEmulator()
    with ServerThread(emulator.app) as server:
        emulator.url = server.url
        yield emulator


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def served(
    request: pytest.FixtureRequest,
    upstream: OpenAIEmulator,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    db = tmp_path_factory.mktemp("checks") / "ledger.db"
    config = gateway_config(upstream.url, db)
    with scratch_postgres() if request.param == "postgresql" else nullcontext("") as url:
        if url:
            config["ledger"]["url"] = url
        with ServerThread(create_app(config)) as server:
            yield server.url + "/v1"


def post(url: str, content: bytes, content_type: str | None) -> httpx.Response:
    headers = dict(MASTER)
    if content_type is not None:
        headers["content-type"] = content_type
    return httpx.post(url, content=content, headers=headers, timeout=10)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_a_body_declared_as_other_than_json_gets_415(served: str, content_type: str) -> None:
    chat = post(served + "/chat/completions", CHAT, content_type)
    admin = post(server_root(served) + "/admin/keys", b'{"name": "x"}', content_type)

    for answer in (chat, admin):
        assert answer.status_code == 415, answer.text
        assert answer.json()["error"]["code"] == "unsupported_media_type"
        assert "application/json" in answer.json()["error"]["message"]


@pytest.mark.parametrize(
    "content_type",
    [None, "application/json", "application/json; charset=utf-8", "application/vnd.x+json"],
)
def test_json_with_parameters_or_without_a_content_type_is_read(
    served: str, content_type: str | None
) -> None:
    answer = post(served + "/chat/completions", CHAT, content_type)
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("name", ["a\u0000b", "line\nbreak", "\u0000"])
def test_a_key_or_team_name_with_a_control_character_is_a_400(served: str, name: str) -> None:
    root = server_root(served)
    for path in ("/admin/keys", "/admin/teams"):
        answer = httpx.post(root + path, json={"name": name}, headers=MASTER, timeout=10)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["param"] == "name"


def test_key_metadata_with_a_nul_is_a_400(served: str) -> None:
    answer = httpx.post(
        server_root(served) + "/admin/keys",
        json={"name": "ok", "metadata": {"note": "a\u0000b"}},
        headers=MASTER,
        timeout=10,
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == "metadata"


def test_reload_answers_401_without_a_valid_key_and_403_to_a_key_that_is_not_the_master(
    served: str,
) -> None:
    root = server_root(served)
    key = Admin(served).create_key(name="plain")["key"]
    admin_key = Admin(served).create_key(name="admin", admin=True)["key"]

    def reload(token: str | None) -> httpx.Response:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.post(root + "/admin/reload", headers=headers, timeout=10)

    assert reload(None).status_code == 401
    assert reload("sk-gw-not-a-key").status_code == 401
    for token in (key, admin_key):
        answer = reload(token)
        assert answer.status_code == 403, answer.text
        assert answer.json()["error"]["code"] == "master_key_required"
