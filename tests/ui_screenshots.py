"""Screenshots of the dashboard for the docs: ``python -m tests.ui_screenshots [DIR]``
(default docs/img). A gateway on 127.0.0.1 in front of the OpenAI emulator, a week of
synthetic ledger records, some live requests and a deployment driven into an open circuit;
then the system Chromium photographs each page."""

from __future__ import annotations

import asyncio
import random
import sys
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from gateway.config import LedgerConfig
from gateway.ledger.ledger import Ledger
from gateway.ledger.records import AttemptEntry, SpendRecord
from gateway.ledger.store import write_batch
from gateway.server import create_app
from tests.emulators.common import Fault
from tests.emulators.openai_api import API_KEY, OpenAIEmulator
from tests.harness import ServerThread
from tests.keys_helpers import MASTER_KEY, Admin, chat
from tests.ui_helpers import chromium, log_in

# USD per 1M input / output tokens, roughly the catalog's.
PRICES = {
    "gpt-4o": (Decimal("2.50"), Decimal("10")),
    "gpt-4o-mini": (Decimal("0.15"), Decimal("0.60")),
    "mistral-large": (Decimal("2"), Decimal("6")),
    "text-embedding-3-small": (Decimal("0.02"), Decimal(0)),
}
DEPLOYMENTS = {
    "gpt-4o": [("openai", "openai/gpt-4o"), ("openai-eu", "openai-eu/gpt-4o")],
    "gpt-4o-mini": [("openai", "openai/gpt-4o-mini")],
    "mistral-large": [("mistral", "mistral/mistral-large-latest")],
    "text-embedding-3-small": [("openai", "openai/text-embedding-3-small")],
}


def config(upstream: str, db: Path) -> dict[str, Any]:
    def provider(region: str | None = None) -> dict[str, Any]:
        out = {"type": "openai", "api_key": API_KEY, "base_url": upstream + "/v1"}
        return {**out, "region": region} if region else out

    return {
        "auth": {"master_key": MASTER_KEY},
        "ledger": {"url": f"sqlite+aiosqlite:///{db}", "flush_interval": 0.05},
        "routing": {
            "retries": {"attempts_per_deployment": 1},
            "circuit": {"consecutive_failures": 3, "cooldown": 900},
        },
        "providers": {
            "openai": provider(),
            "openai-eu": provider("eu"),
            "mistral": provider("eu"),
        },
        "models": {
            "gpt-4o": {
                "deployments": [
                    {"provider": "openai", "model": "gpt-4o", "weight": 3},
                    {"provider": "openai-eu", "model": "gpt-4o"},
                ],
                "fallbacks": ["gpt-4o-mini"],
            },
            "gpt-4o-mini": {
                "deployments": [
                    {"provider": "openai", "model": "gpt-4o-mini", "rpm": 600, "tpm": 200_000}
                ]
            },
            "mistral-large": {
                "deployments": [
                    {
                        "provider": "mistral",
                        "model": "mistral-large-latest",
                        "price": {"input": "2", "output": "6"},
                    }
                ]
            },
            "text-embedding-3-small": {
                "deployments": [{"provider": "openai", "model": "text-embedding-3-small"}]
            },
        },
    }


def history(keys: dict[str, dict[str, Any]], now: datetime) -> list[SpendRecord]:
    """A week of requests: busy office hours, each key with its favourite models."""
    rng = random.Random(7)
    habits = {
        "alice": (("gpt-4o", 12), ("gpt-4o-mini", 20), ("mistral-large", 4)),
        "bob": (("gpt-4o", 6), ("text-embedding-3-small", 28)),
        "helpdesk-bot": (("gpt-4o-mini", 36), ("mistral-large", 8)),
        "ci-pipeline": (("gpt-4o-mini", 12), ("gpt-4o", 2)),
    }
    records = []
    start = (now - timedelta(days=6)).replace(hour=0, minute=0, second=0, microsecond=0)
    hour = start
    while hour < now - timedelta(hours=1):
        office = 8 <= hour.hour <= 18 and hour.weekday() < 5
        for name, models in habits.items():
            key = keys[name]
            for model, rate in models:
                for _ in range(rng.randint(0, rate if office else max(1, rate // 5))):
                    at = hour + timedelta(seconds=rng.uniform(0, 3600))
                    if at < now - timedelta(hours=1):
                        records.append(record(rng, key, model, at))
        hour += timedelta(hours=1)
    return records


def last_hour(keys: dict[str, dict[str, Any]], now: datetime) -> list[SpendRecord]:
    """The last hour, minute by minute, with a burst of upstream trouble in the middle."""
    rng = random.Random(11)
    records = []
    names = list(keys)
    for minute in range(60, 0, -1):
        at_minute = now - timedelta(minutes=minute)
        busy = 3 + int(4 * (1 + (minute % 17) / 17))
        trouble = 25 <= minute <= 32
        for _ in range(busy):
            key = keys[rng.choice(names)]
            model = rng.choice(["gpt-4o", "gpt-4o-mini", "gpt-4o-mini", "mistral-large"])
            at = at_minute + timedelta(seconds=rng.uniform(0, 59))
            rec = record(rng, key, model, at, stream=rng.random() < 0.6)
            if trouble and rng.random() < 0.3:
                rec.status, rec.error_type, rec.cost_usd = 503, "upstream_unavailable", Decimal(0)
                rec.completion_tokens = 0
            elif trouble and rng.random() < 0.3:
                rec.attempts, rec.fallback_used = 2, model == "gpt-4o"
                rec.latency_ms *= 1.8
            records.append(rec)
    return records


def record(
    rng: random.Random, key: dict[str, Any], model: str, at: datetime, stream: bool = False
) -> SpendRecord:
    provider, deployment = rng.choice(DEPLOYMENTS[model])
    embed = model.startswith("text-embedding")
    prompt = rng.randint(200, 4000)
    completion = 0 if embed else rng.randint(40, 900)
    price_in, price_out = PRICES[model]
    latency = (60 if embed else 300 + completion * 2.5) * rng.lognormvariate(0, 0.35)
    return SpendRecord(
        request_id=uuid.uuid4().hex,
        started_at=at,
        finished_at=at + timedelta(milliseconds=latency),
        model=model,
        status=200,
        operation="embeddings" if embed else "chat",
        latency_ms=latency,
        ttft_ms=(180 + rng.lognormvariate(0, 0.5) * 120) if stream else None,
        key_id=key["id"],
        team=key["team_id"],
        provider=provider,
        deployment=deployment,
        upstream_model=model,
        attempts=1,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost_usd=(prompt * price_in + completion * price_out) / 10**6,
        stream=stream,
        price_family="openai" if provider.startswith("openai") else provider,
        price_model=model,
        price_source="prices.yaml",
        attempt_log=(
            AttemptEntry(deployment, at, latency, provider, model, status=200, billed=True),
        ),
    )


async def store(db: Path, records: list[SpendRecord]) -> None:
    ledger = Ledger(LedgerConfig(url=f"sqlite+aiosqlite:///{db}", migrate=False))
    try:
        for i in range(0, len(records), 2000):
            await write_batch(ledger.engine, records[i : i + 2000])
    finally:
        await ledger.engine.dispose()


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    emulator = OpenAIEmulator()
    with tempfile.TemporaryDirectory() as tmp, ServerThread(emulator.app) as upstream:
        emulator.url = upstream.url
        db = Path(tmp) / "ledger.db"
        with ServerThread(create_app(config(upstream.url, db))) as gateway:
            root = gateway.url
            admin = Admin(root + "/v1")
            admin.create_team(name="research", budget_usd="14", budget_period="monthly")
            admin.create_team(name="support", budget_usd="2.6", budget_period="weekly")
            admin.create_team(name="platform")
            keys = {
                "alice": admin.create_key(name="alice", team="research"),
                "bob": admin.create_key(name="bob", team="research", rpm=120),
                "helpdesk-bot": admin.create_key(
                    name="helpdesk-bot", team="support", budget_usd="1.5", budget_period="daily"
                ),
                "ci-pipeline": admin.create_key(name="ci-pipeline", team="platform", tpm=50_000),
            }
            admin.create_key(name="ops-dashboard", admin=True)
            now = datetime.now(UTC)
            asyncio.run(store(db, history(keys, now) + last_hour(keys, now)))
            for _ in range(24):  # live traffic: the health board's latency and quota use
                chat(root + "/v1", keys["alice"]["key"], model="gpt-4o-mini")
            eu = {"x-gateway-regions": "eu"}
            for _ in range(3):  # the EU deployment of gpt-4o keeps failing: circuit opens
                emulator.fail_next(Fault(status=503, body=b'{"error": {"message": "busy"}}'))
                chat(root + "/v1", MASTER_KEY, model="gpt-4o", headers=eu, fallbacks=[])
            with chromium() as browser:
                context = browser.new_context(
                    viewport={"width": 1360, "height": 900}, device_scale_factor=1
                )
                page = context.new_page()
                log_in(page, root, MASTER_KEY)
                for name, path in [
                    ("spend", "/ui/spend?period=7d&by=model"),
                    ("traffic", "/ui/traffic"),
                    ("logs", "/ui/logs"),
                    ("deployments", "/ui/deployments"),
                    ("keys", "/ui/keys"),
                ]:
                    page.goto(root + path)
                    page.wait_for_load_state("networkidle")
                    page.wait_for_timeout(300)
                    page.screenshot(path=str(out / f"ui-{name}.png"), full_page=True)
                    print(out / f"ui-{name}.png")
                context.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/img"))
