"""What was spent, read back: ``GET /v1/spend`` and ``GET /v1/spend/records`` of a real proxy,
and ``llm-gateway spend`` on the same database. Every report is checked against the records
it sums, exactly (Decimal), and the records against the requests that were made."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config import LedgerConfig
from gateway.keys import KeyStore
from gateway.ledger.db import create_ledger_engine
from gateway.ledger.ledger import Ledger
from gateway.ledger.records import SpendRecord
from gateway.ledger.reports import SpendRow
from gateway.ledger.store import write_batch
from tests.conftest import SINGLE_ATTEMPT, GatewayFactory
from tests.emulators.common import Fault
from tests.emulators.openai_api import API_KEY, OpenAIEmulator
from tests.ledger_helpers import DAY0, expected_report, make_records, scratch_postgres

CLI = Path(sys.executable).parent / "llm-gateway"
MASTER = "sk-master-for-spend-tests"
GROUPINGS = ["model", "provider", "day", "key", "team", "user"]
SUMS = [f.name for f in fields(SpendRow)][1:]
HELLO = [{"role": "user", "content": "hello"}]  # emulator: 1 prompt token, 2 completion


def gateway_config(upstream: OpenAIEmulator, ledger_url: str) -> dict[str, Any]:
    return {
        "auth": {"master_key": MASTER},
        "routing": SINGLE_ATTEMPT,
        # A long flush interval: a report must still see the requests just answered.
        "ledger": {"url": ledger_url, "flush_interval": 2.0},
        "providers": {
            "openai": {"type": "openai", "api_key": API_KEY, "base_url": upstream.url + "/v1"}
        },
        "models": {
            "gpt-4o": {"deployments": [{"provider": "openai", "model": "gpt-4o"}]},
            "llama": {"deployments": [{"provider": "openai", "model": "my-own-llama"}]},
            "embed": {"deployments": [{"provider": "openai", "model": "text-embedding-3-small"}]},
        },
    }


@dataclass
class Traffic:
    """A gateway and the requests made through it."""

    url: str  # …/v1
    config: dict[str, Any]
    request_ids: list[str]
    key_ids: list[str]
    team_id: str


def make_traffic(
    upstream: OpenAIEmulator, start_gateway: GatewayFactory, ledger_url: str
) -> Traffic:
    """Start a gateway on ``ledger_url`` and send it varied requests: two virtual keys (one in
    a team) and the master key; chat, streams, embeddings; end users; an unknown price; an
    upstream failure."""
    config = gateway_config(upstream, ledger_url)
    url = start_gateway(config)  # migrates the ledger, keys included
    team_id, (key_a, secret_a), (key_b, secret_b) = asyncio.run(create_keys(ledger_url))
    upstream.reset()
    ids: list[str] = []
    with httpx.Client(base_url=url, timeout=10) as client:

        def send(path: str, key: str, body: dict[str, Any], status: int = 200) -> None:
            headers = {"authorization": f"Bearer {key}"}
            if body.get("stream"):
                with client.stream("POST", path, json=body, headers=headers) as resp:
                    text = "".join(resp.iter_text())
                    assert text.rstrip().endswith("data: [DONE]"), text
            else:
                resp = client.post(path, json=body, headers=headers)
            assert resp.status_code == status, resp.text
            ids.append(resp.headers["x-request-id"])

        chat = "/chat/completions"
        send(chat, MASTER, {"model": "gpt-4o", "messages": HELLO, "user": "alice"})
        send(chat, MASTER, {"model": "gpt-4o", "messages": HELLO, "user": "bob"})
        send(chat, MASTER, {"model": "gpt-4o", "messages": HELLO, "stream": True})
        send("/embeddings", MASTER, {"model": "embed", "input": ["a b c", "d e"]})
        send(chat, MASTER, {"model": "llama", "messages": HELLO})  # unknown price
        send(chat, secret_a, {"model": "gpt-4o", "messages": HELLO, "user": "alice"})
        send(chat, secret_a, {"model": "gpt-4o", "messages": HELLO, "stream": True})
        send(chat, secret_b, {"model": "gpt-4o", "messages": HELLO})
        send("/embeddings", secret_b, {"model": "embed", "input": "one two"})
        upstream.fail_next(Fault(status=400, body=b'{"error": {"message": "bad"}}'))
        send(chat, secret_b, {"model": "gpt-4o", "messages": HELLO}, status=400)
    return Traffic(url, config, ids, [key_a, key_b], team_id)


async def create_keys(ledger_url: str) -> tuple[str, tuple[str, str], tuple[str, str]]:
    ledger = Ledger(LedgerConfig(url=ledger_url, migrate=False))
    try:
        store = KeyStore(ledger.engine)
        team = await store.create_team(name="research")
        a, secret_a = await store.create_key(name="a", team_id=team.id)
        b, secret_b = await store.create_key(name="b")
        return team.id, (a.id, secret_a), (b.id, secret_b)
    finally:
        await ledger.engine.dispose()


@pytest.fixture(scope="module")
def traffic(
    openai_upstream: OpenAIEmulator,
    start_gateway: GatewayFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> Traffic:
    db = tmp_path_factory.mktemp("spend") / "ledger.db"
    return make_traffic(openai_upstream, start_gateway, f"sqlite+aiosqlite:///{db}")


def get(url: str, path: str, key: str = MASTER, **params: str) -> httpx.Response:
    return httpx.get(
        url + path, params=params, headers={"authorization": f"Bearer {key}"}, timeout=10
    )


def all_records(url: str, limit: int = 3, **params: str) -> list[dict[str, Any]]:
    """Every record, page by page."""
    records: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(1000):
        page_params = {**params, "limit": str(limit)}
        if cursor is not None:
            page_params["cursor"] = cursor
        resp = get(url, "/spend/records", **page_params)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["object"] == "list" and len(body["data"]) <= limit
        records += body["data"]
        cursor = body["next_cursor"]
        if cursor is None:
            return records
    raise AssertionError("the pages never ended")


def as_record(item: dict[str, Any]) -> SpendRecord:
    """A record of the JSON list, as the ledger's type."""
    cost = item["cost_usd"]
    assert cost is None or isinstance(cost, str), "money must never be a JSON number"
    return SpendRecord(
        **{
            **item,
            "started_at": datetime.fromisoformat(item["started_at"]),
            "finished_at": datetime.fromisoformat(item["finished_at"]),
            "cost_usd": None if cost is None else Decimal(cost),
        }
    )


def as_row(item: dict[str, Any]) -> SpendRow:
    cost = item["cost_usd"]
    assert cost is None or isinstance(cost, str), "money must never be a JSON number"
    if cost is None:  # every request of the group has an unknown cost
        assert item["requests"] and item["unknown_cost_requests"] == item["requests"]
    sums = {k: item[k] for k in SUMS}
    return SpendRow(item.get("group"), **{**sums, "cost_usd": Decimal(cost or 0)})


# -- the report --------------------------------------------------------------------------
@pytest.mark.parametrize("group_by", GROUPINGS)
def test_report_equals_the_sums_of_its_records(traffic, group_by):
    resp = get(traffic.url, "/spend", group_by=group_by, since="1h")
    assert resp.status_code == 200, resp.text
    report = resp.json()
    assert report["object"] == "spend.report" and report["group_by"] == group_by
    since, until = (datetime.fromisoformat(report[k]) for k in ("since", "until"))
    records = [as_record(r) for r in all_records(traffic.url, since="1h")]

    rows = {row.group: row for row in map(as_row, report["data"])}
    assert rows == expected_report(records, group_by, since, until)
    assert as_row(report["total"]) == SpendRow.total(rows.values())
    assert as_row(report["total"]).requests == len(traffic.request_ids)


def test_report_total_holds_the_exact_costs_of_the_requests(traffic):
    total = as_row(get(traffic.url, "/spend", since="1h").json()["total"])
    # 6 gpt-4o answers x (1 x $2.50 + 2 x $10.00)/1M, 7 embedding tokens x $0.02/1M, the
    # failed request $0, the llama one unknown.
    assert total.cost_usd == 6 * Decimal("0.0000225") + 7 * Decimal("0.00000002")
    assert (total.requests, total.errors, total.unknown_cost_requests) == (10, 1, 1)


def test_report_by_key_and_team_names_the_virtual_keys(traffic):
    by_key = {r["group"]: r for r in get(traffic.url, "/spend", group_by="key").json()["data"]}
    key_a, key_b = traffic.key_ids
    assert {g: r["requests"] for g, r in by_key.items()} == {None: 5, key_a: 2, key_b: 3}
    by_team = get(traffic.url, "/spend", group_by="team").json()["data"]
    assert {r["group"]: r["requests"] for r in by_team} == {None: 8, traffic.team_id: 2}


def test_report_for_one_key(traffic):
    key_a = traffic.key_ids[0]
    report = get(traffic.url, "/spend", group_by="model", key_id=key_a).json()
    assert report["total"]["requests"] == 2
    assert Decimal(report["total"]["cost_usd"]) == 2 * Decimal("0.0000225")


def test_report_includes_a_request_answered_just_before(openai_emu, start_gateway, tmp_path):
    config = gateway_config(openai_emu, f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")
    url = start_gateway(config)
    body = {"model": "gpt-4o", "messages": HELLO}
    headers = {"authorization": f"Bearer {MASTER}"}
    for expected in (1, 2):
        sent = httpx.post(url + "/chat/completions", json=body, headers=headers, timeout=10)
        assert sent.status_code == 200
        # The ledger's flush interval is 2 s: the report waits for the writer, not the timer.
        assert get(url, "/spend").json()["total"]["requests"] == expected


def test_relative_since_and_until_read_as_before_now(traffic):
    everything = len(traffic.request_ids)
    assert get(traffic.url, "/spend", since="30m").json()["total"]["requests"] == everything
    assert get(traffic.url, "/spend", since="2h", until="1h").json()["total"]["requests"] == 0
    assert get(traffic.url, "/spend", until="10m").json()["total"]["requests"] == 0


def test_since_and_until_take_iso_dates_and_timestamps(traffic):
    today = datetime.now(UTC).date()
    report = get(traffic.url, "/spend", group_by="day", since=today.isoformat()).json()
    assert report["since"] == f"{today.isoformat()}T00:00:00+00:00"
    assert [r["group"] for r in report["data"]] == [today.isoformat()]
    # An offset sent unencoded ('+' reads as a space in a query string) is still understood.
    raw = httpx.get(
        traffic.url + "/spend?since=2020-01-01T00:00:00+02:00",
        headers={"authorization": f"Bearer {MASTER}"},
        timeout=10,
    )
    assert raw.json()["since"] == "2019-12-31T22:00:00+00:00"


def test_report_defaults_to_the_last_30_days_by_model(traffic):
    report = get(traffic.url, "/spend").json()
    since, until = (datetime.fromisoformat(report[k]) for k in ("since", "until"))
    assert report["group_by"] == "model"
    assert (until - since).days == 30 and abs(datetime.now(UTC) - until).total_seconds() < 60


# -- the records -------------------------------------------------------------------------
def test_record_pages_walk_every_request_exactly_once(traffic):
    records = all_records(traffic.url, limit=3)
    ids = [r["request_id"] for r in records]
    assert sorted(ids) == sorted(traffic.request_ids)  # each once, none missing
    started = [r["started_at"] for r in records]
    assert started == sorted(started)


def test_record_json_keeps_money_as_decimal_strings(traffic):
    records = {r["request_id"]: r for r in all_records(traffic.url, limit=100)}
    first = records[traffic.request_ids[0]]
    assert first["cost_usd"] == "0.0000225" and first["end_user"] == "alice"
    assert first["model"] == "gpt-4o" and first["status"] == 200
    unknown = [r for r in records.values() if r["model"] == "llama"]
    assert [r["cost_usd"] for r in unknown] == [None]


# -- CSV ---------------------------------------------------------------------------------
@pytest.mark.parametrize("group_by", ["model", "key"])
def test_report_csv_parses_back_to_the_json_report(traffic, group_by):
    resp = get(traffic.url, "/spend", group_by=group_by, format="csv")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/csv")
    assert f"spend-by-{group_by}.csv" in resp.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    from_csv = {
        row[group_by] or None: SpendRow(
            row[group_by] or None,
            **{k: int(row[k]) for k in SUMS if k != "cost_usd"},
            cost_usd=Decimal(row["cost_usd"] or 0),  # empty: every cost unknown
        )
        for row in rows
    }
    from_json = {
        r.group: r
        for r in map(as_row, get(traffic.url, "/spend", group_by=group_by).json()["data"])
    }
    assert from_csv == from_json


def test_records_csv_holds_the_records_of_the_json_pages(traffic):
    resp = get(traffic.url, "/spend/records", format="csv")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    records = {r["request_id"]: r for r in all_records(traffic.url, limit=100)}
    assert [row["request_id"] for row in rows] == list(records)
    for row in rows:
        record = records[row["request_id"]]
        assert (Decimal(row["cost_usd"]) if row["cost_usd"] else None) == (
            Decimal(record["cost_usd"]) if record["cost_usd"] is not None else None
        )
        assert int(row["prompt_tokens"]) == record["prompt_tokens"]
        assert row["key_id"] == (record["key_id"] or "")


def test_csv_export_and_report_over_whole_days_of_many_records(
    openai_upstream, start_gateway, tmp_path
):
    ledger_url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
    url = start_gateway(gateway_config(openai_upstream, ledger_url))
    records = make_records(2500, start=DAY0, span=timedelta(days=4))  # 3 pages of the export
    asyncio.run(store(ledger_url, records))
    period = {"since": DAY0.date().isoformat(), "until": "2026-03-05"}

    resp = get(url, "/spend/records", format="csv", **period)
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    in_order = sorted(records, key=lambda r: (r.started_at, r.request_id))
    assert [row["request_id"] for row in rows] == [r.request_id for r in in_order]
    exported = sum(Decimal(row["cost_usd"]) for row in rows if row["cost_usd"])
    assert exported == sum(r.cost_usd for r in records if r.cost_usd is not None)

    report = get(url, "/spend", group_by="day", **period).json()  # from the daily roll-up
    since, until = (datetime.fromisoformat(report[k]) for k in ("since", "until"))
    assert {r.group: r for r in map(as_row, report["data"])} == expected_report(
        records, "day", since, until
    )


async def store(ledger_url: str, records: list[SpendRecord]) -> None:
    engine = create_ledger_engine(ledger_url)
    try:
        await write_batch(engine, records)
    finally:
        await engine.dispose()


# -- refusals ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "param", "value"),
    [
        ("/spend", "group_by", "colour"),
        ("/spend", "since", "yesterday"),
        ("/spend", "until", "3x"),
        ("/spend", "format", "xml"),
        ("/spend", "groupby", "key"),  # misspelt: must not report by model instead
        ("/spend/records", "limit", "0"),
        ("/spend/records", "limit", "many"),
        ("/spend/records", "cursor", "not-a-cursor"),
    ],
)
def test_bad_parameter_is_a_400_naming_it(traffic, path, param, value):
    resp = get(traffic.url, path, **{param: value})
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert param in error["message"]


def test_since_after_until_is_a_400(traffic):
    resp = get(traffic.url, "/spend", since="1h", until="2h")
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "since"


def test_csv_export_refuses_paging_parameters(traffic):
    resp = get(traffic.url, "/spend/records", format="csv", limit="5")
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "limit"


@pytest.mark.parametrize("path", ["/spend", "/spend/records"])
def test_wrong_or_missing_key_is_a_401(traffic, path):
    assert get(traffic.url, path, key="sk-wrong").status_code == 401
    missing = httpx.get(traffic.url + path, timeout=10)
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error"


def test_a_virtual_key_reads_only_its_own_spend(traffic):
    key = asyncio.run(create_reader_key(traffic.config["ledger"]["url"]))
    report = get(traffic.url, "/spend", key=key)
    assert report.status_code == 200
    assert report.json()["total"]["requests"] == 0  # the traffic was made with the master key
    records = get(traffic.url, "/spend/records", key=key)
    assert records.status_code == 200 and records.json()["data"] == []
    other = get(traffic.url, "/spend", key=key, key_id="someone-else")
    assert other.status_code == 403
    assert other.json()["error"]["code"] == "key_id_not_allowed"


async def create_reader_key(ledger_url: str) -> str:
    ledger = Ledger(LedgerConfig(url=ledger_url, migrate=False))
    try:
        _, secret = await KeyStore(ledger.engine).create_key(name="reader")
        return secret
    finally:
        await ledger.engine.dispose()


def test_disabled_ledger_is_a_404_saying_so(openai_upstream, start_gateway):
    config = gateway_config(openai_upstream, "sqlite+aiosqlite:///unused.db")
    config["ledger"] = {"enabled": False}
    url = start_gateway(config)
    for path in ("/spend", "/spend/records"):
        resp = get(url, path)
        assert resp.status_code == 404
        assert "ledger.enabled: false" in resp.json()["error"]["message"]


# -- the command line ----------------------------------------------------------------------
def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, timeout=60, env=env)


@pytest.fixture(scope="module")
def config_file(traffic: Traffic, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spend-cli") / "gateway.yaml"
    path.write_text(json.dumps(traffic.config))  # JSON is YAML
    return path


def cli_cells(sums: dict[str, Any]) -> list[str]:
    """The CLI's cells for a report row's JSON sums: a cost that leaves out unknown costs is
    a lower bound (">="), a wholly unknown one reads "unknown"."""
    cells = [str(sums[k]) for k in SUMS]
    cost = sums["cost_usd"]
    cells[SUMS.index("cost_usd")] = (
        "unknown" if cost is None else (">=" if sums["unknown_cost_requests"] else "") + cost
    )
    return cells


def total_line(output: str) -> list[str]:
    (line,) = [line for line in output.splitlines() if line.startswith("TOTAL")]
    return line.split()


def test_cli_prints_the_report_with_its_total(traffic, config_file):
    report = get(traffic.url, "/spend", since="1h").json()  # also: the writer has caught up
    done = run_cli("spend", "--config", str(config_file), "--by", "model", "--since", "1h")
    assert done.returncode == 0, done.stderr
    total = report["total"]
    # The columns: the group, the sums in the JSON's order (cost, then unknown-cost requests).
    assert total_line(done.stdout) == ["TOTAL", *cli_cells(total)]
    for row in report["data"]:
        assert any(line.split()[0] == row["group"] for line in done.stdout.splitlines() if line)
    assert "1 of" in done.stdout and "unknown cost" in done.stdout


def test_cli_csv_is_the_http_csv(traffic, config_file):
    get(traffic.url, "/spend")
    done = run_cli("spend", "--config", str(config_file), "--by", "key", "--csv", "--since", "1d")
    assert done.returncode == 0, done.stderr
    http = get(traffic.url, "/spend", group_by="key", format="csv", since="1d").text
    assert list(csv.reader(io.StringIO(done.stdout))) == list(csv.reader(io.StringIO(http)))


def test_cli_asks_a_running_gateway_with_url(traffic):
    base = traffic.url.removesuffix("/v1")
    done = run_cli("spend", "--url", base, "--api-key", MASTER, "--by", "day")
    assert done.returncode == 0, done.stderr
    total = get(traffic.url, "/spend", group_by="day").json()["total"]
    assert total_line(done.stdout)[1] == str(total["requests"])
    assert total_line(done.stdout)[-2] == ">=" + total["cost_usd"]  # one cost unknown
    refused = run_cli("spend", "--url", base, "--api-key", "sk-wrong")
    assert refused.returncode == 1 and "401" in refused.stderr


def test_cli_names_a_bad_since(config_file):
    done = run_cli("spend", "--config", str(config_file), "--since", "last week")
    assert done.returncode == 2 and "--since" in done.stderr


def test_cli_says_when_there_is_no_ledger_database(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(json.dumps({"ledger": {"url": f"sqlite:///{tmp_path / 'none.db'}"}}))
    done = run_cli("spend", "--config", str(path))
    assert done.returncode == 1 and "no ledger database" in done.stderr
    assert not (tmp_path / "none.db").exists()


# -- PostgreSQL --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def postgres_traffic(
    openai_upstream: OpenAIEmulator, start_gateway: GatewayFactory
) -> Iterator[Traffic]:
    with scratch_postgres() as url:
        yield make_traffic(openai_upstream, start_gateway, url)


@pytest.mark.parametrize("group_by", ["model", "key", "day"])
def test_report_on_postgresql_equals_the_sums_of_its_records(postgres_traffic, group_by):
    report = get(postgres_traffic.url, "/spend", group_by=group_by).json()
    since, until = (datetime.fromisoformat(report[k]) for k in ("since", "until"))
    records = [as_record(r) for r in all_records(postgres_traffic.url)]
    assert sorted(r.request_id for r in records) == sorted(postgres_traffic.request_ids)
    rows = {row.group: row for row in map(as_row, report["data"])}
    assert rows == expected_report(records, group_by, since, until)
    assert as_row(report["total"]).cost_usd == 6 * Decimal("0.0000225") + 7 * Decimal("0.00000002")


def test_cli_reads_a_postgresql_ledger(postgres_traffic, tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(json.dumps(postgres_traffic.config))
    total = get(postgres_traffic.url, "/spend", group_by="provider").json()["total"]
    done = run_cli("spend", "--config", str(path), "--by", "provider")
    assert done.returncode == 0, done.stderr
    assert total_line(done.stdout) == ["TOTAL", *cli_cells(total)]


# -- names beside ids ----------------------------------------------------------------------
def test_report_by_key_or_team_carries_names_beside_ids(traffic):
    key_a, key_b = traffic.key_ids
    by_key = get(traffic.url, "/spend", group_by="key").json()["data"]
    assert {r["group"]: r["name"] for r in by_key} == {None: None, key_a: "a", key_b: "b"}
    by_team = get(traffic.url, "/spend", group_by="team").json()["data"]
    assert {r["group"]: r["name"] for r in by_team} == {None: None, traffic.team_id: "research"}
    assert "name" not in get(traffic.url, "/spend", group_by="model").json()["data"][0]
    text = get(traffic.url, "/spend", group_by="key", format="csv").text
    assert text.splitlines()[0].startswith("key,name,requests")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {r["key"]: r["name"] for r in rows} == {"": "", key_a: "a", key_b: "b"}


def test_cli_shows_key_names_beside_their_ids(traffic, config_file):
    key_a, key_b = traffic.key_ids
    get(traffic.url, "/spend")  # the writer has caught up
    done = run_cli("spend", "--config", str(config_file), "--by", "key", "--since", "1d")
    assert done.returncode == 0, done.stderr
    assert f"a ({key_a})" in done.stdout and f"b ({key_b})" in done.stdout
    base = traffic.url.removesuffix("/v1")
    remote = run_cli("spend", "--url", base, "--api-key", MASTER, "--by", "key")
    assert remote.returncode == 0, remote.stderr
    assert f"a ({key_a})" in remote.stdout and f"b ({key_b})" in remote.stdout
