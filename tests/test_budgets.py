"""Budgets and rate limits through the real proxy: concurrent callers cannot overspend, a
budget refusal is final (no SDK retries it), a team's budget binds every key in it, and an
RPM limit answers like OpenAI's, headers included."""

from __future__ import annotations

import asyncio
import base64
import io
import re
import struct
import wave
import zlib
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import GatewayFactory
from tests.emulators.openai_api import OpenAIEmulator
from tests.keys_helpers import (
    INPUT_PRICE,
    OUTPUT_PRICE,
    TIGHT_COST,
    TIGHT_REQUEST,
    TIGHT_RESERVATION,
    Admin,
    chat,
    gateway_config,
    key_records,
    reservation_usd,
)

RESET = re.compile(r"^(\d+m)?\d+s$|^\d+ms$")  # OpenAI's reset format: 1s, 6m0s, 120ms


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("budgets") / "ledger.db"


@pytest.fixture(scope="module")
def proxy(openai_upstream: OpenAIEmulator, start_gateway: GatewayFactory, db: Path) -> str:
    return start_gateway(gateway_config(openai_upstream.url, db))


@pytest.fixture(scope="module")
def admin(proxy: str) -> Admin:
    return Admin(proxy)


async def test_concurrent_requests_never_spend_past_the_budget(proxy, admin, db, openai_emu):
    """200 requests at once against a budget of exactly 10 reservations: 10 succeed, 190 are
    refused, and the ledger's spend stays within the budget.

    Each request is one message "a" with max_tokens=2 and n=20. Its reservation (the engine's
    rule) is (1 byte + 16) x $2.50/1M + 2 x 20 x $10.00/1M = $0.0004425. The emulator answers
    1 prompt token and 20 choices of "echo: a" (2 tokens each), so it really costs
    1 x $2.50/1M + 40 x $10.00/1M = $0.0004025: a slack of $0.00004 (9%) a request. Once the
    10 admitted requests settle, 10 x $0.00004 = $0.0004 is free again — less than one
    reservation — so however the 200 interleave, an 11th is never admitted."""
    reservation = reservation_usd("a", max_tokens=2, n=20)
    actual = (1 * INPUT_PRICE + 40 * OUTPUT_PRICE) / 10**6
    assert (reservation, actual) == (TIGHT_RESERVATION, TIGHT_COST)
    budget = 10 * reservation
    created = admin.create_key(name="ten", budget_usd=str(budget), budget_period="total")
    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        responses = await asyncio.gather(
            *(
                client.post(
                    proxy + "/chat/completions",
                    json=TIGHT_REQUEST,
                    headers={"authorization": f"Bearer {created['key']}"},
                )
                for _ in range(200)
            )
        )
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert len(ok) == 10
    assert {r.status_code for r in refused} == {429}
    assert {r.json()["error"]["code"] for r in refused} == {"budget_exceeded"}
    assert {r.headers["x-should-retry"] for r in refused} == {"false"}
    records = await key_records(db, created["id"], at_least=200)
    assert len(records) == 200
    spent = sum((r.cost_usd or Decimal(0) for r in records), Decimal(0))
    assert spent == 10 * actual <= budget


def png(width: int, height: int) -> bytes:
    """A black grayscale PNG of the given size (a few KB: its rows compress to nothing)."""
    rows = zlib.compress(b"".join(b"\0" + bytes(width) for _ in range(height)))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


async def test_image_inputs_never_spend_past_the_budget(proxy, admin, db, openai_emu):
    """40 requests at once, each with a 1024x1024 image, against a budget of 3 reservations:
    3 succeed and the spend stays within the budget.

    gpt-4o bills that image 765 tokens at detail high (4 tiles x 170 + 85), as the emulator
    does, so a request ("a" + the image, max_tokens=2) really costs (1 + 765) x $2.50/1M +
    2 x $10.00/1M = $0.001935; it reserves (16 + 1 + 765) x $2.50/1M + 2 x $10.00/1M =
    $0.001975. Were the image reserved as nothing, every request would be admitted."""
    image = {"type": "image_url", "image_url": {"url": data_url("image/png", png(1024, 1024))}}
    request = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, image]}],
        "max_tokens": 2,
    }
    reservation = ((16 + 1 + 765) * INPUT_PRICE + 2 * OUTPUT_PRICE) / 10**6
    actual = ((1 + 765) * INPUT_PRICE + 2 * OUTPUT_PRICE) / 10**6
    budget = 3 * reservation
    created = admin.create_key(name="images", budget_usd=str(budget), budget_period="total")
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=40), timeout=30) as client:
        responses = await asyncio.gather(
            *(
                client.post(
                    proxy + "/chat/completions",
                    json=request,
                    headers={"authorization": f"Bearer {created['key']}"},
                )
                for _ in range(40)
            )
        )
    assert sorted(r.status_code for r in responses) == [200] * 3 + [429] * 37
    records = await key_records(db, created["id"], at_least=40)
    spent = sum((r.cost_usd or Decimal(0) for r in records), Decimal(0))
    assert spent == 3 * actual <= budget


@pytest.mark.parametrize(
    "part",
    [
        # 2 minutes of 16 kHz 16-bit mono PCM: at most 120 s x 32 tokens ≈ $0.0096
        {
            "type": "input_audio",
            "input_audio": {"data": "wav", "format": "wav"},
        },
        # A 100 kB file: at most 100k tokens, $0.25
        {"type": "file", "file": {"filename": "a.pdf", "file_data": "pdf"}},
    ],
    ids=["audio", "file"],
)
def test_audio_and_file_inputs_are_reserved_before_they_are_sent(proxy, admin, openai_emu, part):
    if part["type"] == "input_audio":
        pcm = io.BytesIO()
        with wave.open(pcm, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(16_000)
            out.writeframes(bytes(2 * 16_000 * 120))
        part["input_audio"]["data"] = base64.b64encode(pcm.getvalue()).decode()
    else:
        part["file"]["file_data"] = data_url("application/pdf", b"%PDF-1.7\n" + bytes(100_000))
    key = admin.create_key(name=part["type"], budget_usd="0.005", budget_period="total")["key"]
    response = chat(proxy, key, max_tokens=2, messages=[{"role": "user", "content": [part]}])
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == "budget_exceeded"
    assert openai_emu.requests == []


def test_budget_refusal_says_what_was_spent_and_when_it_resets(proxy, admin, openai_emu):
    """$0.0002 pays for the prompt's bound ((5 + 16) x $2.50/1M) and 14 output tokens: less
    than a minimal answer (16), so the request is refused rather than capped."""
    key = admin.create_key(name="small", budget_usd="0.0002", budget_period="daily")["key"]
    response = chat(proxy, key, max_tokens=200_000)  # may cost up to $2.0000525
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["type"] == "insufficient_quota" and error["code"] == "budget_exceeded"
    assert "daily budget $0.0002, spent $0.0000" in error["message"]
    assert "pays for 14 output tokens, fewer than a minimal answer" in error["message"]
    assert "may cost up to $2.0001" in error["message"] and "resets" in error["message"]
    assert openai_emu.requests == []


async def test_budget_refusal_is_not_retried_by_the_openai_sdk(proxy, admin, db, openai_emu):
    created = admin.create_key(name="sdk", budget_usd="0.0001", budget_period="monthly")
    client = openai.OpenAI(base_url=proxy, api_key=created["key"])  # max_retries=2
    assert client.max_retries == 2
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hello"}], max_tokens=100
        )
    assert caught.value.code == "budget_exceeded"
    await key_records(db, created["id"])
    await asyncio.sleep(0.3)  # a retry, had there been one, would have been recorded by now
    records = await key_records(db, created["id"])
    assert len(records) == 1 and records[0].status == 429
    assert openai_emu.requests == []


def test_team_budget_refusal_applies_to_every_key_of_the_team(proxy, admin, openai_emu):
    """The team's budget is one reservation of a "hello" request with max_tokens=10
    ((5 + 16) x $2.50/1M + 10 x $10.00/1M = $0.0001525); the first call (which really costs
    $0.0000225) leaves too little for any second one, whichever key makes it."""
    budget = reservation_usd("hello", max_tokens=10)
    team = admin.create_team(name="frugal", budget_usd=str(budget), budget_period="total")
    first = admin.create_key(name="first", team=team["id"], budget_usd="100")["key"]
    second = admin.create_key(name="second", team=team["id"], budget_usd="100")["key"]
    assert chat(proxy, first, max_tokens=10).status_code == 200
    for key in (second, first):
        response = chat(proxy, key, max_tokens=10)
        assert response.status_code == 429
        error = response.json()["error"]
        assert error["code"] == "budget_exceeded" and f"team:{team['id']}" in error["message"]
    assert len(openai_emu.requests) == 1


def test_rpm_limit_refuses_the_next_request_with_retry_after_and_ratelimit_headers(
    proxy, admin, openai_emu
):
    key = admin.create_key(name="rpm", rpm=3)["key"]
    for _ in range(3):
        assert chat(proxy, key).status_code == 200
    response = chat(proxy, key)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert response.headers["x-ratelimit-limit-requests"] == "3"
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert RESET.match(response.headers["x-ratelimit-reset-requests"])
    assert len(openai_emu.requests) == 3


def test_successful_responses_carry_ratelimit_headers(proxy, admin, openai_emu):
    key = admin.create_key(name="headers", rpm=10, tpm=10_000)["key"]
    first, second = chat(proxy, key, max_tokens=50), chat(proxy, key, max_tokens=50)
    assert first.status_code == second.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "10"
    assert first.headers["x-ratelimit-remaining-requests"] == "9"
    assert second.headers["x-ratelimit-remaining-requests"] == "8"
    assert first.headers["x-ratelimit-limit-tokens"] == "10000"
    assert int(first.headers["x-ratelimit-remaining-tokens"]) < 10_000
    assert RESET.match(first.headers["x-ratelimit-reset-requests"])
    assert RESET.match(first.headers["x-ratelimit-reset-tokens"])
