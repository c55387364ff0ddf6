"""Dashboard details in a real headless Chromium: charts that do not invent values across
quiet minutes and tick small amounts precisely, any date range on the Spend page, and a key
form that keeps what was typed after a mistake."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gateway.ledger.db import create_ledger_engine
from gateway.ledger.records import SpendRecord
from gateway.ledger.store import write_batch
from tests.conftest import GatewayFactory, service_missing
from tests.emulators.openai_api import OpenAIEmulator
from tests.keys_helpers import MASTER_KEY, chat, gateway_config, server_root
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


def test_traffic_charts_leave_quiet_minutes_empty_and_draw_no_curves(
    openai_emu: OpenAIEmulator, start_gateway: GatewayFactory, tmp_path: Path, page: Any
) -> None:
    base = start_gateway(gateway_config(openai_emu.url, tmp_path / "ledger.db"))
    assert chat(base, MASTER_KEY).status_code == 200
    root = server_root(base)
    log_in(page, root, MASTER_KEY)
    page.goto(root + "/ui/traffic")
    page.wait_for_function("() => window.Chart && Chart.getChart('traffic-errors')")
    errors = page.evaluate(
        "() => { const c = Chart.getChart('traffic-errors'); return {data: c.data.datasets[0]"
        ".data, spanGaps: c.options.spanGaps, tension: c.options.elements.line.tension} }"
    )
    measured = [v for v in errors["data"] if v is not None]
    assert measured == [0]  # the one minute with a request: 0 % errors
    assert errors["data"].count(None) == len(errors["data"]) - 1  # no 0 % for quiet minutes
    assert errors["spanGaps"] is False and errors["tension"] == 0
    rate = page.evaluate("() => Chart.getChart('traffic-rate').data.datasets[0].data")
    assert None not in rate  # a quiet minute has a rate of 0 requests/s: that is a value


def test_spend_ticks_tell_small_amounts_apart(
    openai_emu: OpenAIEmulator, start_gateway: GatewayFactory, tmp_path: Path, page: Any
) -> None:
    base = start_gateway(gateway_config(openai_emu.url, tmp_path / "ledger.db"))
    assert chat(base, MASTER_KEY).status_code == 200
    root = server_root(base)
    log_in(page, root, MASTER_KEY)
    page.goto(root + "/ui/spend")
    page.wait_for_function("() => window.Chart && Chart.getChart('spend-chart')")
    ticks = page.evaluate(
        "() => { const f = Chart.getChart('spend-chart').options.scales.y.ticks.callback; "
        "return [0.015, 0.02, 0.00125, 2.5, 0].map(v => f(v)) }"
    )
    assert ticks == ["$0.015", "$0.02", "$0.00125", "$2.50", "$0"]


def test_spend_page_shows_any_range_of_days(
    openai_emu: OpenAIEmulator, start_gateway: GatewayFactory, tmp_path: Path, page: Any
) -> None:
    db = tmp_path / "ledger.db"
    root = server_root(start_gateway(gateway_config(openai_emu.url, db)))
    past = datetime(2026, 3, 4, 10, 0, tzinfo=UTC)

    async def write_old_record() -> None:
        engine = create_ledger_engine(f"sqlite+aiosqlite:///{db}")
        try:
            record = SpendRecord("req-old", past, past, "old-model", 200, cost_usd=Decimal("0.5"))
            await write_batch(engine, [record])
        finally:
            await engine.dispose()

    # Playwright's loop runs in this thread: write from another one.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, write_old_record()).result()
    log_in(page, root, MASTER_KEY)
    page.goto(root + "/ui/spend?period=30d")
    assert page.locator("#spend-groups tr[data-group='old-model']").count() == 0

    page.goto(root + "/ui/spend?period=range&from=2026-03-01&to=2026-03-05")
    assert page.locator("#spend-groups tr[data-group='old-model']").count() == 1
    assert page.locator("select[name=period]").input_value() == "range"
    assert page.locator("input[name=from]").input_value() == "2026-03-01"
    assert page.locator("input[name=to]").input_value() == "2026-03-05"
    assert page.get_attribute("#total-cost", "data-cost") == "0.5"
    page.wait_for_function("() => window.Chart && Chart.getChart('spend-chart')")
    labels = page.evaluate("() => Chart.getChart('spend-chart').data.labels")
    assert labels == ["03-01", "03-02", "03-03", "03-04", "03-05"]

    csv = page.request.get(root + "/ui/spend.csv?period=2026-03-01..2026-03-05&by=model")
    assert any(line.startswith("old-model,1,") for line in csv.text().splitlines())

    wrong = page.goto(root + "/ui/spend?period=range&from=2026-03-05&to=2026-03-01")
    assert wrong is not None and wrong.status == 400
    assert "on or after" in page.inner_text("main")


def test_the_key_form_keeps_what_was_typed_after_a_mistake(
    openai_emu: OpenAIEmulator, start_gateway: GatewayFactory, tmp_path: Path, page: Any
) -> None:
    root = server_root(start_gateway(gateway_config(openai_emu.url, tmp_path / "ledger.db")))
    log_in(page, root, MASTER_KEY)
    page.goto(root + "/ui/keys")
    form = page.locator("#new-key")
    form.locator("input[name=name]").fill("ci-runner")
    form.locator("input[name=allowed_models]").fill("gpt-4o*")
    form.locator("input[name=rpm]").fill("lots")
    form.locator("input[name=budget_usd]").fill("12.5")
    form.locator("button[type=submit]").click()
    page.wait_for_load_state("networkidle")
    assert "rpm" in page.inner_text("main")  # the mistake, named
    form = page.locator("#new-key")
    assert form.is_visible()  # its section is open again
    assert form.locator("input[name=name]").input_value() == "ci-runner"
    assert form.locator("input[name=allowed_models]").input_value() == "gpt-4o*"
    assert form.locator("input[name=rpm]").input_value() == "lots"
    assert form.locator("input[name=budget_usd]").input_value() == "12.5"
    assert "Requests per minute" in (form.locator("input[name=rpm]").get_attribute("title") or "")


def test_the_spend_page_shows_no_table_twice(
    openai_emu: OpenAIEmulator, start_gateway: GatewayFactory, tmp_path: Path, page: Any
) -> None:
    base = start_gateway(gateway_config(openai_emu.url, tmp_path / "ledger.db"))
    assert chat(base, MASTER_KEY).status_code == 200
    root = server_root(base)
    log_in(page, root, MASTER_KEY)
    page.goto(root + "/ui/spend?by=model")
    assert page.locator("#spend-groups").count() == 1
    assert page.locator("#top-models").count() == 0  # "By model" already lists them
    assert page.locator("#top-keys").count() == 1
    page.goto(root + "/ui/spend?by=key")
    assert page.locator("#top-keys").count() == 0
    assert page.locator("#top-models").count() == 1
    page.goto(root + "/ui/spend?by=team")
    assert page.locator("#top-keys").count() == 1 and page.locator("#top-models").count() == 1


def test_a_new_key_can_be_copied_and_keys_show_when_they_were_created(
    openai_emu: OpenAIEmulator, start_gateway: GatewayFactory, tmp_path: Path, browser: Any
) -> None:
    root = server_root(start_gateway(gateway_config(openai_emu.url, tmp_path / "ledger.db")))
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=root)
    page = context.new_page()
    try:
        log_in(page, root, MASTER_KEY)
        page.goto(root + "/ui/keys")
        page.locator("#new-key input[name=name]").fill("copied")
        page.locator("#new-key button[type=submit]").click()
        page.wait_for_selector("#created-key")
        plaintext = page.input_value("#plaintext")
        page.click("#copy-key")
        page.wait_for_function("() => document.getElementById('copy-key').textContent === 'Copied'")
        assert page.evaluate("() => navigator.clipboard.readText()") == plaintext
        today = datetime.now(UTC).date().isoformat()
        row = page.locator("#keys tr[data-name='copied']")
        assert row.locator(".created-at").inner_text() == today
    finally:
        context.close()


def test_every_page_fits_a_420_pixel_wide_screen(
    openai_emu: OpenAIEmulator, start_gateway: GatewayFactory, tmp_path: Path, browser: Any
) -> None:
    base = start_gateway(gateway_config(openai_emu.url, tmp_path / "ledger.db"))
    assert chat(base, MASTER_KEY).status_code == 200
    root = server_root(base)
    context = browser.new_context(viewport={"width": 420, "height": 900})
    context.set_default_timeout(15_000)
    page = context.new_page()
    try:
        log_in(page, root, MASTER_KEY)
        for name in ("spend", "traffic", "logs", "deployments", "keys"):
            page.goto(f"{root}/ui/{name}")
            # Wide tables scroll inside their card; the page itself never scrolls sideways.
            width = page.evaluate("() => document.documentElement.scrollWidth")
            assert width <= 420, (name, width)
    finally:
        context.close()
