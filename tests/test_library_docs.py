"""docs/library.md runs as written, and ``spend`` / ``keys`` answer alike remote and in-process.

Each ```python block of the guide is executed against a real gateway on 127.0.0.1 (``BASE_URL``,
master key ``API_KEY``, a ledger on a temporary SQLite file) and, in-process, the same config
(``CONFIG``)."""

from __future__ import annotations

import asyncio
import re
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gateway import (
    AsyncGateway,
    AsyncGatewayClient,
    AuthenticationError,
    Gateway,
    GatewayClient,
    InvalidRequestError,
)
from gateway.sdk.admin import (
    CreatedKey,
    KeyInfo,
    SpendRecordView,
    SpendReport,
    SpendReportRow,
    records_to_pandas,
)
from tests.conftest import GatewayFactory

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "library.md"
API_KEY = "sk-library-docs-master"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
SUMMED = (
    "requests",
    "errors",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "unknown_cost_requests",
)


def python_blocks() -> list[str]:
    return BLOCK.findall(GUIDE.read_text(encoding="utf-8"))


def mock_model(name: str) -> dict[str, Any]:
    return {"deployments": [{"provider": "mock", "model": name, "region": "eu"}]}


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    db = tmp_path_factory.mktemp("library-docs") / "ledger.db"
    return {
        "auth": {"master_key": API_KEY},
        "ledger": {"url": f"sqlite+aiosqlite:///{db}", "flush_interval": 0.05},
        "providers": {"mock": {"type": "mock"}},
        "models": {m: mock_model(m) for m in ("mock-echo", "mock-chat", "mock-embed")},
    }


@pytest.fixture(scope="module")
def base_url(config: dict[str, Any], start_gateway: GatewayFactory) -> str:
    return start_gateway(config)


def test_the_guide_has_the_promised_examples():
    blocks = python_blocks()
    assert len(blocks) >= 10
    text = "\n".join(blocks)
    for needle in (
        "Gateway(CONFIG)",
        "AsyncGateway(CONFIG)",
        "GatewayClient(BASE_URL, api_key=API_KEY)",
        "AsyncGatewayClient(BASE_URL, api_key=API_KEY)",
        "stream=True",
        "fallbacks=",
        "regions=",
        "metadata=",
        ".facts",
        "usage_estimated",
        "timeout=",
        "spend.report(",
        "keys.create(",
        "keys.revoke(",
    ):
        assert needle in text, needle


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_guide_example_runs(index, base_url, config, capsys):
    code = python_blocks()[index]
    namespace: dict[str, Any] = {
        "__name__": f"library_md_example_{index}",
        "BASE_URL": base_url,
        "API_KEY": API_KEY,
        "CONFIG": config,
    }
    exec(compile(code, f"{GUIDE}:block{index}", "exec"), namespace)


# --- the spend and keys wrappers ---------------------------------------------------------


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def check_report_matches_records(report: SpendReport, records: list[SpendRecordView]) -> None:
    assert isinstance(report, SpendReport)
    assert all(isinstance(row, SpendReportRow) for row in report.rows)
    assert report.total.requests == len(records) > 0
    for name in SUMMED:
        assert getattr(report.total, name) == sum(getattr(r, name) for r in report.rows)
    assert report.total.errors == sum(r.is_error for r in records)
    assert report.total.prompt_tokens == sum(r.prompt_tokens for r in records)
    assert report.total.completion_tokens == sum(r.completion_tokens for r in records)
    known = [r.cost_usd for r in records if r.cost_usd is not None]
    assert report.total.cost_usd == sum(known, Decimal(0))
    assert isinstance(report.total.cost_usd, Decimal)
    assert report.total.unknown_cost_requests == sum(r.cost_usd is None for r in records)
    assert "SpendReport(group_by=" in repr(report)


def test_remote_spend_report_totals_equal_the_records(base_url):
    # A period of its own, so the guide's other traffic does not matter.
    with GatewayClient(base_url, api_key=API_KEY) as client:
        client.chat.completions.create(model="mock-echo", messages=user("one"))
        client.chat.completions.create(model="mock-chat", messages=user("two two"))
        client.embeddings.create(model="mock-embed", input=["a", "b"])
        report = client.spend.report(group_by="model", since="1h")
        records = list(client.spend.records(since=report.since, until=report.until, page_size=2))
    check_report_matches_records(report, records)
    assert {"mock-echo", "mock-chat", "mock-embed"} <= {r.group for r in report.rows}
    assert len({r.request_id for r in records}) == len(records)  # pages neither skip nor repeat


def test_async_remote_and_in_process_agree(base_url, config):
    async def remote() -> tuple[SpendReport, list[SpendRecordView]]:
        async with AsyncGatewayClient(base_url, api_key=API_KEY) as client:
            await client.chat.completions.create(model="mock-echo", messages=user("x"))
            report = await client.spend.report(group_by="day", since="1h")
            records = client.spend.records(since=report.since, until=report.until, page_size=3)
            return report, [r async for r in records]

    report, records = asyncio.run(remote())
    check_report_matches_records(report, records)

    with Gateway(config) as gw:
        local = gw.spend.report(group_by="day", since=report.since, until=report.until)
        local_records = list(gw.spend.records(since=report.since, until=report.until))
    check_report_matches_records(local, local_records)
    assert local.total == report.total
    assert [r.request_id for r in local_records] == [r.request_id for r in records]
    assert local_records == records


def test_in_process_async_spend_counts_its_own_calls(config):
    async def run() -> tuple[SpendReport, list[SpendRecordView]]:
        async with AsyncGateway(config) as gw:
            before = await gw.spend.report(since="1h")
            await gw.chat.completions.create(model="mock-echo", messages=user("local"))
            after = await gw.spend.report(since=before.since)
            records = [r async for r in gw.spend.records(since=before.since, page_size=1)]
            assert after.total.requests == before.total.requests + 1
            return after, records

    report, records = asyncio.run(run())
    check_report_matches_records(report, records)


def test_bad_spend_parameters_are_invalid_requests(base_url, config):
    with (
        GatewayClient(base_url, api_key=API_KEY) as client,
        pytest.raises(InvalidRequestError) as remote,
    ):
        client.spend.report(group_by="colour")
    with Gateway(config) as gw:
        with pytest.raises(InvalidRequestError) as local:
            gw.spend.report(group_by="colour")
        with pytest.raises(InvalidRequestError) as period:
            list(gw.spend.records(since="yesterday-ish"))
    assert remote.value.param == local.value.param == "group_by"
    assert period.value.param == "since"


def check_key_lifecycle(keys: Any, base_url: str) -> None:
    created = keys.create(name="lifecycle", allowed_models=["mock-*"], rpm=10, budget_usd="2.5")
    assert isinstance(created, CreatedKey)
    assert created.key.startswith("sk-gw-") and created.key.startswith(created.prefix)
    assert created.key not in repr(created)
    assert created.info.budget_usd == Decimal("2.5") and created.info.rpm == 10

    listed = {k.id: k for k in keys.list()}
    assert all(isinstance(k, KeyInfo) for k in listed.values())
    mine = listed[created.id]
    assert mine.prefix == created.prefix and len(mine.prefix) == 12
    assert created.key not in repr(listed) and not mine.revoked
    assert "key" not in {f for f in KeyInfo.__dataclass_fields__}

    with GatewayClient(base_url, api_key=created.key, max_retries=0) as user_client:
        user_client.chat.completions.create(model="mock-echo", messages=user("hi"))

    rotated = keys.rotate(created.id)
    assert rotated.id == created.id and rotated.key != created.key

    revoked = keys.revoke(created.id)
    assert revoked.revoked and revoked.revoked_at is not None
    assert {k.id: k for k in keys.list()}[created.id].revoked
    with (
        GatewayClient(base_url, api_key=rotated.key, max_retries=0) as user_client,
        pytest.raises(AuthenticationError),
    ):
        user_client.chat.completions.create(model="mock-echo", messages=user("hi"))


def test_remote_key_lifecycle(base_url):
    with GatewayClient(base_url, api_key=API_KEY) as admin:
        check_key_lifecycle(admin.keys, base_url)


def test_async_remote_keys(base_url):
    async def run() -> None:
        async with AsyncGatewayClient(base_url, api_key=API_KEY) as admin:
            created = await admin.keys.create(name="async", expires_in_days=1)
            assert created.info.expires_at is not None
            assert created.id in {k.id for k in await admin.keys.list()}
            rotated = await admin.keys.rotate(created.id)
            assert (await admin.keys.revoke(rotated.id)).revoked

    asyncio.run(run())


def test_in_process_key_lifecycle(config, base_url):
    # Revoked before the proxy ever looked it up, so its key cache holds nothing stale.
    with Gateway(config) as gw:
        created = gw.keys.create(name="in-process", team=None, metadata={"owner": "tests"})
        assert created.info.metadata == {"owner": "tests"}
        assert created.id in {k.id for k in gw.keys.list()}
        assert gw.keys.revoke(created.id).revoked
    with (
        GatewayClient(base_url, api_key=created.key, max_retries=0) as user_client,
        pytest.raises(AuthenticationError),
    ):
        user_client.chat.completions.create(model="mock-echo", messages=user("hi"))


def test_in_process_async_keys(config):
    async def run() -> None:
        async with AsyncGateway(config) as gw:
            created = await gw.keys.create(name="async-local", budget_usd=Decimal("1"))
            assert created.info.budget_usd == Decimal("1")
            rotated = await gw.keys.rotate(created.id)
            assert rotated.prefix != created.prefix
            assert (await gw.keys.revoke(created.id)).revoked

    asyncio.run(run())


def test_to_pandas_without_pandas_says_how_to_get_it(base_url, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # ``import pandas`` now fails
    with GatewayClient(base_url, api_key=API_KEY) as client:
        report = client.spend.report(since="1h")
        with pytest.raises(ImportError, match="pip install pandas"):
            report.to_pandas()
        with pytest.raises(ImportError, match="pip install pandas"):
            client.spend.records(since="1h").to_pandas()
        with pytest.raises(ImportError, match="pip install pandas"):
            records_to_pandas([])


def test_to_pandas_with_pandas(base_url):
    pytest.importorskip("pandas")
    with GatewayClient(base_url, api_key=API_KEY) as client:
        client.chat.completions.create(model="mock-echo", messages=user("frame"))
        report = client.spend.report(since="1h")
        frame = report.to_pandas()
        assert list(frame["group"]) == [r.group for r in report.rows]
        records = client.spend.records(since="1h").to_pandas()
        assert len(records) == report.total.requests
