"""Batch jobs through the gateway: OpenAI's Files and Batches API in front of OpenAI's,
Azure's and Mistral's batch APIs (the emulator in tests/emulators/batch_api.py), through the
official ``openai`` SDK; budgets reserved at creation and settled at the end; a ledger record
per result line at batch prices; the poller following jobs across a restart."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
import yaml
from typer.testing import CliRunner

from gateway.batch import Batches
from gateway.batch.store import BatchStore
from gateway.cli import app as cli
from gateway.config import resolve_config
from gateway.engine import Engine
from gateway.ledger.db import create_ledger_engine
from gateway.ledger.records import SpendRecord
from gateway.limits import ScopeLimits
from gateway.sdk.local import AsyncGateway, Gateway
from gateway.sdk.remote import AsyncGatewayClient, GatewayClient
from gateway.server.app import create_app
from gateway.ui.views import money
from tests.conftest import SINGLE_ATTEMPT
from tests.emulators.batch_api import AZURE_KEY, MISTRAL_KEY, BatchEmulator
from tests.emulators.common import Fault
from tests.emulators.openai_api import API_KEY
from tests.harness import ServerThread
from tests.keys_helpers import MASTER_KEY, Admin, key_records
from tests.ledger_helpers import scratch_postgres

# USD per 1M tokens in the shipped catalog, and at half price for batch jobs.
GPT_4O_MINI = (Decimal("0.15"), Decimal("0.6"))
MISTRAL_SMALL = (Decimal("0.15"), Decimal("0.6"))  # since 2026-03-16
GPT_4O = (Decimal("2.5"), Decimal("10"))
HALF = Decimal("0.5")


@pytest.fixture(scope="module")
def emulator() -> Iterator[BatchEmulator]:
    emu = BatchEmulator()
    with ServerThread(emu.app) as server:
        emu.url = server.url
        yield emu


@pytest.fixture
def emu(emulator: BatchEmulator) -> BatchEmulator:
    emulator.reset()
    return emulator


def config(upstream: str, db: Path, **sections: Any) -> dict[str, Any]:
    azure = {"type": "azure", "endpoint": upstream, "api_key": AZURE_KEY}
    return {
        "auth": {"master_key": MASTER_KEY},
        "routing": SINGLE_ATTEMPT,
        "ledger": {"url": f"sqlite+aiosqlite:///{db}", "flush_interval": 0.05},
        "batches": {"poll_interval": 3600},  # the tests look when they want
        "providers": {
            "openai": {
                "type": "openai",
                "api_key": API_KEY,
                "base_url": upstream + "/v1",
                "region": "us",
            },
            "azure": {**azure, "api_version": "2024-10-21", "region": "eu"},
            "azure-v1": {**azure, "api_style": "v1", "region": "eu"},
            "mistral": {
                "type": "mistral",
                "api_key": MISTRAL_KEY,
                "base_url": upstream + "/mistral/v1",
                "region": "eu",
            },
        },
        "models": {
            "gpt-4o-mini": {"deployments": [{"provider": "openai", "model": "gpt-4o-mini"}]},
            "mistral-small": {
                "deployments": [{"provider": "mistral", "model": "mistral-small-latest"}]
            },
            "gpt-4o": {
                "deployments": [
                    {
                        "provider": "azure",
                        "deployment": "gpt-4o-global-batch",
                        "base_model": "gpt-4o",
                        "capabilities": {"batch": True},
                    }
                ]
            },
            "gpt-4o-next": {
                "deployments": [
                    {
                        "provider": "azure-v1",
                        "deployment": "gpt-4o-batch-v1",
                        "base_model": "gpt-4o",
                        "capabilities": {"batch": True},
                    }
                ]
            },
            "gpt-4o-live": {
                "deployments": [
                    {"provider": "azure", "deployment": "gpt-4o-standard", "base_model": "gpt-4o"}
                ]
            },
        },
        **sections,
    }


@pytest.fixture
def gateway(emu: BatchEmulator, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    db = tmp_path / "ledger.db"
    with ServerThread(create_app(config(emu.url, db))) as server:
        yield server.url + "/v1", db


def jsonl(model: str, n: int = 3, max_tokens: int = 50) -> bytes:
    lines = [
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": model,
                "messages": [{"role": "user", "content": f"question number {i}"}],
                "max_tokens": max_tokens,
            },
        }
        for i in range(n)
    ]
    return b"\n".join(orjson.dumps(x) for x in lines) + b"\n"


def sdk(base_url: str, key: str = MASTER_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=10)


def submit(client: openai.OpenAI, model: str, n: int = 3, max_tokens: int = 50) -> Any:
    file = client.files.create(file=("in.jsonl", jsonl(model, n, max_tokens)), purpose="batch")
    return client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )


def retrieve(client: openai.OpenAI, batch_id: str) -> Any:
    return client.batches.retrieve(batch_id)


def read_lines(client: openai.OpenAI, file_id: str) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in client.files.content(file_id).content.splitlines()]


def gateway_costs(base_url: str, batch_id: str, key: str) -> tuple[Decimal, Decimal]:
    """What the gateway settled a batch at, and what its lines would have cost live."""
    answer = httpx.get(f"{base_url}/batches/{batch_id}", headers={"authorization": f"Bearer {key}"})
    return Decimal(answer.headers["x-gateway-cost"]), Decimal(answer.headers["x-gateway-live-cost"])


async def all_records(db: Path, at_least: int) -> list[SpendRecord]:
    """Every ledger record, waiting (bounded) until ``at_least`` are written."""
    return await key_records(db, None, at_least)  # type: ignore[arg-type]  # None: every key


def batch_cost(results: list[dict[str, Any]], rates: tuple[Decimal, Decimal]) -> Decimal:
    """What the result lines cost at half the standard rates."""
    total = Decimal(0)
    for line in results:
        usage = line["response"]["body"]["usage"]
        total += (
            usage["prompt_tokens"] * rates[0] * HALF + usage["completion_tokens"] * rates[1] * HALF
        ) / 10**6
    return total


@pytest.mark.parametrize(
    ("model", "dialect", "root", "rates"),
    [
        ("gpt-4o-mini", "openai", "/v1/", GPT_4O_MINI),
        ("mistral-small", "mistral", "/mistral/v1/", MISTRAL_SMALL),
        ("gpt-4o", "azure", "/openai/files", GPT_4O),
        ("gpt-4o-next", "azure", "/openai/v1/", GPT_4O),  # Azure's v1 API style
    ],
)
async def test_a_batch_runs_end_to_end_through_the_openai_sdk(
    gateway, emu, model, dialect, root, rates
):
    base_url, _ = gateway
    client = sdk(base_url)
    batch = await asyncio.to_thread(submit, client, model)
    assert batch.status == "validating" and batch.request_counts.total == 3
    job = emu.only_job()
    assert job.dialect == dialect
    assert emu.requests[0].path.startswith(root)  # the upload

    emu.start(job)
    seen = await asyncio.to_thread(retrieve, client, batch.id)
    assert seen.status == "in_progress" and seen.output_file_id is None

    emu.complete(job)
    done = await asyncio.to_thread(retrieve, client, batch.id)
    assert done.status == "completed"
    assert done.request_counts.completed == 3 and done.request_counts.failed == 0
    results = await asyncio.to_thread(read_lines, client, done.output_file_id)
    assert sorted(r["custom_id"] for r in results) == ["line-0", "line-1", "line-2"]
    assert all(r["response"]["body"]["object"] == "chat.completion" for r in results)
    assert results[0]["response"]["body"]["choices"][0]["message"]["content"].startswith("echo:")

    cost, live = await asyncio.to_thread(gateway_costs, base_url, batch.id, MASTER_KEY)
    assert cost == batch_cost(results, rates)
    assert live == 2 * cost  # what the same lines cost as live calls


def test_each_line_is_rewritten_for_the_deployment_that_runs_it(gateway, emu):
    base_url, _ = gateway
    client = sdk(base_url)
    submit(client, "gpt-4o")
    submit(client, "mistral-small")
    azure, mistral = sorted(emu.jobs.values(), key=lambda j: j.dialect)
    azure_lines, mistral_lines = emu.lines(azure), emu.lines(mistral)
    assert {line["body"]["model"] for line in azure_lines} == {"gpt-4o-global-batch"}
    assert {line["url"] for line in azure_lines} == {"/chat/completions"}
    assert all(set(line) == {"custom_id", "body"} for line in mistral_lines)
    assert mistral.model == "mistral-small-latest"
    assert next(r.query for r in emu.requests if r.path.startswith("/openai/")) == {
        "api-version": "2024-10-21"
    }


def test_a_model_that_cannot_batch_is_refused_with_the_reason(gateway, emu):
    base_url, _ = gateway
    client = sdk(base_url)
    with pytest.raises(openai.BadRequestError) as refused:
        submit(client, "gpt-4o-live")
    assert "cannot run batch jobs" in refused.value.message
    assert refused.value.code == "batch_not_supported"
    assert emu.requests == []  # nothing was uploaded


async def test_each_result_line_is_a_ledger_record_at_batch_prices(gateway, emu):
    base_url, db = gateway
    key = Admin(base_url).create_key(name="batcher")
    client = sdk(base_url, key["key"])
    batch = await asyncio.to_thread(submit, client, "gpt-4o-mini", 4)
    emu.complete(emu.only_job(), fail=frozenset({"line-3"}))
    done = await asyncio.to_thread(retrieve, client, batch.id)
    assert done.request_counts.completed == 3 and done.request_counts.failed == 1
    assert done.error_file_id is not None

    records = await key_records(db, key["id"], at_least=4)
    assert len(records) == 4
    assert {r.operation for r in records} == {"batch"}
    assert {r.tags["batch_id"] for r in records} == {batch.id}
    by_line = {r.tags["custom_id"]: r for r in records}
    failed = by_line.pop("line-3")
    assert failed.status == 400 and failed.cost_usd == 0
    for record in by_line.values():
        expected = (
            record.prompt_tokens * GPT_4O_MINI[0] * HALF
            + record.completion_tokens * GPT_4O_MINI[1] * HALF
        ) / 10**6
        assert record.prompt_tokens > 0 and record.cost_usd == expected
        assert record.price_model == "gpt-4o-mini"


async def test_spend_and_the_dashboard_show_batch_spend_and_its_saving(gateway, emu):
    base_url, db = gateway
    key = Admin(base_url).create_key(name="saver")
    client = sdk(base_url, key["key"])
    batch = await asyncio.to_thread(submit, client, "gpt-4o-mini", 3)
    emu.complete(emu.only_job(), fail=frozenset({"line-2"}))
    await asyncio.to_thread(retrieve, client, batch.id)
    records = await key_records(db, key["id"], at_least=3)

    ok = [r for r in records if r.status == 200]
    assert len(ok) == 2
    batch_total = live_total = Decimal(0)
    for r in ok:
        live = (r.prompt_tokens * GPT_4O_MINI[0] + r.completion_tokens * GPT_4O_MINI[1]) / 10**6
        cost = live * HALF
        assert r.cost_usd == cost and r.saved_usd == live - cost
        batch_total += cost
        live_total += live
    failed = next(r for r in records if r.status != 200)
    assert failed.saved_usd is None  # the provider did not bill it: nothing saved

    headers = {"authorization": f"Bearer {key['key']}"}
    async with httpx.AsyncClient(timeout=10) as http:
        report = (
            await http.get(f"{base_url}/spend", params={"since": "1d"}, headers=headers)
        ).json()
    savings = report["savings"]
    assert savings["cache_hits"] == 0 and savings["saved_usd"] == "0"
    assert savings["batch_requests"] == 3
    assert Decimal(savings["batch_cost_usd"]) == batch_total
    assert Decimal(savings["batch_saved_usd"]) == live_total - batch_total > 0
    assert Decimal(report["total"]["cost_usd"]) == batch_total

    root = base_url.removesuffix("/v1")
    async with httpx.AsyncClient(base_url=root, timeout=10) as ui:
        assert (await ui.post("/ui/login", data={"key": MASTER_KEY})).status_code == 303
        page = (await ui.get("/ui/spend")).text
    assert 'id="batch-cost" title="3 batch line(s)">' in page
    assert money(batch_total) in page and money(live_total - batch_total) in page


def reservation(n: int, max_tokens: int, content_bytes: int) -> Decimal:
    """The worst case of ``n`` gpt-4o-mini lines at batch prices (prompt bound: its bytes +
    16 per message)."""
    prompt = content_bytes + 16
    return n * (prompt * GPT_4O_MINI[0] * HALF + max_tokens * GPT_4O_MINI[1] * HALF) / 10**6


def test_a_batch_over_the_budget_is_refused_at_creation(gateway, emu):
    base_url, _ = gateway
    worst = reservation(100, 1000, len(b"question number 10"))
    key = Admin(base_url).create_key(budget_usd=str(worst / 2))
    client = sdk(base_url, key["key"])
    with pytest.raises(openai.APIStatusError) as refused:
        submit(client, "gpt-4o-mini", 100, 1000)
    assert refused.value.status_code == 429
    assert "budget" in refused.value.message
    assert emu.jobs == {}  # nothing was created upstream


async def test_a_cancelled_batch_bills_what_ran_and_releases_the_rest(gateway, emu):
    base_url, _ = gateway
    admin = Admin(base_url)
    # Room for one batch of 10 lines at its worst case, and not for two.
    worst = reservation(10, 1000, len(b"question number 0"))
    key = admin.create_key(budget_usd=str(worst * Decimal("1.5")))
    client = sdk(base_url, key["key"])
    batch = await asyncio.to_thread(submit, client, "gpt-4o-mini", 10, 1000)
    with pytest.raises(openai.APIStatusError):  # the first one's reservation holds
        await asyncio.to_thread(submit, client, "gpt-4o-mini", 10, 1000)

    cancelling = await asyncio.to_thread(client.batches.cancel, batch.id)
    assert cancelling.status == "cancelling"
    emu.finish_cancel(emu.jobs[cancelling_job(emu)], done=2)
    done = await asyncio.to_thread(retrieve, client, batch.id)
    assert done.status == "cancelled" and done.request_counts.completed == 2
    results = await asyncio.to_thread(read_lines, client, done.output_file_id)
    cost, _ = await asyncio.to_thread(gateway_costs, base_url, batch.id, key["key"])
    assert cost == batch_cost(results, GPT_4O_MINI) and cost < worst / 10

    again = await asyncio.to_thread(submit, client, "gpt-4o-mini", 10, 1000)  # released
    assert again.status == "validating"


def cancelling_job(emu: BatchEmulator) -> str:
    return next(j.id for j in emu.jobs.values() if j.status == "cancelling")


def test_files_are_uploaded_only_where_the_key_data_may_go(gateway, emu):
    base_url, _ = gateway
    key = Admin(base_url).create_key(regions=["eu"])
    client = sdk(base_url, key["key"])
    with pytest.raises(openai.PermissionDeniedError) as refused:
        submit(client, "gpt-4o-mini")  # its only deployment is in the US
    assert "regions this request may use (eu)" in refused.value.message
    assert emu.requests == []
    assert submit(client, "mistral-small").status == "validating"  # in the EU


def test_a_key_sees_only_its_own_files_and_batches(gateway, emu):
    base_url, _ = gateway
    admin = Admin(base_url)
    mine, theirs = (
        sdk(base_url, admin.create_key()["key"]),
        sdk(base_url, admin.create_key()["key"]),
    )
    batch = submit(mine, "gpt-4o-mini")
    with pytest.raises(openai.NotFoundError):
        theirs.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        theirs.files.content(batch.input_file_id)
    assert [b.id for b in mine.batches.list()] == [batch.id]
    assert list(theirs.batches.list()) == []
    assert [f.id for f in mine.files.list()] == [batch.input_file_id]
    assert mine.files.delete(batch.input_file_id).deleted is True


async def test_the_poller_finishes_a_job_after_a_restart(emu, tmp_path):
    db = tmp_path / "ledger.db"
    cfg = config(emu.url, db, batches={"poll_interval": 0.05})
    with ServerThread(create_app(cfg)) as server:
        batch = await asyncio.to_thread(submit, sdk(server.url + "/v1"), "gpt-4o-mini")
    emu.complete(emu.only_job())  # while no gateway runs

    # Another process over the same database: its poller, not a caller, finishes the job.
    store = BatchStore(create_ledger_engine(f"sqlite+aiosqlite:///{db}"))
    try:
        with ServerThread(create_app(cfg)):
            for _ in range(250):
                row = await store.batch(batch.id)
                if row is not None and row.settled:
                    break
                await asyncio.sleep(0.02)
    finally:
        await store.engine.dispose()
    assert row is not None and row.status == "completed" and row.cost_usd > 0
    records = await all_records(db, 3)
    assert sorted(r.tags["custom_id"] for r in records) == ["line-0", "line-1", "line-2"]


async def test_two_replicas_look_at_a_job_once(emu, tmp_path):
    db = tmp_path / "ledger.db"
    cfg = config(emu.url, db)
    with ServerThread(create_app(cfg)) as server:
        batch = await asyncio.to_thread(submit, sdk(server.url + "/v1"), "gpt-4o-mini")
    emu.complete(emu.only_job())
    replicas = [Engine(resolve_config(cfg)) for _ in range(2)]
    try:
        for engine in replicas:
            await engine.start()
        services = [Batches(engine) for engine in replicas]
        looked = await asyncio.gather(*(s.sync(batch.id) for s in services for _ in range(3)))
    finally:
        for engine in replicas:
            await engine.aclose()
    assert sum(looked) == 1  # one look finished it; the others found it leased or settled
    assert len([r for r in emu.requests if r.path.endswith("/content")]) == 1
    assert len(await all_records(db, 3)) == 3


def test_operators_list_show_and_sync_jobs_from_the_command_line(emu, tmp_path):
    db = tmp_path / "ledger.db"
    cfg = config(emu.url, db)
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with ServerThread(create_app(cfg)) as server:
        batch = submit(sdk(server.url + "/v1"), "mistral-small")
    emu.complete(emu.only_job())
    runner = CliRunner()

    listed = runner.invoke(cli, ["batches", "list", "-c", str(path)])
    assert listed.exit_code == 0, listed.output
    assert batch.id in listed.output and "validating" in listed.output

    synced = runner.invoke(cli, ["batches", "sync", batch.id, "-c", str(path)])
    assert synced.exit_code == 0, synced.output
    assert "looked at 1 batch job(s)" in synced.output

    shown = runner.invoke(cli, ["batches", "show", batch.id, "-c", str(path)])
    assert shown.exit_code == 0, shown.output
    body = orjson.loads(shown.output)
    assert body["status"] == "completed" and body["request_counts"]["completed"] == 3
    assert Decimal(body["gateway"]["x-gateway-cost"]) > 0


async def test_an_expired_job_bills_the_lines_that_ran(gateway, emu):
    base_url, db = gateway
    key = Admin(base_url).create_key()
    client = sdk(base_url, key["key"])
    batch = await asyncio.to_thread(submit, client, "mistral-small", 5)
    emu.complete(emu.only_job(), done=2, status="expired")
    done = await asyncio.to_thread(retrieve, client, batch.id)
    assert done.status == "expired" and done.request_counts.completed == 2
    assert done.expired_at is not None
    records = await key_records(db, key["id"], at_least=2)
    assert sorted(r.tags["custom_id"] for r in records) == ["line-0", "line-1"]


def test_a_job_the_provider_refuses_releases_its_reservation(gateway, emu):
    base_url, _ = gateway
    worst = reservation(10, 1000, len(b"question number 0"))
    key = Admin(base_url).create_key(budget_usd=str(worst * Decimal("1.5")))
    client = sdk(base_url, key["key"])
    emu.fail_next(Fault(400, orjson.dumps({"error": {"message": "quota of jobs reached"}})))
    with pytest.raises(openai.BadRequestError) as refused:
        submit(client, "gpt-4o-mini", 10, 1000)
    assert "quota of jobs reached" in refused.value.message
    assert submit(client, "gpt-4o-mini", 10, 1000).status == "validating"  # room again


async def test_a_provider_that_cannot_be_read_is_looked_at_later_and_later(emu, tmp_path):
    db = tmp_path / "ledger.db"
    cfg = config(emu.url, db, batches={"poll_interval": 10, "max_poll_interval": 30})
    with ServerThread(create_app(cfg)) as server:
        batch = await asyncio.to_thread(submit, sdk(server.url + "/v1"), "gpt-4o-mini")
    engine = Engine(resolve_config(cfg))
    await engine.start()
    try:
        batches = Batches(engine)
        waits = []
        for _ in range(3):
            emu.fail_next(Fault(503, b'{"error": {"message": "busy"}}'))
            before = datetime.now(UTC)
            assert await batches.sync(batch.id) is False
            row = await batches.store.batch(batch.id)
            assert row is not None and row.status == "validating"
            waits.append(round((row.next_poll_at - before).total_seconds()))
        emu.start(emu.only_job())
        assert await batches.sync(batch.id) is True
        row = await batches.store.batch(batch.id)
        assert row is not None and row.status == "in_progress" and row.poll_failures == 0
    finally:
        await engine.aclose()
    assert waits == [20, 30, 30]  # doubling, up to max_poll_interval


def test_the_library_runs_a_batch_in_process_and_remotely(emu, tmp_path):
    cfg = config(emu.url, tmp_path / "local.db")
    with Gateway(cfg) as local:
        file = local.files.create(file=("in.jsonl", jsonl("mistral-small")), purpose="batch")
        batch = local.batches.create(input_file_id=file.id)
        emu.complete(emu.only_job())
        done = local.batches.retrieve(batch.id)
        assert done.status == "completed" and done.request_counts is not None
        assert done.request_counts.completed == 3
        assert done.output_file_id is not None
        lines = local.files.content(done.output_file_id).splitlines()
        assert len(lines) == 3 and [b.id for b in local.batches.list()] == [batch.id]

    emu.reset()
    with ServerThread(create_app(config(emu.url, tmp_path / "remote.db"))) as server:
        remote = GatewayClient(base_url=server.url + "/v1", api_key=MASTER_KEY)
        file = remote.files.create(file=("in.jsonl", jsonl("gpt-4o-mini")))
        batch = remote.batches.create(input_file_id=file.id)
        assert remote.batches.cancel(batch.id).status == "cancelling"
        emu.finish_cancel(emu.only_job(), done=1)
        done = remote.batches.retrieve(batch.id)
        assert done.status == "cancelled" and done.output_file_id is not None
        assert len(remote.files.content(done.output_file_id).splitlines()) == 1
        assert remote.files.retrieve(file.id).bytes == len(jsonl("gpt-4o-mini"))
        assert remote.files.delete(file.id).deleted is True
        remote.close()


async def test_the_async_library_runs_a_batch_in_process_and_remotely(emu, tmp_path):
    async with AsyncGateway(config(emu.url, tmp_path / "local.db")) as local:
        file = await local.files.create(file=jsonl("gpt-4o"))
        batch = await local.batches.create(input_file_id=file.id)
        emu.complete(emu.only_job())
        done = await local.batches.retrieve(batch.id)
        assert done.status == "completed" and done.output_file_id is not None
        assert len((await local.files.content(done.output_file_id)).splitlines()) == 3

    emu.reset()
    with ServerThread(create_app(config(emu.url, tmp_path / "remote.db"))) as server:
        async with AsyncGatewayClient(base_url=server.url + "/v1", api_key=MASTER_KEY) as remote:
            file = await remote.files.create(file=("in.jsonl", jsonl("mistral-small")))
            batch = await remote.batches.create(input_file_id=file.id)
            emu.complete(emu.only_job())
            done = await remote.batches.retrieve(batch.id)
            assert done.status == "completed" and done.output_file_id is not None
            assert [f.id for f in await remote.files.list()][-1] == file.id
            assert [b.id for b in await remote.batches.list()] == [batch.id]


async def test_replicas_on_postgresql_and_redis_settle_a_job_once(emu, redis_url):
    prefix = f"test-batches-{uuid.uuid4().hex}:"
    with scratch_postgres() as database:
        cfg = config(
            emu.url,
            Path("unused.db"),
            redis={"url": redis_url, "key_prefix": prefix},
            limits={"backend": "redis"},
        )
        cfg["ledger"] = {"url": database, "flush_interval": 0.05}
        with ServerThread(create_app(cfg)) as server:
            key = Admin(server.url + "/v1").create_key(budget_usd="1")
            client = sdk(server.url + "/v1", key["key"])
            batch = await asyncio.to_thread(submit, client, "gpt-4o-mini")
        emu.complete(emu.only_job())
        replicas = [Engine(resolve_config(cfg)) for _ in range(2)]
        try:
            for engine in replicas:
                await engine.start()
            services = [Batches(engine) for engine in replicas]
            looked = await asyncio.gather(*(s.sync(batch.id) for s in services for _ in range(3)))
            records = await key_records(database, key["id"], at_least=3)
            scope = ScopeLimits(f"key:{key['id']}", budget_usd=Decimal(1))
            spent = await replicas[1].limits.spent(scope)
        finally:
            for engine in replicas:
                await engine.aclose()
    assert sum(looked) == 1
    assert len(records) == 3
    assert spent == sum((r.cost_usd or Decimal(0) for r in records), Decimal(0)) > 0


def test_a_job_that_fails_upstream_costs_nothing_and_releases_its_reservation(gateway, emu):
    base_url, _ = gateway
    worst = reservation(10, 1000, len(b"question number 0"))
    key = Admin(base_url).create_key(budget_usd=str(worst * Decimal("1.5")))
    client = sdk(base_url, key["key"])
    batch = submit(client, "mistral-small", 10, 1000)
    emu.only_job().status = "failed"  # e.g. its input failed the provider's validation
    done = client.batches.retrieve(batch.id)
    assert done.status == "failed" and done.failed_at is not None
    assert gateway_costs_or_none(base_url, batch.id, key["key"]) == Decimal(0)
    assert submit(client, "mistral-small", 10, 1000).status == "validating"  # released


def gateway_costs_or_none(base_url: str, batch_id: str, key: str) -> Decimal | None:
    answer = httpx.get(f"{base_url}/batches/{batch_id}", headers={"authorization": f"Bearer {key}"})
    cost = answer.headers.get("x-gateway-cost")
    return None if cost is None else Decimal(cost)
