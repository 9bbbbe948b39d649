"""The dashboard in a real browser (Playwright's async API driving Debian's Chromium),
together with the running proxy and worker and the official OpenAI SDK.

Skipped, with the reason, when Playwright or /usr/bin/chromium is not installed.
Set DASHBOARD_SCREENSHOTS=docs/screenshots to also save pictures of the main pages.
A failing test leaves a screenshot in its pytest tmp dir (path in the error).
"""

# ruff: noqa: F811  (the fixtures imported from test_dashboard_helpers are parameters here)

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import openai
import pytest

from dashboard.common import money_text
from shared import invalidation
from shared.balance_view import BalanceView
from shared.db import api_keys, providers
from shared.keys import hash_proxy_key, new_proxy_key, visible_prefix
from shared.money import usd_str
from tests.clients import openai_client
from tests.conftest import wait_settled
from tests.test_dashboard_helpers import add_usage, dashboard_url, make_user  # noqa: F401

async_api = pytest.importorskip("playwright.async_api", reason="pip install playwright")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
SHOTS = os.environ.get("DASHBOARD_SCREENSHOTS")
HAVE_CHROMIUM = Path(CHROMIUM).exists()
# the key page, as the proxy's developer docs show it (served at /public/images/api-key.png)
API_KEY_IMAGE = Path(__file__).resolve().parents[1] / "proxy" / "static" / "images" / "api-key.png"
if SHOTS:
    Path(SHOTS).mkdir(parents=True, exist_ok=True)


@pytest.fixture(scope="session")
async def chromium() -> AsyncIterator[object]:
    if not HAVE_CHROMIUM:
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    async with async_api.async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=ARGS, timeout=60_000
        )
        yield browser
        await browser.close()


@pytest.fixture
async def page(chromium) -> AsyncIterator[object]:
    context = await chromium.new_context(viewport={"width": 1200, "height": 860})
    context.set_default_timeout(10_000)
    page = await context.new_page()
    try:
        yield page
    finally:
        await context.close()


@contextlib.asynccontextmanager
async def screenshot_on_failure(page, tmp_path: Path) -> AsyncIterator[None]:
    try:
        yield
    except BaseException as exc:
        shot = tmp_path / "failure.png"
        with contextlib.suppress(Exception):
            await page.screenshot(path=str(shot), full_page=True)
        exc.add_note(f"screenshot of the page at the failure: {shot}")
        raise


async def shoot(page, name: str) -> None:
    if SHOTS:
        await page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


async def sign_in(page, base: str, email: str, password: str) -> None:
    await page.goto(base + "/login")
    await page.fill("input[name=email]", email)
    await page.fill("input[name=password]", password)
    await page.click("button:has-text('Sign in')")
    await page.wait_for_url(base + "/usage")


async def _publish_balance(pg, redis, user_id: int) -> None:
    balance, version = await pg.fetchrow(
        "SELECT balance_usd, balance_version FROM users WHERE id = $1", user_id
    )
    await BalanceView(redis).publish(user_id, balance, version)


async def _chat(client: openai.AsyncOpenAI, text: str = "Hello"):
    return await client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=[{"role": "user", "content": text}], max_tokens=32
    )


async def test_user_creates_uses_sees_and_revokes_a_key(
    pg, redis, proxy_url, worker, dashboard_url, page, tmp_path
):
    user = await make_user(pg, credit="10")
    await _publish_balance(pg, redis, user.id)
    async with screenshot_on_failure(page, tmp_path):
        if SHOTS:
            await page.goto(dashboard_url + "/login")
            await shoot(page, "sign-in")
        await sign_in(page, dashboard_url, user.email, user.password)
        await page.goto(dashboard_url + "/keys")
        await page.fill("input[name=name]", "from the browser")
        await page.click("button:has-text('Create new key')")
        secret = (await page.text_content("#new-key") or "").strip()
        assert secret.startswith("mw-")
        assert await page.is_visible("button.copy")
        await shoot(page, "keys")
        if SHOTS:  # the developer docs show this page at /public/images/api-key.png
            API_KEY_IMAGE.parent.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(API_KEY_IMAGE), full_page=False)

        client = openai_client(proxy_url, secret)
        raw = await _chat(client)
        assert raw.parse().choices[0].message.content
        request_id = raw.headers["x-request-id"]
        await wait_settled(pg, [request_id])
        cost = await pg.fetchval(
            "SELECT cost_usd FROM usage_records WHERE request_id = $1", request_id
        )
        assert cost > 0

        if SHOTS:  # some history, so that the chart in the picture has bars
            for days, amount in [(1, "0.42"), (2, "0.35"), (4, "0.61"), (6, "0.12"), (9, "0.48"),
                               (12, "0.27"), (15, "0.74"), (19, "0.2"), (23, "0.33")]:  # fmt: skip
                created = datetime.now(UTC) - timedelta(days=days)
                made = await pg.fetchval("SELECT id FROM api_keys WHERE user_id = $1", user.id)
                await add_usage(pg, user.id, model="gpt-4.1", cost=amount, created_at=created,
                                api_key_id=made)  # fmt: skip
        await page.goto(dashboard_url + "/usage")
        row = page.locator(f'tr[data-request-id="{request_id}"]')
        await row.wait_for()
        shown = row.locator("td.cost .money")
        assert await shown.get_attribute("title") == f"{usd_str(cost)} USD"  # exact on hover
        assert (await shown.text_content() or "").strip() == money_text(cost, cost=True)
        assert "gpt-4o" in (await row.text_content() or "")
        assert await page.locator("svg.chart rect.bar").count() == 30
        await shoot(page, "usage")
        if SHOTS:
            await page.set_viewport_size({"width": 390, "height": 844})
            await shoot(page, "usage-phone")
            await page.set_viewport_size({"width": 1200, "height": 860})

        await page.goto(dashboard_url + "/keys")
        key_id = await pg.fetchval("SELECT id FROM api_keys WHERE user_id = $1", user.id)
        await page.click(f'tr[data-key-id="{key_id}"] button:has-text("Revoke")')
        await page.wait_for_selector("#confirm-form")  # a confirmation first
        await page.click("#confirm-form button:has-text('Revoke key')")  # box not ticked
        await asyncio.sleep(0.2)
        assert await page.is_visible("#confirm-form")  # the browser blocks it
        assert not await pg.fetchval("SELECT revoked_at FROM api_keys WHERE id = $1", key_id)
        await page.check("#confirm-form input[name=confirm]")
        await page.click("#confirm-form button:has-text('Revoke key')")
        await page.wait_for_selector("text=revoked.")
        refused = False
        deadline = asyncio.get_running_loop().time() + 1.0
        while not refused:
            try:
                await _chat(client, "after revoke")
            except openai.AuthenticationError:
                refused = True
            else:
                assert asyncio.get_running_loop().time() < deadline, "revoked key still works"
                await asyncio.sleep(0.05)


async def test_operator_tops_up_pauses_and_resumes(
    pg, redis, proxy_url, worker, dashboard_url, page, tmp_path
):
    admin = await make_user(pg, admin=True)
    target = await make_user(pg, credit="1")
    await _publish_balance(pg, redis, target.id)
    secret = new_proxy_key()
    await api_keys.create(pg, target.id, hash_proxy_key(secret), visible_prefix(secret), name="b")
    client = openai_client(proxy_url, secret)
    async with screenshot_on_failure(page, tmp_path):
        await sign_in(page, dashboard_url, admin.email, admin.password)
        await page.goto(f"{dashboard_url}/admin/users?q={target.email}")
        await shoot(page, "operator-users")
        await page.click(f"a:has-text('{target.email}')")
        await page.fill("input[name=amount_usd]", "5")
        await page.fill("input[name=reason]", "browser top-up")
        await page.click("button:has-text('Change balance')")
        await page.wait_for_selector("#balance:has-text('$6.00')")
        note = await pg.fetchval(
            "SELECT note FROM ledger WHERE user_id = $1 ORDER BY id DESC LIMIT 1", target.id
        )
        assert "browser top-up" in note
        assert await pg.fetchval(
            "SELECT balance_usd FROM users WHERE id = $1", target.id
        ) == Decimal(6)

        try:
            await page.goto(dashboard_url + "/admin/providers")
            card = page.locator('section[data-provider="openai"]')
            await card.locator("button:has-text('Pause')").click()
            await page.wait_for_selector("#confirm-form")
            await page.click("#confirm-form button:has-text('Pause openai')")  # nothing filled
            await asyncio.sleep(0.2)
            assert await page.is_visible("#confirm-form")
            assert not await pg.fetchval("SELECT paused FROM providers WHERE name = 'openai'")
            await page.fill("#confirm-form input[name=reason]", "browser incident")
            await page.check("#confirm-form input[name=confirm]")
            await page.click("#confirm-form button:has-text('Pause openai')")
            await page.wait_for_selector(
                'section[data-provider="openai"] .status:has-text("paused")'
            )
            await shoot(page, "operator-providers")
            await _until(lambda: _chat(client), openai.RateLimitError)
            await card.locator("button:has-text('Reactivate')").click()
            await page.wait_for_selector(
                'section[data-provider="openai"] .status:has-text("active")'
            )
            await _until(lambda: _chat(client), None)
        finally:
            await providers.set_paused(pg, "openai", False)
            await invalidation.publish(redis, invalidation.PROVIDERS_MESSAGE)

        await page.goto(dashboard_url + "/admin/system")
        assert await page.is_visible("text=Queue depth")
        await shoot(page, "operator-system")
        if SHOTS:
            for name in ("provider-keys", "catalog", "alerts"):
                await page.goto(f"{dashboard_url}/admin/{name}")
                await shoot(page, f"operator-{name}")


async def _until(call, expected: type[Exception] | None, timeout: float = 1.5) -> None:
    """Repeat `call` until it raises `expected` (or succeeds, when None)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await call()
            outcome: type[Exception] | None = None
        except openai.APIStatusError as exc:
            outcome = type(exc)
        if outcome is expected:
            return
        assert asyncio.get_running_loop().time() < deadline, f"got {outcome}, not {expected}"
        await asyncio.sleep(0.05)


async def test_operator_finds_a_request_by_its_header_id(
    pg, redis, proxy_url, worker, dashboard_url, page, tmp_path
):
    """The `x-request-id` a customer quotes: the usage search finds it and the
    detail shows the exact cost; on a phone the usage and keys pages do not
    scroll sideways."""
    admin, user = await make_user(pg, admin=True), await make_user(pg, credit="3")
    await _publish_balance(pg, redis, user.id)
    secret = new_proxy_key()
    await api_keys.create(pg, user.id, hash_proxy_key(secret), visible_prefix(secret),
                          name="quoted")  # fmt: skip
    raw = await _chat(openai_client(proxy_url, secret), "find me")
    request_id = raw.headers["x-request-id"]
    await wait_settled(pg, [request_id])
    cost = await pg.fetchval("SELECT cost_usd FROM usage_records WHERE request_id = $1", request_id)
    async with screenshot_on_failure(page, tmp_path):
        await sign_in(page, dashboard_url, admin.email, admin.password)
        await page.goto(dashboard_url + "/admin/usage")
        await page.fill("input[name=request_id]", request_id)
        await page.click("button:has-text('Search')")
        await page.wait_for_selector("#request-id")
        assert (await page.text_content("#request-id") or "").strip() == request_id
        assert await page.get_attribute("#cost", "data-usd") == usd_str(cost)
        assert (await page.text_content("#cost") or "").strip() == f"{usd_str(cost)} USD"
        assert "quoted" in (await page.text_content("main") or "")
        await shoot(page, "operator-request")

        await page.context.clear_cookies()
        await sign_in(page, dashboard_url, user.email, user.password)
        await page.set_viewport_size({"width": 390, "height": 844})
        try:
            for path in ("/usage", "/keys"):
                await page.goto(dashboard_url + path)
                wide = await page.evaluate(
                    "document.documentElement.scrollWidth > window.innerWidth"
                )
                assert not wide, f"{path} scrolls sideways at 390 px"
        finally:
            await page.set_viewport_size({"width": 1200, "height": 860})
