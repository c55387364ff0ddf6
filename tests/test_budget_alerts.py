"""Budget alerts: a key past a share of its budget is announced once per period to a local
webhook receiver, in a signed JSON POST that is retried while the receiver fails, and shown
on the dashboard's Spend page (a real headless Chromium)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.conftest import GatewayFactory, service_missing
from tests.emulators.openai_api import OpenAIEmulator
from tests.harness import ServerThread
from tests.keys_helpers import MASTER_KEY, Admin, chat, gateway_config, server_root
from tests.ui_helpers import chromium, chromium_missing, log_in

SECRET = "whsec-test-alerts"


class Receiver:
    """A webhook endpoint on 127.0.0.1 that checks each body's signature; it answers 500 to
    the first ``fail_first`` POSTs."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.posts: list[tuple[dict[str, Any], bool]] = []  # body, signature valid
        self.changed = threading.Condition()
        self.app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        valid = hmac.compare_digest(request.headers.get("x-gateway-signature", ""), expected)
        with self.changed:
            self.posts.append((json.loads(body), valid))
            failing = len(self.posts) <= self.fail_first
            self.changed.notify_all()
        return Response(status_code=500 if failing else 204)

    def wait_for(self, count: int, timeout: float = 20) -> list[tuple[dict[str, Any], bool]]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.posts) >= count, timeout), self.posts
            return list(self.posts)


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    hook = Receiver(fail_first=1)
    with ServerThread(hook.app) as server:
        yield hook, server.url + "/hook"


def alerting_gateway(
    start_gateway: GatewayFactory, upstream: str, db: Path, hook_url: str
) -> tuple[str, dict[str, Any]]:
    alerts = {
        "webhook_url": hook_url,
        "secret": SECRET,
        "thresholds": [0.02, 0.04],
        "check_interval": 0.05,
        "attempts": 3,
    }
    base = start_gateway(gateway_config(upstream, db, alerts=alerts))
    # One chat of the emulator costs $0.0000225 (gpt-4o: 1 prompt and 2 completion tokens):
    # 2.25 % of the budget.
    key = Admin(base).create_key(name="night-batch", budget_usd="0.001", budget_period="daily")
    return base, key


def test_each_threshold_is_announced_once_signed_and_retried(
    openai_emu: OpenAIEmulator,
    start_gateway: GatewayFactory,
    tmp_path: Path,
    receiver: tuple[Receiver, str],
) -> None:
    hook, url = receiver
    base, key = alerting_gateway(start_gateway, openai_emu.url, tmp_path / "ledger.db", url)
    assert chat(base, key["key"], max_tokens=5).status_code == 200  # 2.25 %
    posts = hook.wait_for(2)  # the first POST failed (500), the retry was accepted
    assert posts[0][0] == posts[1][0]  # the same alert, sent again
    first = posts[1][0]
    assert first["type"] == "budget.threshold" and first["scope"] == "key"
    assert (first["id"], first["name"], first["threshold_percent"]) == (
        key["id"],
        "night-batch",
        2,
    )
    assert first["budget_usd"] == "0.001" and first["period"] == "daily"

    assert chat(base, key["key"], max_tokens=5).status_code == 200  # 4.5 %
    posts = hook.wait_for(3)
    assert posts[2][0]["threshold_percent"] == 4
    assert all(valid for _, valid in posts)
    with hook.changed:  # later checks (every 0.05 s) send nothing again
        assert not hook.changed.wait_for(lambda: len(hook.posts) > 3, timeout=0.5)


def test_a_wrong_secret_does_not_verify(
    openai_emu: OpenAIEmulator, start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    hook = Receiver()
    with ServerThread(hook.app) as server:
        config = gateway_config(
            openai_emu.url,
            tmp_path / "ledger.db",
            alerts={
                "webhook_url": server.url + "/hook",
                "secret": "another",
                "thresholds": [0.01],
                "check_interval": 0.05,
            },
        )
        base = start_gateway(config)
        key = Admin(base).create_key(name="k", budget_usd="0.001")
        assert chat(base, key["key"], max_tokens=5).status_code == 200
        ((body, valid),) = hook.wait_for(1)
        assert body["threshold_percent"] == 1 and valid is False


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    why = chromium_missing()
    if why is not None:
        service_missing(why)
    with chromium() as b:
        yield b


def test_the_spend_page_shows_the_alerts_sent(
    openai_emu: OpenAIEmulator,
    start_gateway: GatewayFactory,
    tmp_path: Path,
    receiver: tuple[Receiver, str],
    browser: Any,
) -> None:
    hook, url = receiver
    base, key = alerting_gateway(start_gateway, openai_emu.url, tmp_path / "ledger.db", url)
    assert chat(base, key["key"], max_tokens=5).status_code == 200
    hook.wait_for(2)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    try:
        root = server_root(base)
        log_in(page, root, MASTER_KEY)
        page.goto(root + "/ui/spend")
        banner = page.locator("#budget-alerts [data-name='night-batch']")
        assert banner.get_attribute("data-threshold") == "2"
        assert "passed 2% of its budget" in banner.inner_text()
    finally:
        context.close()
