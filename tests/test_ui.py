"""The dashboard at /ui, end to end: a real headless Chromium logs in and reads the pages of
a real gateway whose upstream is the OpenAI emulator on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import GatewayFactory, service_missing
from tests.emulators.common import Fault
from tests.emulators.openai_api import OpenAIEmulator
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
    pg.on("dialog", lambda dialog: dialog.accept())  # confirm() before revoke and rotate
    yield pg
    context.close()


def start(start_gateway: GatewayFactory, upstream: str, db: Path, **sections: Any) -> str:
    """A gateway with a master key and its ledger on ``db``; returns its root URL."""
    return server_root(start_gateway(gateway_config(upstream, db, **sections)))


def spend_json(root: str, **params: str) -> dict[str, Any]:
    response = httpx.get(
        root + "/v1/spend",
        params=params,
        headers={"authorization": f"Bearer {MASTER_KEY}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_login_takes_an_admin_key_and_keeps_only_a_signed_session(
    openai_emu: OpenAIEmulator, start_gateway: GatewayFactory, tmp_path: Path, page: Any
) -> None:
    root = start(start_gateway, openai_emu.url, tmp_path / "ledger.db")
    admin = Admin(root + "/v1")
    plain = admin.create_key(name="plain")["key"]
    boss = admin.create_key(name="boss", admin=True)["key"]

    page.goto(root + "/ui/spend")
    assert page.url.endswith("/ui/login")  # no session: sent to the login form
    log_in(page, root, "sk-gw-not-a-key")
    assert "was not accepted" in page.inner_text("main")
    log_in(page, root, plain)
    assert "not an admin key" in page.inner_text("main")

    log_in(page, root, boss)
    assert page.url.endswith("/ui/spend")
    assert page.inner_text("h1").startswith("Spend")
    (cookie,) = page.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
    assert boss not in cookie["value"] and boss not in page.url and boss not in page.content()

    page.click("text=Log out")
    page.wait_for_url("**/ui/login")
    page.goto(root + "/ui/keys")
    assert page.url.endswith("/ui/login")


def test_spend_chart_and_tables_show_the_requests_just_made(
    openai_emu: OpenAIEmulator, start_gateway: GatewayFactory, tmp_path: Path, page: Any
) -> None:
    root = start(start_gateway, openai_emu.url, tmp_path / "ledger.db")
    admin = Admin(root + "/v1")
    team = admin.create_team(name="research")
    alice = admin.create_key(name="alice", team="research")["key"]
    other = admin.create_key(name="other")["key"]
    for _ in range(3):
        assert chat(root + "/v1", alice, model="gpt-4o").status_code == 200
    assert chat(root + "/v1", alice, model="gpt-4o-mini").status_code == 200
    assert chat(root + "/v1", other, model="gpt-4o").status_code == 200
    expected = {row["group"]: row for row in spend_json(root, group_by="model", since="1d")["data"]}
    assert expected["gpt-4o"]["requests"] == 4

    problems: list[str] = []  # script errors and Content-Security-Policy violations

    def console(message: Any) -> None:
        if message.type == "error":
            problems.append(message.text)

    page.on("console", console)
    page.on("pageerror", lambda e: problems.append(str(e)))
    log_in(page, root, MASTER_KEY)
    page.goto(root + "/ui/spend?period=today&by=model")
    row = page.locator("#spend-groups tr[data-group='gpt-4o']")
    assert row.locator("td").nth(1).inner_text() == "4"
    cost = row.locator("td[data-cost]").get_attribute("data-cost")
    assert Decimal(cost) == Decimal(expected["gpt-4o"]["cost_usd"]) > 0
    total = Decimal(page.get_attribute("#total-cost", "data-cost"))
    assert total == sum(Decimal(r["cost_usd"]) for r in expected.values())

    # The chart draws the same numbers: one stacked dataset per model, summing to its cost.
    page.wait_for_function("() => window.Chart && Chart.getChart('spend-chart')")
    chart = page.evaluate(
        "() => { const c = Chart.getChart('spend-chart'); return {labels: c.data.labels, sets: "
        "c.data.datasets.map(d => ({label: d.label, sum: d.data.reduce((a, b) => a + b, 0)}))} }"
    )
    drawn = {s["label"]: s["sum"] for s in chart["sets"]}
    assert set(drawn) == {"gpt-4o", "gpt-4o-mini"}
    assert drawn["gpt-4o"] == pytest.approx(float(expected["gpt-4o"]["cost_usd"]))
    assert len(chart["labels"]) >= 1

    # "What did team research spend on which model?": pick the team; the page narrows to it.
    page.select_option("select[name=team]", team["id"])
    page.wait_for_function("() => location.search.includes('team=')")
    page.wait_for_selector("#spend-groups tr[data-group='gpt-4o-mini']")
    assert page.locator("#spend-groups tr[data-group='gpt-4o'] td").nth(1).inner_text() == "3"
    assert "team research" in page.inner_text("h1")

    page.click("nav >> text=Traffic")  # htmx swaps pages in place; charts are redrawn
    page.wait_for_function("() => window.Chart && Chart.getChart('traffic-rate')")
    assert problems == []

    csv = page.request.get(root + "/ui/spend.csv?period=today&by=model&team=" + team["id"])
    assert csv.ok and csv.headers["content-type"].startswith("text/csv")
    assert csv.text().splitlines()[0].startswith("model,requests")
    assert any(line.startswith("gpt-4o,3,") for line in csv.text().splitlines())


def test_traffic_page_counts_the_last_hour_from_the_ledger(
    openai_emu: OpenAIEmulator, start_gateway: GatewayFactory, tmp_path: Path, page: Any
) -> None:
    root = start(start_gateway, openai_emu.url, tmp_path / "ledger.db")
    for _ in range(4):
        assert chat(root + "/v1", MASTER_KEY).status_code == 200
    openai_emu.fail_next(Fault(status=400, body=b'{"error": {"message": "no"}}'))
    assert chat(root + "/v1", MASTER_KEY).status_code == 400

    log_in(page, root, MASTER_KEY)
    page.goto(root + "/ui/traffic")
    assert page.inner_text("#hour-requests") == "5"
    assert page.inner_text("#hour-error-rate") == "20.0%"
    rows = page.locator("#minutes tbody tr")
    assert (
        sum(int(rows.nth(i).locator("td").nth(1).text_content()) for i in range(rows.count())) == 5
    )
    page.wait_for_function("() => window.Chart && Chart.getChart('traffic-rate')")
    per_second = page.evaluate(
        "() => Chart.getChart('traffic-rate').data.datasets[0].data.reduce((a, b) => a + b, 0)"
    )
    assert per_second * 60 == pytest.approx(5, abs=0.05)


def test_a_key_created_in_the_browser_is_shown_once_and_revoking_it_locks_it_out(
    openai_emu: OpenAIEmulator, start_gateway: GatewayFactory, tmp_path: Path, page: Any
) -> None:
    root = start(start_gateway, openai_emu.url, tmp_path / "ledger.db")
    log_in(page, root, MASTER_KEY)
    page.goto(root + "/ui/keys")
    details = page.locator("details.create", has=page.locator("#new-key"))
    if details.get_attribute("open") is None:
        details.locator("summary").click()
    form = page.locator("#new-key")
    form.locator("input[name=name]").fill("ci-bot")
    form.locator("input[name=rpm]").fill("60")
    form.locator("input[name=budget_usd]").fill("25")
    form.locator("button[type=submit]").click()
    plaintext = page.locator("#plaintext").input_value()
    assert plaintext.startswith("sk-gw-")
    assert chat(root + "/v1", plaintext).status_code == 200

    row = page.locator("#keys tr[data-name='ci-bot']")
    assert "60 rpm" in row.inner_text() and "$25.00 monthly" in row.inner_text()
    page.goto(root + "/ui/keys")  # the plaintext is not shown again
    assert page.locator("#plaintext").count() == 0 and plaintext not in page.content()

    page.locator("#keys tr[data-name='ci-bot'] button.danger").click()
    page.wait_for_selector("#keys tr[data-name='ci-bot'].revoked")
    refused = chat(root + "/v1", plaintext)
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]


def test_editing_a_key_changes_its_limits_through_the_admin_rules(
    openai_emu: OpenAIEmulator, start_gateway: GatewayFactory, tmp_path: Path, page: Any
) -> None:
    root = start(start_gateway, openai_emu.url, tmp_path / "ledger.db")
    created = Admin(root + "/v1").create_key(name="edit-me", rpm=5)
    log_in(page, root, MASTER_KEY)
    page.goto(root + "/ui/keys")
    row = page.locator(f"#keys tr[data-key-id='{created['id']}']")
    row.locator("summary", has_text="Edit").click()
    row.locator("input[name=rpm]").fill("")  # empty lifts the limit
    row.locator("input[name=tpm]").fill("-3")
    row.locator("form.fields button[type=submit]").click()
    assert "tpm" in page.inner_text("#form-error")  # the admin API's own validation message
    row = page.locator(f"#keys tr[data-key-id='{created['id']}']")
    row.locator("summary", has_text="Edit").click()
    row.locator("input[name=rpm]").fill("")
    row.locator("input[name=tpm]").fill("1000")
    row.locator("form.fields button[type=submit]").click()
    page.wait_for_selector(f"#keys tr[data-key-id='{created['id']}'] >> text=1,000 tpm")
    shown = Admin(root + "/v1").client.get(f"/admin/keys/{created['id']}").json()
    assert shown["rpm"] is None and shown["tpm"] == 1000


def test_a_deployments_circuit_shows_open_after_injected_failures(
    openai_emu: OpenAIEmulator, start_gateway: GatewayFactory, tmp_path: Path, page: Any
) -> None:
    routing = {
        "retries": {"attempts_per_deployment": 1},
        "circuit": {"enabled": True, "consecutive_failures": 2, "cooldown": 300},
    }
    root = start(start_gateway, openai_emu.url, tmp_path / "ledger.db", routing=routing)
    log_in(page, root, MASTER_KEY)
    page.goto(root + "/ui/deployments")
    state = page.locator("#deployments tr", has_text="gpt-4o-mini").locator("[data-state]")
    assert state.get_attribute("data-state") == "closed"

    for _ in range(2):
        openai_emu.fail_next(Fault(status=503, body=b'{"error": {"message": "overloaded"}}'))
        assert chat(root + "/v1", MASTER_KEY, model="gpt-4o-mini").status_code == 503
    page.goto(root + "/ui/deployments")
    row = page.locator("#deployments tr", has_text="gpt-4o-mini")
    assert row.locator("[data-state]").get_attribute("data-state") == "open"
    assert "open · probe in" in row.inner_text()
    (count,) = row.locator("[data-error-type]").evaluate_all("els => els.map(e => e.dataset.count)")
    assert count == "2"  # the ledger's records: both requests failed with the same error type
    other = page.locator("#deployments tr[data-deployment]", has_text="text-embedding")
    assert other.locator("[data-state]").get_attribute("data-state") == "closed"


def test_posts_without_the_session_token_or_from_another_origin_are_refused(
    openai_emu: OpenAIEmulator, start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    root = start(start_gateway, openai_emu.url, tmp_path / "ledger.db")
    with httpx.Client(base_url=root, timeout=10) as client:
        login = client.post("/ui/login", data={"key": MASTER_KEY})
        assert login.status_code == 303 and "gw_ui_session" in client.cookies
        no_token = client.post("/ui/keys", data={"name": "sneaky"})
        assert no_token.status_code == 403
        page = client.get("/ui/keys").text
        token = page.split('name="csrf" value="')[1].split('"')[0]
        foreign = client.post(
            "/ui/keys",
            data={"name": "sneaky", "csrf": token},
            headers={"origin": "http://evil.example"},
        )
        assert foreign.status_code == 403
        assert "sneaky" not in client.get("/ui/keys").text
        forged = httpx.get(root + "/ui/spend", cookies={"gw_ui_session": "e30.forged"})
        assert forged.status_code == 303


def test_the_dashboard_can_be_switched_off(
    openai_emu: OpenAIEmulator, start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    root = start(start_gateway, openai_emu.url, tmp_path / "ledger.db", ui={"enabled": False})
    assert httpx.get(root + "/ui/login", timeout=10).status_code == 404


def test_without_a_master_key_the_dashboard_says_what_it_needs(
    openai_emu: OpenAIEmulator, start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    config = gateway_config(openai_emu.url, tmp_path / "ledger.db")
    config["auth"] = {}
    root = server_root(start_gateway(config))
    response = httpx.get(root + "/ui/login", timeout=10)
    assert response.status_code == 503 and "auth.master_key" in response.text


def test_pages_read_without_javascript(
    openai_emu: OpenAIEmulator, start_gateway: GatewayFactory, tmp_path: Path, browser: Any
) -> None:
    root = start(start_gateway, openai_emu.url, tmp_path / "ledger.db")
    assert chat(root + "/v1", MASTER_KEY, model="gpt-4o-mini").status_code == 200
    context = browser.new_context(java_script_enabled=False)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        page = context.new_page()
        log_in(page, root, MASTER_KEY)  # a plain form post and a redirect
        page.goto(root + "/ui/spend?period=today&by=model")
        row = page.locator("#spend-groups tr[data-group='gpt-4o-mini']")
        assert row.locator("td").nth(1).inner_text() == "1"
        page.select_option("select[name=by]", "provider")
        page.click("form.filters button[type=submit]")  # the <noscript> Show button
        assert "by=provider" in page.url
        assert page.locator("#spend-groups tr[data-group='openai']").count() == 1
        page.goto(root + "/ui/deployments")
        assert page.locator("#deployments tr[data-deployment]").count() == 3
    finally:
        context.close()


def test_a_session_ends_when_its_admin_key_is_revoked_or_rotated(
    openai_emu: OpenAIEmulator, start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    root = start(start_gateway, openai_emu.url, tmp_path / "ledger.db")
    admin = Admin(root + "/v1")
    for end in (admin.revoke, admin.rotate):
        created = admin.create_key(name="ops", admin=True)
        with httpx.Client(base_url=root, timeout=10) as client:
            assert client.post("/ui/login", data={"key": created["key"]}).status_code == 303
            assert client.get("/ui/keys").status_code == 200
            end(created["id"])
            assert client.get("/ui/keys").status_code == 303  # back to the login form


def test_repeated_failed_logins_are_refused_for_a_while(
    openai_emu: OpenAIEmulator, start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    root = start(start_gateway, openai_emu.url, tmp_path / "ledger.db")
    with httpx.Client(base_url=root, timeout=10) as client:
        for _ in range(10):
            assert client.post("/ui/login", data={"key": "sk-guess"}).status_code == 401
        refused = client.post("/ui/login", data={"key": MASTER_KEY})
        assert refused.status_code == 429 and "too many failed logins" in refused.text
        assert "gw_ui_session" not in client.cookies


def test_spend_page_shows_unknown_costs_as_unknown_not_zero(
    openai_emu: OpenAIEmulator, start_gateway: GatewayFactory, tmp_path: Path, page: Any
) -> None:
    """A model without a price: its row says "unknown" (not $0) and comes first; the total,
    which leaves it out, is marked as a lower bound."""
    config = gateway_config(openai_emu.url, tmp_path / "ledger.db")
    provider = config["models"]["gpt-4o"]["deployments"][0]["provider"]
    config["models"]["llama"] = {"deployments": [{"provider": provider, "model": "my-own-llama"}]}
    root = server_root(start_gateway(config))
    assert chat(root + "/v1", MASTER_KEY, model="llama").status_code == 200
    assert chat(root + "/v1", MASTER_KEY, model="gpt-4o").status_code == 200
    spend_json(root, group_by="model", since="1d")  # the writer has caught up
    log_in(page, root, MASTER_KEY)
    page.goto(root + "/ui/spend?period=today&by=model")
    row = page.locator("#spend-groups tr[data-group='llama']")
    assert row.locator("td[data-cost]").get_attribute("data-cost") == "unknown"
    assert row.locator("td[data-cost]").inner_text() == "unknown"
    first = page.locator("#spend-groups tr[data-group]").first
    assert first.get_attribute("data-group") == "llama"
    assert page.inner_text("#total-cost").startswith("≥")


def test_spend_page_shows_what_the_response_cache_saved(
    openai_emu: OpenAIEmulator, start_gateway: GatewayFactory, tmp_path: Path, page: Any
) -> None:
    root = start(start_gateway, openai_emu.url, tmp_path / "ledger.db", cache={"enabled": True})
    answers = [
        chat(root + "/v1", MASTER_KEY, temperature=0).headers["x-gateway-cache"] for _ in range(3)
    ]
    assert answers == ["miss", "hit", "hit"]
    savings = spend_json(root, group_by="model", since="1d")["savings"]
    assert savings["cache_hits"] == 2 and Decimal(savings["saved_usd"]) > 0
    log_in(page, root, MASTER_KEY)
    page.goto(root + "/ui/spend?period=today&by=model")
    assert page.inner_text("#cache-saved") not in ("", "$0")
    assert page.get_attribute("#cache-saved", "title") == "2 cache hit(s)"


def csrf_token(client: httpx.Client) -> str:
    return client.get("/ui/keys").text.split('name="csrf" value="')[1].split('"')[0]


def test_logging_out_ends_the_session_for_every_copy_of_its_cookie(
    openai_emu: OpenAIEmulator, start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    root = start(start_gateway, openai_emu.url, tmp_path / "ledger.db")
    with httpx.Client(base_url=root, timeout=10) as client:
        assert client.post("/ui/login", data={"key": MASTER_KEY}).status_code == 303
        copied = client.cookies["gw_ui_session"]
        assert httpx.get(root + "/ui/spend", cookies={"gw_ui_session": copied}).status_code == 200
        assert client.post("/ui/logout", data={"csrf": csrf_token(client)}).status_code == 303
    after = httpx.get(root + "/ui/spend", cookies={"gw_ui_session": copied}, timeout=10)
    assert after.status_code == 303 and after.headers["location"].endswith("/ui/login")


def failed_login(root: str, key: str = "sk-guess", via: str | None = None) -> httpx.Response:
    headers = {"x-forwarded-for": via} if via else {}
    return httpx.post(root + "/ui/login", data={"key": key}, headers=headers, timeout=10)


def test_a_forged_x_forwarded_for_does_not_escape_the_login_throttle(
    openai_emu: OpenAIEmulator, start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    root = start(start_gateway, openai_emu.url, tmp_path / "ledger.db")  # no trusted proxies
    for i in range(10):
        assert failed_login(root, f"sk-guess-{i:06}", via=f"203.0.113.{i}").status_code == 401
    refused = failed_login(root, MASTER_KEY, via="203.0.113.99")
    assert refused.status_code == 429 and "too many failed logins" in refused.text


def test_admins_behind_a_trusted_proxy_are_throttled_apart(
    openai_emu: OpenAIEmulator, start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    root = start(
        start_gateway,
        openai_emu.url,
        tmp_path / "ledger.db",
        server={"trusted_proxies": ["127.0.0.0/8"]},
    )
    for i in range(10):  # one client behind the load balancer guesses
        assert failed_login(root, f"sk-guess-{i:06}", via="198.51.100.7").status_code == 401
    assert failed_login(root, MASTER_KEY, via="198.51.100.7").status_code == 429
    other_admin = failed_login(root, MASTER_KEY, via="198.51.100.8")
    assert other_admin.status_code == 303  # logged in: another client, another count


def test_repeated_failures_with_one_key_prefix_are_throttled_from_any_address(
    openai_emu: OpenAIEmulator, start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    root = start(
        start_gateway,
        openai_emu.url,
        tmp_path / "ledger.db",
        server={"trusted_proxies": ["127.0.0.1"]},
    )
    for i in range(10):
        wrong = f"sk-gw-abcdef{i:040}"  # the same 12-character prefix each time
        assert failed_login(root, wrong, via=f"192.0.2.{i}").status_code == 401
    assert failed_login(root, "sk-gw-abcdefXYZ", via="192.0.2.200").status_code == 429
    assert failed_login(root, MASTER_KEY, via="192.0.2.201").status_code == 303
