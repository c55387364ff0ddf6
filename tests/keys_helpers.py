"""Shared by the key, budget and replica tests: a gateway config with a master key and a
ledger, the admin API as a small client, the engine's reservation rule, and a key's records."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from gateway.config import LedgerConfig
from gateway.ledger.ledger import Ledger
from gateway.ledger.records import SpendRecord
from tests.conftest import SINGLE_ATTEMPT
from tests.emulators.openai_api import API_KEY

MASTER_KEY = "sk-master-for-tests"
# gpt-4o in the shipped catalog, USD per 1M tokens.
INPUT_PRICE, OUTPUT_PRICE = Decimal("2.50"), Decimal("10.00")
# One message "a", 20 choices of at most 2 tokens each. Its reservation, (1 + 16) x $2.50/1M
# + 2 x 20 x $10.00/1M = $0.0004425, is within 10% of what the emulator's answer (1 prompt
# token, 20 x "echo: a") really costs, $0.0004025: so a budget of K reservations admits
# exactly K requests, the slack freed by settling never adding up to an extra reservation.
TIGHT_REQUEST: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [{"role": "user", "content": "a"}],
    "max_tokens": 2,
    "n": 20,
}
TIGHT_RESERVATION, TIGHT_COST = Decimal("0.0004425"), Decimal("0.0004025")


def gateway_config(upstream: str, db: Path, **sections: Any) -> dict[str, Any]:
    """A gateway with a master key, a ledger (the key store) on ``db``, and the OpenAI
    emulator at ``upstream`` serving gpt-4o, gpt-4o-mini and an embedding model."""
    provider = {"type": "openai", "api_key": API_KEY, "base_url": upstream + "/v1"}
    return {
        "auth": {"master_key": MASTER_KEY},
        "routing": SINGLE_ATTEMPT,
        "ledger": {"url": f"sqlite+aiosqlite:///{db}", "flush_interval": 0.05},
        "providers": {"openai": provider},
        "models": {
            name: {"deployments": [{"provider": "openai", "model": name}]}
            for name in ("gpt-4o", "gpt-4o-mini", "text-embedding-3-small")
        },
        **sections,
    }


def server_root(base_url: str) -> str:
    """The gateway's root (where /admin lives) from its OpenAI base URL (…/v1)."""
    return base_url.removesuffix("/v1")


class Admin:
    """The admin API of one gateway, called with the master key (or ``key``)."""

    def __init__(self, base_url: str, key: str = MASTER_KEY) -> None:
        self.client = httpx.Client(
            base_url=server_root(base_url),
            headers={"authorization": f"Bearer {key}"},
            timeout=10,
        )

    def create_key(self, **body: Any) -> dict[str, Any]:
        """A new key's public view plus its plaintext under ``"key"``."""
        body.setdefault("name", "test")
        return self._ok(self.client.post("/admin/keys", json=body), 201)

    def create_team(self, **body: Any) -> dict[str, Any]:
        return self._ok(self.client.post("/admin/teams", json=body), 201)

    def update_key(self, key_id: str, **body: Any) -> dict[str, Any]:
        return self._ok(self.client.patch(f"/admin/keys/{key_id}", json=body))

    def revoke(self, key_id: str) -> dict[str, Any]:
        return self._ok(self.client.post(f"/admin/keys/{key_id}/revoke"))

    def rotate(self, key_id: str) -> dict[str, Any]:
        return self._ok(self.client.post(f"/admin/keys/{key_id}/rotate"))

    @staticmethod
    def _ok(response: httpx.Response, status: int = 200) -> dict[str, Any]:
        assert response.status_code == status, response.text
        body: dict[str, Any] = response.json()
        return body


def chat(
    base_url: str,
    key: str,
    *,
    model: str = "gpt-4o",
    headers: dict[str, str] | None = None,
    **body: Any,
) -> httpx.Response:
    """One chat completion through the proxy with ``key``."""
    body.setdefault("messages", [{"role": "user", "content": "hello"}])
    return httpx.post(
        base_url + "/chat/completions",
        json={"model": model, **body},
        headers={"authorization": f"Bearer {key}", **(headers or {})},
        timeout=10,
    )


def reservation_usd(content: str, max_tokens: int, n: int = 1) -> Decimal:
    """The engine's worst case for one single-message gpt-4o request: the prompt's UTF-8
    bytes + 16 at the input price, plus max_tokens x n at the output price."""
    prompt_bound = len(content.encode()) + 16
    return (prompt_bound * INPUT_PRICE + max_tokens * n * OUTPUT_PRICE) / 10**6


async def key_records(
    db: Path | str, key_id: str, at_least: int = 1, wait: float = 10.0
) -> list[SpendRecord]:
    """The ledger's records of one key, waiting (bounded) until ``at_least`` are written."""
    url = db if isinstance(db, str) else f"sqlite+aiosqlite:///{db}"
    ledger = Ledger(LedgerConfig(url=url, migrate=False))
    try:
        deadline = time.monotonic() + wait
        while True:
            page = await ledger.spend_records(
                datetime.now(UTC) - timedelta(hours=1),
                datetime.now(UTC) + timedelta(hours=1),
                key_id=key_id,
                limit=10_000,
            )
            if len(page.records) >= at_least or time.monotonic() > deadline:
                return page.records
            await asyncio.sleep(0.05)
    finally:
        await ledger.engine.dispose()
