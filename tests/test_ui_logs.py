"""The dashboard's Logs page in a real headless Chromium: the last requests of a real
gateway, filtered, each opening onto its attempts, tokens, cost and price provenance."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import GatewayFactory, service_missing
from tests.emulators.common import Fault
from tests.emulators.openai_api import API_KEY, OpenAIEmulator
from tests.keys_helpers import MASTER_KEY, Admin, chat, gateway_config, server_root
from tests.ui_helpers import chromium, chromium_missing, log_in

TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    why = chromium_missing()
    if why is not None:
        service_missing(why)
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    pg = context.new_page()
    yield pg
    context.close()


def with_fallback(upstream: str, db: Path) -> dict[str, Any]:
    """gpt-4o on a "primary" provider, falling back to the same model on "backup"."""
    config = gateway_config(upstream, db)
    provider = dict(config["providers"]["openai"])
    config["providers"] = {**config["providers"], "primary": provider, "backup": provider}
    config["models"]["gpt-4o"] = {
        "deployments": [{"provider": "primary", "model": "gpt-4o"}],
        "fallbacks": ["gpt-4o-backup"],
    }
    config["models"]["gpt-4o-backup"] = {"deployments": [{"provider": "backup", "model": "gpt-4o"}]}
    assert provider["api_key"] == API_KEY
    return config


def test_logs_page_lists_requests_and_opens_one_onto_its_attempts(
    openai_emu: OpenAIEmulator, start_gateway: GatewayFactory, tmp_path: Path, page: Any
) -> None:
    base = start_gateway(with_fallback(openai_emu.url, tmp_path / "ledger.db"))
    root = server_root(base)
    alice = Admin(base).create_key(name="alice")
    openai_emu.fail_next(Fault(status=503, body=b'{"error": {"message": "overloaded"}}'))
    rescued = chat(base, alice["key"])
    assert rescued.status_code == 200
    assert chat(base, MASTER_KEY, model="gpt-4o-mini").status_code == 200
    openai_emu.fail_next(Fault(status=400, body=b'{"error": {"message": "bad"}}'))
    assert chat(base, MASTER_KEY, model="gpt-4o-mini").status_code == 400

    log_in(page, root, MASTER_KEY)
    page.goto(root + "/ui/logs")
    rows = page.locator("#logs tbody.log")
    assert rows.count() == 3
    first = page.locator(f"tbody.log[data-request-id='{rescued.headers['x-request-id']}']")
    assert "alice" in first.inner_text()  # the key's name, not its id
    assert alice["id"] not in first.locator("tr").first.inner_text()
    details = first.locator(".log-more")
    assert not details.is_visible()
    first.locator("summary").click()
    assert details.is_visible()
    attempts = details.locator("tr[data-attempt]")
    assert attempts.count() == 2
    assert attempts.nth(0).get_attribute("data-deployment") == "primary/gpt-4o"
    assert "503" in attempts.nth(0).inner_text()
    assert attempts.nth(0).get_attribute("data-billed") == "false"
    assert attempts.nth(1).get_attribute("data-deployment") == "backup/gpt-4o"
    assert attempts.nth(1).get_attribute("data-billed") == "true"
    text = details.inner_text()
    assert "prompt 1" in text and "reported by the provider" in text
    assert "priced as" in text and "latency" in text

    # Filters: by deployment (any attempt), by status, by key, by cost.
    page.select_option("select[name=deployment]", "primary/gpt-4o")
    page.click("#log-filters button[type=submit]")
    page.wait_for_url("**deployment=primary*")
    ids = rows.evaluate_all("els => els.map(e => e.dataset.requestId)")
    assert ids == [rescued.headers["x-request-id"]]

    page.goto(root + "/ui/logs?status=error")
    assert rows.evaluate_all("els => els.map(e => e.dataset.status)") == ["400"]
    page.goto(root + f"/ui/logs?key={alice['id']}")
    assert rows.count() == 1
    page.goto(root + "/ui/logs?cost_above=1000")
    assert rows.count() == 0 and "No requests match" in page.inner_text("#logs")
    page.goto(root + "/ui/logs?from=2020-01-01&to=2020-01-02")
    assert rows.count() == 0


def test_logs_page_explains_a_filter_it_cannot_read(
    openai_emu: OpenAIEmulator, start_gateway: GatewayFactory, tmp_path: Path, page: Any
) -> None:
    root = server_root(start_gateway(gateway_config(openai_emu.url, tmp_path / "ledger.db")))
    log_in(page, root, MASTER_KEY)
    answer = page.goto(root + "/ui/logs?cost_above=lots")
    assert answer is not None and answer.status == 400
    assert "cost above" in page.inner_text("main")


def test_prompt_and_answer_show_only_for_keys_that_log_content(
    openai_emu: OpenAIEmulator, start_gateway: GatewayFactory, tmp_path: Path, page: Any
) -> None:
    base = start_gateway(gateway_config(openai_emu.url, tmp_path / "ledger.db"))
    root = server_root(base)
    admin = Admin(base)
    verbose = admin.create_key(name="verbose", metadata={"log_content": True})
    quiet = admin.create_key(name="quiet")
    secret_words = [{"role": "user", "content": "the launch code is swordfish"}]
    kept = chat(base, verbose["key"], messages=secret_words)
    hidden = chat(base, quiet["key"], messages=secret_words)
    assert kept.status_code == hidden.status_code == 200

    log_in(page, root, MASTER_KEY)
    page.goto(root + "/ui/logs")
    shown = page.locator(f"tbody.log[data-request-id='{kept.headers['x-request-id']}']")
    shown.locator("summary").click()
    prompt = shown.locator(".log-content pre.message[data-role='user']")
    assert "the launch code is swordfish" in prompt.inner_text()
    assert shown.locator(".log-content pre.answer").inner_text().strip()
    other = page.locator(f"tbody.log[data-request-id='{hidden.headers['x-request-id']}']")
    other.locator("summary").click()
    assert other.locator(".log-content").count() == 0
    assert "swordfish" not in other.inner_text()

    records = httpx.get(
        base + "/spend/records",
        headers={"authorization": f"Bearer {MASTER_KEY}"},
        timeout=10,
    ).json()["data"]
    by_id = {r["request_id"]: r for r in records}
    assert by_id[kept.headers["x-request-id"]]["content"]["messages"] == secret_words
    assert by_id[hidden.headers["x-request-id"]]["content"] is None
