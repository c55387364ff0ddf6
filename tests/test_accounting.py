"""What every call costs and what the ledger keeps of it, through the library and the proxy,
checked against figures computed by hand from the catalog (gpt-4o: $2.50 in / $10.00 out per
1M tokens; text-embedding-3-small: $0.02 per 1M)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway import AsyncGateway, GatewayError, StreamInterruptedError
from gateway.config import LedgerConfig
from gateway.ledger.ledger import Ledger
from gateway.ledger.records import SpendRecord
from tests.conftest import SINGLE_ATTEMPT, GatewayFactory
from tests.emulators.common import Fault
from tests.emulators.openai_api import API_KEY, OpenAIEmulator


def config(emu: OpenAIEmulator, db: Path) -> dict[str, Any]:
    return {
        "routing": SINGLE_ATTEMPT,
        "ledger": {"url": f"sqlite+aiosqlite:///{db}", "flush_interval": 0.05},
        "providers": {
            "openai": {"type": "openai", "api_key": API_KEY, "base_url": emu.url + "/v1"}
        },
        "models": {
            "gpt-4o": {"deployments": [{"provider": "openai", "model": "gpt-4o"}]},
            "llama": {"deployments": [{"provider": "openai", "model": "my-own-llama"}]},
            "negotiated": {
                "deployments": [
                    {
                        "provider": "openai",
                        "model": "gpt-4o",
                        "price": {"input": "1.00", "output": "4.00"},
                    }
                ]
            },
            "embed": {"deployments": [{"provider": "openai", "model": "text-embedding-3-small"}]},
        },
    }


async def records(db: Path, request_id: str | None = None, wait: float = 5.0) -> list[SpendRecord]:
    """The ledger's records (waiting for the writer's next batch)."""
    ledger = Ledger(LedgerConfig(url=f"sqlite+aiosqlite:///{db}", migrate=False))
    try:
        deadline = time.monotonic() + wait
        while True:
            page = await ledger.spend_records(
                datetime.now(UTC) - timedelta(hours=1),
                datetime.now(UTC) + timedelta(hours=1),
                limit=1000,
            )
            found = [r for r in page.records if request_id in (None, r.request_id)]
            if found or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.05)
    finally:
        await ledger.engine.dispose()


HELLO: list[Any] = [
    {"role": "user", "content": "hello"}
]  # emulator: 1 prompt token, "echo: hello" = 2


@pytest.fixture
async def gw(openai_emu: OpenAIEmulator, tmp_path: Path) -> AsyncIterator[AsyncGateway]:
    gateway = AsyncGateway(config(openai_emu, tmp_path / "ledger.db"))
    yield gateway
    await gateway.aclose()


async def test_completion_cost_is_exact_and_recorded(gw, tmp_path):
    reply = await gw.chat.completions.create(model="gpt-4o", messages=HELLO, user="alice")
    facts = reply.gateway
    assert facts is not None and facts.cost is not None
    assert facts.cost.total == Decimal("0.0000225")  # 1 x 2.50/1M + 2 x 10.00/1M
    (record,) = await records(tmp_path / "ledger.db", facts.request_id)
    assert record.cost_usd == Decimal("0.0000225")
    assert (record.prompt_tokens, record.completion_tokens) == (1, 2)
    assert record.model == "gpt-4o" and record.upstream_model == "gpt-4o-2024-08-06"
    assert record.provider == "openai" and record.deployment == "openai/gpt-4o"
    assert record.end_user == "alice" and record.status == 200 and not record.stream
    assert not record.usage_estimated


async def test_stream_usage_chunk_carries_the_cost(gw, tmp_path):
    stream = await gw.chat.completions.create(
        model="gpt-4o", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    usage = chunks[-1].usage
    assert usage is not None and (usage.model_extra or {})["cost"] == "0.0000225"
    (record,) = await records(tmp_path / "ledger.db", stream.info.request_id)
    assert record.cost_usd == Decimal("0.0000225") and record.stream
    assert record.ttft_ms is not None and record.ttft_ms <= record.latency_ms


async def test_stream_without_include_usage_is_still_billed_from_upstream_usage(gw, tmp_path):
    stream = await gw.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
    assert all(c.usage is None for c in [c async for c in stream])
    (record,) = await records(tmp_path / "ledger.db", stream.info.request_id)
    assert record.cost_usd == Decimal("0.0000225") and not record.usage_estimated


async def test_cut_stream_is_billed_for_what_was_generated_as_an_estimate(gw, tmp_path, openai_emu):
    openai_emu.fail_next(Fault(cut_after=3))  # role chunk, "echo:", " one"
    stream = await gw.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "one two three four"}], stream=True
    )
    with pytest.raises(StreamInterruptedError):
        async for _ in stream:
            pass
    (record,) = await records(tmp_path / "ledger.db", stream.info.request_id)
    assert record.status == 502 and record.error_type == "stream_interrupted"
    assert record.usage_estimated
    assert record.completion_tokens >= 2 and record.prompt_tokens > 4
    expected = (
        Decimal(record.prompt_tokens) * Decimal("2.50")
        + Decimal(record.completion_tokens) * Decimal("10.00")
    ) / 10**6
    assert record.cost_usd == expected


async def test_unknown_price_is_recorded_as_unknown_never_zero(gw, tmp_path):
    reply = await gw.chat.completions.create(model="llama", messages=HELLO)
    assert reply.gateway is not None and reply.gateway.cost is not None
    assert reply.gateway.cost.unknown
    (record,) = await records(tmp_path / "ledger.db", reply.gateway.request_id)
    assert record.cost_usd is None and record.prompt_tokens == 1


async def test_deployment_price_override_is_used(gw):
    reply = await gw.chat.completions.create(model="negotiated", messages=HELLO)
    assert reply.gateway is not None and reply.gateway.cost is not None
    assert reply.gateway.cost.total == Decimal("0.000009")  # 1 x 1.00/1M + 2 x 4.00/1M


async def test_embeddings_are_priced(gw, tmp_path):
    result = await gw.embeddings.create(model="embed", input=["a b c", "d e"])
    assert result.gateway is not None and result.gateway.cost is not None
    assert result.gateway.cost.total == Decimal("0.0000001")  # 5 tokens x 0.02/1M
    (record,) = await records(tmp_path / "ledger.db", result.gateway.request_id)
    assert record.operation == "embeddings" and record.cost_usd == Decimal("0.0000001")


async def test_failed_request_is_recorded_with_zero_cost(gw, tmp_path, openai_emu):
    openai_emu.fail_next(Fault(status=400, body=b'{"error": {"message": "bad"}}'))
    with pytest.raises(GatewayError):
        await gw.chat.completions.create(model="gpt-4o", messages=HELLO)
    (record,) = await records(tmp_path / "ledger.db")
    assert record.status == 400 and record.cost_usd == Decimal(0)
    assert record.attempts == 1


# --- through the proxy ------------------------------------------------------------------


@pytest.fixture(scope="module")
def proxy(
    openai_upstream: OpenAIEmulator,
    start_gateway: GatewayFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[str, Path]:
    db = tmp_path_factory.mktemp("proxy-ledger") / "ledger.db"
    return start_gateway(config(openai_upstream, db)), db


async def test_proxy_answer_carries_x_gateway_cost(proxy, openai_emu):
    url, db = proxy
    client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=HELLO)
    assert raw.headers["x-gateway-cost"] == "0.0000225"
    (record,) = await records(db, raw.headers["x-request-id"])
    assert record.cost_usd == Decimal("0.0000225")


async def test_client_that_disconnects_mid_stream_is_billed_and_upstream_cancelled(
    proxy, openai_emu
):
    url, db = proxy
    openai_emu.fail_next(Fault(stall_after=3, stall_seconds=5.0))
    body = {
        "model": "gpt-4o",
        "stream": True,
        "messages": [{"role": "user", "content": "one two three four"}],
    }
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream("POST", url + "/chat/completions", json=body) as resp,
    ):
        request_id = resp.headers["x-request-id"]
        async for line in resp.aiter_lines():
            if '"echo:"' in line:
                break  # walk away mid-answer
    (record,) = await records(db, request_id)
    assert record.status == 499 and record.error_type == "client_disconnected"
    assert record.usage_estimated and record.completion_tokens >= 1
    assert record.cost_usd is not None and record.cost_usd > 0
