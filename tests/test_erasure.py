"""Erasure by person, through the proxy and on both databases: the person's end-user id and
metadata leave every record, roll-up, report and CSV export, while every amount stays so
totals add up; the act is audited without the id it erased."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from gateway.governance.erasure import erase
from gateway.ledger.db import create_ledger_engine
from gateway.ledger.migrate import upgrade
from gateway.ledger.reports import GroupBy, spend_report
from gateway.ledger.schema import spend_daily_users, spend_records
from gateway.ledger.store import write_batch
from gateway.server import create_app
from tests.emulators.openai_api import OpenAIEmulator
from tests.harness import ServerThread
from tests.keys_helpers import MASTER_KEY, Admin, chat, gateway_config, server_root
from tests.ledger_helpers import make_records, scratch_postgres

MASTER = {"authorization": f"Bearer {MASTER_KEY}"}
EVER = {"since": "2000-01-01", "until": "2100-01-01"}
PERSON = "alice@example.com"


@pytest.fixture
def site(openai_upstream: OpenAIEmulator, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    db = tmp_path / "ledger.db"
    with ServerThread(create_app(gateway_config(openai_upstream.url, db))) as server:
        yield server.url + "/v1", db


def spend(proxy: str, **params: Any) -> httpx.Response:
    return httpx.get(proxy + "/spend", params={**EVER, **params}, headers=MASTER, timeout=10)


def totals(proxy: str, group_by: str) -> dict[str, tuple[int, str]]:
    body = spend(proxy, group_by=group_by).json()
    return {str(r["group"]): (r["requests"], r["cost_usd"]) for r in body["data"]}


def erasure(proxy: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(server_root(proxy) + "/admin/erasure", json=body, headers=MASTER, timeout=10)


def everything(proxy: str, db: Path) -> str:
    """What an auditor could read: the database file's rows, reports and CSV exports."""
    with sqlite3.connect(db) as conn:
        rows = "\n".join(conn.iterdump())
    return "\n".join(
        [
            rows,
            spend(proxy, group_by="user").text,
            spend(proxy, group_by="user", format="csv").text,
            httpx.get(proxy + "/spend/records", params=EVER, headers=MASTER).text,
            httpx.get(
                proxy + "/spend/records", params={**EVER, "format": "csv"}, headers=MASTER
            ).text,
            httpx.get(server_root(proxy) + "/admin/audit", headers=MASTER).text,
        ]
    )


def test_erasure_by_user_leaves_no_trace_and_totals_unchanged(site):
    proxy, db = site
    key = Admin(proxy).create_key(name="shop")
    for user in (PERSON, PERSON, "bob"):
        response = chat(proxy, key["key"], user=user, metadata={"customer": user})
        assert response.status_code == 200, response.text
    by_key, by_model = totals(proxy, "key"), totals(proxy, "model")
    by_user = totals(proxy, "user")
    assert by_user[PERSON][0] == 2
    assert PERSON in everything(proxy, db)

    answer = erasure(proxy, {"user": PERSON})
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert (report["by"], report["records"], report["end_users"]) == ("user", 2, 1)
    assert report["daily_user_rows"] == 1 and report["tags_cleared"] == 2
    (alias,) = report["pseudonyms"]

    assert PERSON not in everything(proxy, db)
    assert totals(proxy, "key") == by_key and totals(proxy, "model") == by_model
    after = totals(proxy, "user")
    assert after[alias] == by_user[PERSON] and after["bob"] == by_user["bob"]

    (entry,) = [
        e
        for e in httpx.get(server_root(proxy) + "/admin/audit", headers=MASTER).json()["data"]
        if e["action"] == "erasure"
    ]
    assert entry["outcome"] == "ok" and entry["detail"]["records"] == 2


def test_erasure_by_key_and_by_tag(site):
    proxy, db = site
    admin = Admin(proxy)
    one, other = admin.create_key(name="one"), admin.create_key(name="other")
    assert chat(proxy, one["key"], user="carol").status_code == 200
    assert chat(proxy, other["key"], user="dave", metadata={"ticket": "T-1"}).status_code == 200
    assert chat(proxy, other["key"], user="erin").status_code == 200
    before = totals(proxy, "key")

    by_key = erasure(proxy, {"key_id": one["id"]}).json()
    assert (by_key["records"], by_key["end_users"]) == (1, 1)
    by_tag = erasure(proxy, {"tag": {"ticket": "T-1"}}).json()
    assert (by_tag["records"], by_tag["end_users"]) == (1, 1)

    text = everything(proxy, db)
    assert "carol" not in text and "dave" not in text and "T-1" not in text
    assert "erin" in text  # not named: kept
    assert totals(proxy, "key") == before


@pytest.mark.parametrize(
    "body",
    [{}, {"user": "a", "key_id": "b"}, {"tag": {"a": 1, "b": 2}}, {"name": "x"}, {"user": 5}],
)
def test_erasure_names_exactly_one_person(site, body):
    proxy, _ = site
    assert erasure(proxy, body).status_code == 400


def test_erasure_is_for_the_master_key_only(site):
    proxy, _ = site
    boss = Admin(proxy).create_key(name="boss", admin=True)["key"]
    response = httpx.post(
        server_root(proxy) + "/admin/erasure",
        json={"user": "x"},
        headers={"authorization": f"Bearer {boss}"},
    )
    assert response.status_code == 403


@pytest.fixture(params=["sqlite", "postgresql"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
        await upgrade(url)
        eng = create_ledger_engine(url)
        yield eng
        await eng.dispose()
        return
    with scratch_postgres() as url:
        await upgrade(url)
        eng = create_ledger_engine(url)
        yield eng
        await eng.dispose()


async def test_erasure_on_both_databases_keeps_every_sum(engine):
    records = make_records(200)
    await write_batch(engine, records)
    ever = (records[0].started_at.replace(year=2000), records[0].started_at.replace(year=2100))
    groups: tuple[GroupBy, ...] = ("key", "model", "user")
    sums: dict[GroupBy, Any] = {
        g: sorted((r.requests, r.cost_usd) for r in await spend_report(engine, g, *ever))
        for g in groups
    }
    alice = sum(1 for r in records if r.end_user == "alice")

    report = await erase(engine, user="alice")
    assert report.records == alice and report.end_users == 1

    async with engine.connect() as conn:
        users = set((await conn.execute(select(spend_records.c.end_user))).scalars())
        rolled = set((await conn.execute(select(spend_daily_users.c.end_user))).scalars())
    assert "alice" not in users and "alice" not in rolled
    assert report.pseudonyms[0] in users and report.pseudonyms[0] in rolled
    for group_by, before in sums.items():
        now = sorted((r.requests, r.cost_usd) for r in await spend_report(engine, group_by, *ever))
        assert now == before, group_by
    total = sum((r.cost_usd or Decimal(0) for r in records), Decimal(0))
    rows = await spend_report(engine, "key", *ever)
    assert sum((r.cost_usd or Decimal(0) for r in rows), Decimal(0)) == total


def test_erasure_empties_the_prompts_and_answers_kept_for_content_logging(site):
    proxy, db = site
    key = Admin(proxy).create_key(name="diary", metadata={"log_content": True})
    said = "my diary entry about the Rue des Lilas"
    messages = [{"role": "user", "content": said}]
    response = chat(proxy, key["key"], user=PERSON, messages=messages)
    assert response.status_code == 200, response.text
    kept = httpx.get(proxy + "/spend/records", params=EVER, headers=MASTER).text
    assert said in kept  # the record keeps the prompt for a key that logs content

    assert erasure(proxy, {"user": PERSON}).status_code == 200
    assert said not in everything(proxy, db)


def respond(proxy: str, key: str, text: str, **body: Any) -> dict[str, Any]:
    response = httpx.post(
        proxy + "/responses",
        json={"model": "gpt-4o", "input": text, **body},
        headers={"authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def stored(proxy: str, key: str, response_id: str) -> int:
    headers = {"authorization": f"Bearer {key}"}
    return httpx.get(f"{proxy}/responses/{response_id}", headers=headers, timeout=10).status_code


def test_erasure_deletes_the_persons_stored_responses(site):
    proxy, db = site
    key = Admin(proxy).create_key(name="assistant")["key"]
    first = respond(proxy, key, "my diagnosis is ZEBRA-42", user=PERSON)
    second = respond(
        proxy, key, "and my address is QUOKKA-7", user=PERSON, previous_response_id=first["id"]
    )
    streamed = httpx.post(
        proxy + "/responses",
        json={"model": "gpt-4o", "input": "also WOMBAT-9", "user": PERSON, "stream": True},
        headers={"authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert streamed.status_code == 200, streamed.text
    kept = respond(proxy, key, "bob says KOALA-1", user="bob")
    text = everything(proxy, db)
    assert "ZEBRA-42" in text and "QUOKKA-7" in text and "WOMBAT-9" in text

    answer = erasure(proxy, {"user": PERSON})
    assert answer.status_code == 200, answer.text
    assert answer.json()["stored_responses"] == 3

    assert stored(proxy, key, first["id"]) == 404 and stored(proxy, key, second["id"]) == 404
    assert stored(proxy, key, kept["id"]) == 200  # someone else's: kept
    text = everything(proxy, db)
    for secret in (PERSON, "ZEBRA-42", "QUOKKA-7", "WOMBAT-9"):
        assert secret not in text
    assert "KOALA-1" in text
    (entry,) = [
        e
        for e in httpx.get(server_root(proxy) + "/admin/audit", headers=MASTER).json()["data"]
        if e["action"] == "erasure"
    ]
    assert entry["detail"]["stored_responses"] == 3


def test_erasure_by_key_and_by_tag_deletes_stored_responses(site):
    proxy, db = site
    admin = Admin(proxy)
    one, other = admin.create_key(name="one"), admin.create_key(name="other")
    by_one = respond(proxy, one["key"], "from key one: OTTER-3")
    tagged = respond(proxy, other["key"], "ticket text: LYNX-5", metadata={"ticket": "T-9"})
    untagged = respond(proxy, other["key"], "other text: HERON-8", metadata={"ticket": "T-8"})

    assert erasure(proxy, {"key_id": one["id"]}).json()["stored_responses"] == 1
    assert erasure(proxy, {"tag": {"ticket": "T-9"}}).json()["stored_responses"] == 1

    assert stored(proxy, one["key"], by_one["id"]) == 404
    assert stored(proxy, other["key"], tagged["id"]) == 404
    assert stored(proxy, other["key"], untagged["id"]) == 200
    text = everything(proxy, db)
    assert "OTTER-3" not in text and "LYNX-5" not in text and "HERON-8" in text


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_erasure_empties_the_response_cache(
    openai_upstream: OpenAIEmulator, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """Cached answers are kept by a hash of the request, not by person: an erasure empties the
    cache, so nothing the person asked is answered again from it."""
    cache: dict[str, Any] = {"enabled": True, "backend": backend}
    config = gateway_config(openai_upstream.url, tmp_path / "ledger.db", cache=cache)
    if backend == "redis":
        config["redis"] = {
            "url": request.getfixturevalue("redis_url"),
            "key_prefix": f"llm-gateway-test:{uuid.uuid4().hex}:",
        }
    with ServerThread(create_app(config)) as server:
        proxy = server.url + "/v1"
        ask = [{"role": "user", "content": "my address is 12 Rue des Lilas"}]
        first = chat(proxy, MASTER_KEY, user=PERSON, messages=ask, temperature=0)
        again = chat(proxy, MASTER_KEY, user=PERSON, messages=ask, temperature=0)
        assert [first.headers["x-gateway-cache"], again.headers["x-gateway-cache"]] == [
            "miss",
            "hit",
        ]
        answer = erasure(proxy, {"user": PERSON})
        assert answer.status_code == 200, answer.text
        assert answer.json()["cache_entries_flushed"] >= 1
        after = chat(proxy, MASTER_KEY, user=PERSON, messages=ask, temperature=0)
        assert after.headers["x-gateway-cache"] == "miss"
