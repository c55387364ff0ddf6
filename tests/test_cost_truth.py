"""Costs that cannot be known are never billed as $0, budgets fit small remainders, and every
record says what priced it — through the proxy against local upstreams, each cost checked
against a hand computation in Decimal.

The faulty upstream answers ``ok: <last user text>`` and counts tokens in words; its scenarios
``usage-input-output``, ``usage-total-only`` and ``no-usage`` send usage the gateway cannot read
(or none), ``hang`` never answers and ``cut-after:3`` breaks a stream after "ok: hello". Offline
token counts (``estimate_usage``) are deterministic, so an estimate's cost can be computed here.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from typer.testing import CliRunner

from gateway import GatewayClient
from gateway.cli import app
from gateway.config import LedgerConfig
from gateway.costs import PriceCatalog, estimate_usage
from gateway.ledger.ledger import Ledger
from gateway.ledger.records import SpendRecord
from tests.conftest import GatewayFactory
from tests.emulators.common import Fault
from tests.emulators.faulty import FaultyUpstream
from tests.emulators.mistral_api import API_KEY as MISTRAL_KEY
from tests.emulators.mistral_api import MistralEmulator
from tests.emulators.openai_api import API_KEY as OPENAI_KEY
from tests.emulators.openai_api import OpenAIEmulator
from tests.harness import ServerThread
from tests.keys_helpers import MASTER_KEY, Admin
from tests.ledger_helpers import scratch_postgres

M = Decimal(10**6)
HELLO: list[dict[str, Any]] = [{"role": "user", "content": "hello"}]
CHEAP = {"input": "1.00", "output": "2.00"}  # USD per 1M tokens
CAPPED = {"input": "1.00", "output": "10.00"}


def deployment(model: str, price: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    dep: dict[str, Any] = {"provider": "faulty", "model": model, **extra}
    if price is not None:
        dep["price"] = price
    return {"deployments": [dep]}


def gateway_config(
    up: str, mistral: str, openai_up: str, db: Path | str, **limits: Any
) -> dict[str, Any]:
    url = db if isinstance(db, str) else f"sqlite+aiosqlite:///{db}"
    return {
        "auth": {"master_key": MASTER_KEY},
        "ledger": {"url": url, "flush_interval": 0.05},
        "limits": limits,
        "routing": {
            "retries": {"attempts_per_deployment": 1},
            "circuit": {"enabled": False},
            "timeouts": {"first_token": 0.4, "idle": 0.4, "connect": 1.0, "total": 10},
        },
        "providers": {
            "faulty": {"type": "openai", "api_key": "x", "base_url": up + "/v1"},
            "mistral": {"type": "mistral", "api_key": MISTRAL_KEY, "base_url": mistral + "/v1"},
            "openai": {"type": "openai", "api_key": OPENAI_KEY, "base_url": openai_up + "/v1"},
        },
        "models": {
            "unreadable-io": deployment("usage-input-output", CHEAP),
            "unreadable-total": deployment("usage-total-only", CHEAP),
            "quiet": deployment("no-usage#quiet", CHEAP),
            "thinker": deployment(
                "no-usage#thinker", {"input": "2.00", "output": "8.00"}, base_model="o3"
            ),
            "hang": deployment("hang", CHEAP),
            "hang-fb": {**deployment("hang#fb", CHEAP), "fallbacks": ["gpt-4o"]},
            "unpriced": deployment("plain-model#unpriced"),
            "capped": deployment("capped#capped", CAPPED),
            "slow-capped": deployment("slow-first-byte:0.6#capped", CAPPED),
            "capped-uplift": deployment("capped#uplift", CAPPED, price_uplift="0.10"),
            "cut": {
                "deployments": [{"provider": "faulty", "model": "cut-after:3#cut", "price": CHEAP}],
                "fallbacks": ["mistral-small"],
            },
            "mistral-small": {
                "deployments": [
                    {
                        "provider": "mistral",
                        "model": "mistral-small-latest",
                        "price": {"input": "0.10", "output": "0.30"},
                    }
                ]
            },
            "gpt-4o": {"deployments": [{"provider": "openai", "model": "gpt-4o"}]},
            "embed": {"deployments": [{"provider": "openai", "model": "text-embedding-3-small"}]},
            # A reasoning model the catalog does not know: no output limit to reserve by.
            "deep": deployment("plain#deep", CAPPED, base_model="o9-preview"),
        },
    }


@pytest.fixture(scope="module")
def up() -> Iterator[FaultyUpstream]:
    with FaultyUpstream() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def mistral() -> Iterator[MistralEmulator]:
    emulator = MistralEmulator()
    with ServerThread(emulator.app) as server:
        emulator.url = server.url
        yield emulator


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cost-truth") / "ledger.db"


@pytest.fixture(scope="module")
def config(
    up: FaultyUpstream, mistral: MistralEmulator, openai_upstream: OpenAIEmulator, db: Path
) -> dict[str, Any]:
    return gateway_config(up.url, mistral.url, openai_upstream.url, db)


@pytest.fixture(scope="module")
def proxy(config: dict[str, Any], start_gateway: GatewayFactory) -> str:
    return start_gateway(config)


@pytest.fixture(scope="module")
def admin(proxy: str) -> Admin:
    return Admin(proxy)


def post(proxy: str, path: str, body: dict[str, Any], key: str = MASTER_KEY) -> httpx.Response:
    return httpx.post(
        proxy + path, json=body, headers={"authorization": f"Bearer {key}"}, timeout=10
    )


def post_get(proxy: str, path: str, params: dict[str, str]) -> httpx.Response:
    auth = {"authorization": f"Bearer {MASTER_KEY}"}
    return httpx.get(proxy + path, params=params, headers=auth, timeout=10)


def chat(proxy: str, model: str, key: str = MASTER_KEY, **body: Any) -> httpx.Response:
    body.setdefault("messages", HELLO)
    return post(proxy, "/chat/completions", {"model": model, **body}, key)


async def record_of(db: Path | str, request_id: str, kind: str = "call") -> SpendRecord:
    """The ledger's record of one request (waiting, boundedly, for the writer)."""
    url = db if isinstance(db, str) else f"sqlite+aiosqlite:///{db}"
    ledger = Ledger(LedgerConfig(url=url, migrate=False))
    try:
        deadline = time.monotonic() + 10
        while True:
            page = await ledger.spend_records(
                datetime.now(UTC) - timedelta(hours=1),
                datetime.now(UTC) + timedelta(hours=1),
                limit=10_000,
            )
            found = [r for r in page.records if r.request_id == request_id and r.kind == kind]
            if found or time.monotonic() > deadline:
                assert found, f"no record of {request_id}"
                return found[0]
            await asyncio.sleep(0.05)
    finally:
        await ledger.engine.dispose()


def estimated(
    model: str, generated: list[str], messages: list[dict[str, Any]] = HELLO
) -> dict[str, Any]:
    """The gateway's offline count for an OpenAI-type deployment answering as ``model``."""
    return estimate_usage(messages, generated, "openai", model)


def at(usage: dict[str, Any], price: dict[str, str]) -> Decimal:
    """Hand computation: prompt x input + completion x output, per 1M tokens."""
    prompt: int = usage["prompt_tokens"]
    completion: int = usage["completion_tokens"]
    return (prompt * Decimal(price["input"]) + completion * Decimal(price["output"])) / M


# -- 3. unknown is never $0 -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "upstream"),
    [("unreadable-io", "usage-input-output"), ("unreadable-total", "usage-total-only")],
)
async def test_unreadable_usage_is_estimated_and_flagged_not_billed_zero(
    proxy, db, model, upstream
):
    response = chat(proxy, model)
    assert response.status_code == 200, response.text
    usage = estimated(upstream, ["ok: hello"])
    cost = at(usage, CHEAP)
    assert cost > 0
    assert Decimal(response.headers["x-gateway-cost"]) == cost
    assert response.headers["x-gateway-usage-estimated"] == "true"
    record = await record_of(db, response.headers["x-request-id"])
    assert record.cost_usd == cost and record.usage_estimated is True
    assert record.usage_basis == "estimated"
    assert (record.prompt_tokens, record.completion_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert "could not be read" in (record.cost_note or "")


async def test_timed_out_attempt_is_billed_its_estimated_input(proxy, db, up):
    """The upstream accepted the request and never answered: the provider may bill the
    prompt, so the record holds its estimated input cost, flagged, not a known $0."""
    response = chat(proxy, "hang")
    assert response.status_code == 504, response.text
    assert len(up.attempts_for("hang")) == 1
    usage = estimated("hang", [])
    cost = usage["prompt_tokens"] * Decimal(CHEAP["input"]) / M
    record = await record_of(db, response.headers["x-request-id"])
    assert record.status == 504
    assert record.cost_usd == cost > 0
    assert record.usage_estimated is True and record.prompt_tokens == usage["prompt_tokens"]
    assert "no answer" in (record.cost_note or "")
    assert (record.price_model, record.price_source) == ("hang", "deployment price")


async def test_answer_after_a_timed_out_attempt_bills_both(proxy, db, openai_upstream):
    """The first deployment times out after accepting the request; the fallback answers.
    The call costs the fallback's answer plus the first attempt's estimated input."""
    openai_upstream.reset()
    response = chat(proxy, "hang-fb")
    assert response.status_code == 200, response.text
    assert response.headers["x-gateway-fallback-used"] == "true"
    entry = PriceCatalog.shipped().lookup("openai", "gpt-4o")
    assert entry is not None and entry.input is not None and entry.output is not None
    answered = (1 * entry.input + 2 * entry.output) / M  # the emulator: 1 prompt, 2 answer tokens
    lost = estimated("hang#fb", [])["prompt_tokens"] * Decimal(CHEAP["input"]) / M
    assert Decimal(response.headers["x-gateway-cost"]) == answered + lost
    assert response.headers["x-gateway-usage-estimated"] == "true"
    record = await record_of(db, response.headers["x-request-id"])
    assert record.cost_usd == answered + lost and record.attempts == 2


def test_report_of_an_all_unknown_group_says_null_and_sorts_first(proxy, db, config, tmp_path):
    """JSON: cost_usd null for a group whose every cost is unknown, beside
    unknown_cost_requests; the total is a lower bound. CSV: an empty cost cell. CLI: "unknown",
    and ">=" on the total. The unknown group does not sort as the cheapest."""
    for _ in range(2):
        assert chat(proxy, "unpriced").status_code == 200
    assert chat(proxy, "gpt-4o").status_code == 200
    auth = {"authorization": f"Bearer {MASTER_KEY}"}
    report = httpx.get(proxy + "/spend", params={"group_by": "model", "since": "1h"}, headers=auth)
    body = report.json()
    groups = {row["group"]: row for row in body["data"]}
    assert groups["unpriced"]["cost_usd"] is None
    assert groups["unpriced"]["unknown_cost_requests"] == groups["unpriced"]["requests"] >= 2
    assert body["data"][0]["group"] == "unpriced"  # not last, as a $0 group would be
    assert groups["gpt-4o"]["cost_usd"] is not None
    assert body["total"]["cost_usd"] is not None and body["total"]["unknown_cost_requests"] >= 2

    text = httpx.get(
        proxy + "/spend",
        params={"group_by": "model", "since": "1h", "format": "csv"},
        headers=auth,
    ).text
    rows = {row["model"]: row for row in csv.DictReader(io.StringIO(text))}
    assert rows["unpriced"]["cost_usd"] == ""
    assert Decimal(rows["gpt-4o"]["cost_usd"]) == Decimal(groups["gpt-4o"]["cost_usd"])

    path = tmp_path / "gateway.yaml"
    path.write_text(json.dumps(config))
    done = CliRunner().invoke(app, ["spend", "--config", str(path), "--since", "1h"])
    assert done.exit_code == 0, done.output
    lines = {line.split()[0]: line.split() for line in done.output.splitlines() if line.strip()}
    assert lines["unpriced"][-2] == "unknown"
    assert lines["TOTAL"][-2].startswith(">=")


async def test_unreadable_embeddings_usage_is_counted_offline(proxy, db, openai_upstream):
    """The upstream reports ``input_tokens`` only: the input is counted offline (token
    arrays exactly) at the embedding price, not billed $0."""
    openai_upstream.reset()
    answer = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": [0.1]} for i in range(2)],
        "model": "text-embedding-3-small",
        "usage": {"input_tokens": 5},
    }
    openai_upstream.fail_next(Fault(status=200, body=json.dumps(answer).encode()))
    response = post(proxy, "/embeddings", {"model": "embed", "input": [[1, 2, 3], [4, 5]]})
    assert response.status_code == 200, response.text
    price = PriceCatalog.shipped().lookup("openai", "text-embedding-3-small")
    assert price is not None and price.embedding_rate is not None
    cost = 5 * price.embedding_rate / M
    assert Decimal(response.headers["x-gateway-cost"]) == cost
    assert response.headers["x-gateway-usage-estimated"] == "true"
    record = await record_of(db, response.headers["x-request-id"])
    assert (record.cost_usd, record.prompt_tokens, record.usage_estimated) == (cost, 5, True)


def test_remote_client_reads_an_all_unknown_group_as_unknown(proxy):
    """``GatewayClient.spend.report``: a null cost is no error and no $0."""
    assert chat(proxy, "unpriced").status_code == 200
    assert chat(proxy, "gpt-4o").status_code == 200
    with GatewayClient(proxy.removesuffix("/v1"), api_key=MASTER_KEY) as client:
        report = client.spend.report(group_by="model", since="1h")
        records = list(client.spend.records(since=report.since, until=report.until))
    rows = {row.group: row for row in report.rows}
    assert rows["unpriced"].cost is None and rows["unpriced"].unknown_cost_requests >= 1
    assert rows["gpt-4o"].cost == rows["gpt-4o"].cost_usd > 0
    assert any(r.model == "unpriced" and r.cost_usd is None for r in records)


# -- 3. no unmetered calls ------------------------------------------------------------------


async def test_key_with_a_budget_cannot_call_an_unpriced_model(proxy, admin, up):
    """Before: a $0.001 key made 30 calls to an unpriced model. Now the first is refused."""
    key = admin.create_key(name="frugal", budget_usd="0.001", budget_period="total")["key"]
    before = len(up.attempts_for("plain-model#unpriced"))
    response = chat(proxy, "unpriced", key)
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "model_unpriced" and error["param"] == "model"
    assert "'unpriced'" in error["message"] and "limits.unpriced" in error["message"]
    assert len(up.attempts_for("plain-model#unpriced")) == before  # never sent upstream
    free = admin.create_key(name="no-budget")["key"]
    assert chat(proxy, "unpriced", free).status_code == 200  # no budget: recorded as unknown


async def test_metering_rule_prices_unpriced_calls_and_budget_stops_them(
    up, mistral, openai_upstream, tmp_path, start_gateway
):
    """With ``limits.unpriced.price`` the same key's calls are metered at that price: each
    costs 1 prompt word x $2 + 2 answer words x $4 = $0.00001, and the budget binds."""
    db = tmp_path / "metered.db"
    metered = {"price": {"input": "2.00", "output": "4.00"}}
    url = start_gateway(
        gateway_config(up.url, mistral.url, openai_upstream.url, db, unpriced=metered)
    )
    key = Admin(url).create_key(name="metered", budget_usd="0.0001", budget_period="total")
    response = chat(url, "unpriced", key["key"], max_tokens=4)
    assert response.status_code == 200, response.text
    cost = (1 * Decimal(2) + 2 * Decimal(4)) / M
    assert Decimal(response.headers["x-gateway-cost"]) == cost
    record = await record_of(db, response.headers["x-request-id"])
    assert record.cost_usd == cost and record.price_source == "limits.unpriced"
    statuses = [chat(url, "unpriced", key["key"], max_tokens=4).status_code for _ in range(12)]
    # Each reserves (5 + 16) x $2 + 4 x $4 = $0.000058 and settles at $0.00001.
    assert 429 in statuses and statuses.count(200) < 12


# -- 4. budgets that fit small remainders ---------------------------------------------------


def test_small_remainder_caps_the_output_and_never_overspends(proxy, admin, up):
    """Budget $0.0005 (price $1 in / $10 out per 1M). A "abcd" request without max_tokens would
    reserve (4 + 16) x $1 + 4096 x $10 per 1M = $0.04098, refused before. Now it is capped to
    what the remainder pays: (500 - 20) / 10 = 48 tokens, reserving exactly $0.0005; each next
    call is capped to the new remainder until not even 16 tokens fit."""
    key = admin.create_key(name="small", budget_usd="0.0005", budget_period="total")["key"]
    remaining = Decimal("0.0005")
    caps = []
    for _ in range(40):
        response = chat(proxy, "capped", key, messages=[{"role": "user", "content": "abcd"}])
        if response.status_code != 200:
            break
        sent = up.attempts_for("capped#capped")[-1].body
        cap = int(response.headers["x-gateway-budget-capped-max-tokens"])
        assert sent["max_tokens"] == cap
        assert (20 * Decimal(1) + cap * Decimal(10)) / M <= remaining  # what was reserved
        assert cap == int((remaining * M - 20) / 10)
        caps.append(cap)
        remaining -= Decimal(response.headers["x-gateway-cost"])  # 1 x $1 + 2 x $10 = $21e-6
    assert caps[0] == 48
    assert response.status_code == 429 and response.json()["error"]["code"] == "budget_exceeded"
    assert (20 + 16 * 10) / M > remaining >= 0  # refused only when 16 tokens no longer fit


def test_a_deployment_uplift_is_reserved_so_the_capped_call_still_fits(proxy, admin, up):
    """With a +10% uplift, prompt and output tokens cost $1.1 and $11 per 1M: the remainder
    $0.0005 pays for (500 - 20 x 1.1) / 11 = 43 output tokens, not the 48 of the flat price,
    and the call's billed cost stays within the budget."""
    key = admin.create_key(name="uplift", budget_usd="0.0005", budget_period="total")["key"]
    response = chat(proxy, "capped-uplift", key, messages=[{"role": "user", "content": "abcd"}])
    assert response.status_code == 200, response.text
    assert response.headers["x-gateway-budget-capped-max-tokens"] == "43"
    assert up.attempts_for("capped#uplift")[-1].body["max_tokens"] == 43
    assert (
        Decimal(response.headers["x-gateway-cost"]) == (1 * Decimal("1.1") + 2 * Decimal("11")) / M
    )


def test_capped_reservation_covers_the_capped_worst_case_while_in_flight(proxy, admin, up):
    """While the capped call (48 tokens, reserving $0.0005: all of the budget) is in flight,
    another finds nothing left and is refused, naming that reservation."""
    key = admin.create_key(name="inflight", budget_usd="0.0005", budget_period="total")["key"]
    first: list[httpx.Response] = []
    body = {"messages": [{"role": "user", "content": "abcd"}]}
    thread = threading.Thread(target=lambda: first.append(chat(proxy, "slow-capped", key, **body)))
    before = len(up.attempts_for("slow-first-byte:0.6#capped"))
    thread.start()
    deadline = time.monotonic() + 5
    while len(up.attempts_for("slow-first-byte:0.6#capped")) == before:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    second = chat(proxy, "capped", key, **body)
    thread.join(10)
    assert first[0].headers["x-gateway-budget-capped-max-tokens"] == "48"
    assert second.status_code == 429
    assert "(+ $0.0005 reserved by requests in flight)" in second.json()["error"]["message"]


def test_budget_reserves_for_reasoning_and_caps_max_completion_tokens(proxy, admin, up):
    """An uncapped call to a reasoning model without a catalog output limit reserves 32768
    output tokens, not the 4096 default: (21 + 32768 x 10) / 1M = $0.327701 does not fit $0.10
    (4096 tokens would have), so its output is capped to (100000 - 21) / 10 = 9997 tokens, in
    the field reasoning models take."""
    key = admin.create_key(name="reasoning", budget_usd="0.10", budget_period="total")["key"]
    response = chat(proxy, "deep", key)
    assert response.status_code == 200, response.text
    assert response.headers["x-gateway-budget-capped-max-tokens"] == "9997"
    sent = up.attempts_for("plain#deep")[-1].body
    assert sent["max_completion_tokens"] == 9997 and "max_tokens" not in sent


# -- 5. honest estimates --------------------------------------------------------------------


async def test_reasoning_model_estimate_is_a_lower_bound(proxy, db):
    response = chat(proxy, "thinker")
    assert response.status_code == 200
    assert response.headers["x-gateway-usage-estimated"] == "lower_bound"
    usage = estimated("no-usage#thinker", ["ok: hello"])
    record = await record_of(db, response.headers["x-request-id"])
    assert record.usage_basis == "lower_bound"
    assert record.cost_usd == at(usage, {"input": "2.00", "output": "8.00"})


@pytest.mark.parametrize(
    ("model", "upstream", "price", "flag"),
    [
        ("quiet", "no-usage#quiet", CHEAP, True),
        ("unreadable-io", "usage-input-output", CHEAP, True),
        ("thinker", "no-usage#thinker", {"input": "2.00", "output": "8.00"}, "lower_bound"),
    ],
)
def test_estimated_stream_sends_its_flagged_usage_chunk_through_the_openai_sdk(
    proxy: str, model: str, upstream: str, price: dict[str, str], flag: object
) -> None:
    """No usage, or usage in another shape: the caller who asked for usage still gets the
    chunk, counted offline, priced, and flagged in an extra field the SDK keeps."""
    client = openai.OpenAI(base_url=proxy, api_key=MASTER_KEY, max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "hello"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert [c for c in chunks if c.usage is not None] == [last]  # one usage chunk
    usage = estimated(upstream, ["ok: hello"])
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )
    assert last.usage.model_extra is not None and last.model_extra is not None
    assert "input_tokens" not in last.usage.model_extra
    assert Decimal(last.usage.model_extra["cost"]) == at(usage, price)
    assert last.model_extra["x_gateway"]["usage_estimated"] == flag
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "ok: hello"


async def test_continued_stream_records_the_tokens_of_both_parts(proxy, db, mistral):
    mistral.reset()
    with httpx.stream(
        "POST",
        proxy + "/chat/completions",
        json={
            "model": "cut",
            "messages": [{"role": "user", "content": "hello world"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        headers={"authorization": f"Bearer {MASTER_KEY}"},
        timeout=10,
    ) as response:
        request_id = response.headers["x-request-id"]
        events = [
            json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")
        ]
    [sent] = mistral.requests
    broken_text = sent.body["messages"][-1]["content"]
    assert broken_text == "ok: hello"
    second = events[-1]["usage"]  # the continuation's own usage, as Mistral reported it
    first = estimated(
        "cut-after:3#cut", [broken_text], [{"role": "user", "content": "hello world"}]
    )
    record = await record_of(db, request_id)
    assert record.prompt_tokens == first["prompt_tokens"] + second["prompt_tokens"]
    assert record.completion_tokens == first["completion_tokens"] + second["completion_tokens"]
    mistral_price = {"input": "0.10", "output": "0.30"}
    assert record.cost_usd == at(first, CHEAP) + at(second, mistral_price)
    assert record.usage_estimated is True


# -- 6. provenance --------------------------------------------------------------------------


async def test_record_names_the_catalog_entry_that_priced_it(proxy, db):
    response = chat(proxy, "gpt-4o")
    assert response.status_code == 200
    entry = PriceCatalog.shipped().lookup("openai", "gpt-4o")
    assert entry is not None
    record = await record_of(db, response.headers["x-request-id"])
    assert (record.price_family, record.price_model) == ("openai", entry.model)
    assert record.price_source == entry.source
    assert record.price_effective == (getattr(entry, "effective", None) or entry.checked)
    assert record.kind == "call" and record.adjusts is None


async def test_unknown_record_says_why(proxy, db):
    response = chat(proxy, "unpriced")
    record = await record_of(db, response.headers["x-request-id"])
    assert record.cost_usd is None and record.price_model is None
    assert "no price" in (record.cost_note or "")


# -- the same on PostgreSQL -----------------------------------------------------------------


async def test_postgresql_ledger_keeps_estimates_unknowns_and_provenance(
    up, mistral, openai_upstream, start_gateway
):
    with scratch_postgres() as url:
        proxy = start_gateway(gateway_config(up.url, mistral.url, openai_upstream.url, url))
        priced = chat(proxy, "gpt-4o").headers["x-request-id"]
        unreadable = chat(proxy, "unreadable-io").headers["x-request-id"]
        unknown = chat(proxy, "unpriced").headers["x-request-id"]
        entry = PriceCatalog.shipped().lookup("openai", "gpt-4o")
        assert entry is not None
        record = await record_of(url, priced)
        assert (record.price_family, record.price_model, record.price_source) == (
            "openai",
            entry.model,
            entry.source,
        )
        record = await record_of(url, unreadable)
        assert record.cost_usd == at(estimated("usage-input-output", ["ok: hello"]), CHEAP)
        assert record.usage_basis == "estimated"
        record = await record_of(url, unknown)
        assert record.cost_usd is None and "no price" in (record.cost_note or "")
        report = post_get(proxy, "/spend", {"group_by": "model", "since": "1h"}).json()
        groups = {row["group"]: row for row in report["data"]}
        assert groups["unpriced"]["cost_usd"] is None
        assert report["data"][0]["group"] == "unpriced"
