"""The dashboard explains every cent, in Chromium (issue 16): a user's spend by
model and by key, their own request's detail and prices with their multiplier;
an operator's ledger adding up to the balance exactly, a confirmation that
blocks disabling a user until given, the proxies' error rates on the System
page; and the phone layout (390 px) of every main page.

Skipped with the reason when Playwright or Chromium is missing (see
tests/test_dashboard_browser.py for how Chromium is launched).
"""

# ruff: noqa: F811  (fixtures imported from the other dashboard test modules are parameters here)

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from shared.catalog import load_catalog
from shared.db import api_keys
from shared.keys import hash_proxy_key, new_proxy_key, visible_prefix
from shared.money import usd_str
from tests.clients import openai_client
from tests.conftest import wait_settled
from tests.test_dashboard_browser import (  # noqa: F401
    _chat,
    _publish_balance,
    chromium,
    page,
    screenshot_on_failure,
    shoot,
    sign_in,
)
from tests.test_dashboard_helpers import add_usage, dashboard_url, make_user  # noqa: F401

pytest.importorskip("playwright.async_api", reason="pip install playwright")


async def _key(pg, user_id: int, name: str, **controls) -> tuple[int, str]:
    secret = new_proxy_key()
    key = await api_keys.create(pg, user_id, hash_proxy_key(secret), visible_prefix(secret),
                                name=name, **controls)  # fmt: skip
    return key.id, secret


async def _usd(locator) -> Decimal:
    return Decimal(await locator.get_attribute("data-usd") or "nan")


async def test_user_sees_spend_by_model_and_key_own_detail_and_prices(
    pg, redis, proxy_url, worker, dashboard_url, page, settings, tmp_path
):
    user = await make_user(pg, credit="10")
    await pg.execute("UPDATE users SET rate_multiplier = 1.5 WHERE id = $1", user.id)
    await _publish_balance(pg, redis, user.id)
    alpha, secret = await _key(pg, user.id, "alpha", rpm_limit=60)
    beta, _ = await _key(pg, user.id, "beta")
    raw = await _chat(openai_client(proxy_url, secret), "by key")
    request_id = raw.headers["x-request-id"]
    await wait_settled(pg, [request_id])
    real_cost = await pg.fetchval(
        "SELECT cost_usd FROM usage_records WHERE request_id = $1", request_id
    )
    for cost in ("0.25", "0.00000735", "1.1"):
        await add_usage(pg, user.id, model="gpt-4.1", cost=cost, api_key_id=beta)
    await add_usage(
        pg,
        user.id,
        model="gpt-4.1",
        cost="0.5",
        api_key_id=beta,
        created_at=datetime.now(UTC) - timedelta(days=40),
    )  # outside the range
    async with screenshot_on_failure(page, tmp_path):
        await sign_in(page, dashboard_url, user.email, user.password)
        start = (datetime.now(UTC) - timedelta(days=7)).date().isoformat()
        await page.goto(f"{dashboard_url}/usage?from={start}")
        model_row = page.locator('#by-model tr[data-model="gpt-4.1"]')
        assert await _usd(model_row.locator(".spend .money")) == Decimal("1.35000735")
        assert "3" in (await model_row.locator("td").nth(1).text_content() or "")
        beta_row = page.locator(f'#by-key tr[data-key-id="{beta}"]')
        assert await _usd(beta_row.locator(".spend .money")) == Decimal("1.35000735")
        alpha_row = page.locator(f'#by-key tr[data-key-id="{alpha}"]')
        assert await _usd(alpha_row.locator(".spend .money")) == real_cost
        await shoot(page, "usage-by-key")

        await alpha_row.locator("a").click()  # only that key's requests
        await page.wait_for_url(f"**key={alpha}**")
        assert await page.locator("table.usage tbody tr[data-request-id]").count() == 1
        await page.click(f'tr[data-request-id="{request_id}"] a.rid')
        await page.wait_for_selector("#request-id")
        assert await page.get_attribute("#cost", "data-usd") == usd_str(real_cost)
        assert "alpha" in (await page.text_content("main") or "")
        assert await page.locator("#provider-key").count() == 0  # operators only

        await page.goto(dashboard_url + "/keys")
        row = page.locator(f'tr[data-key-id="{alpha}"]')
        assert "60 req/min" in (await row.locator(".rates").text_content() or "")
        assert await _usd(row.locator(".spend .money")) == real_cost
        assert (await row.locator(".requests").text_content() or "").strip() == "1"

        await page.goto(dashboard_url + "/prices")
        model = load_catalog(settings.model_catalog).get("gpt-4o")
        assert model is not None
        mine = model.base.input * model.multiplier * Decimal("1.5")
        shown = page.locator('tr[data-model="gpt-4o"] td.input .money')
        assert await _usd(shown) == mine
        assert "1.5" in (await page.text_content("#rate") or "")
        await shoot(page, "prices")

        await page.goto(dashboard_url + "/billing")  # the user's own top-ups and ledger
        assert await page.locator("table.billing tr[data-kind=topup]").count() == 1
        opening = await _usd(page.locator("#opening .money"))
        amounts = await page.locator("table.billing td.amount .money").evaluate_all(
            "spans => spans.map(s => s.dataset.usd)"
        )
        balance = await pg.fetchval("SELECT balance_usd FROM users WHERE id = $1", user.id)
        assert opening + sum(Decimal(a) for a in amounts) == balance
        assert await _usd(page.locator("#balance .money")) == balance

        entry = await pg.fetchrow(
            "SELECT actor, action FROM audit_log WHERE subject = $1", f"key:{alpha}"
        )
        assert entry is None  # made here by the test, not through the dashboard
        await page.goto(dashboard_url + "/keys")
        await page.fill("input[name=name]", "made by the user")
        await page.click("button:has-text('Create new key')")
        await page.wait_for_selector("#new-key")
        made = await pg.fetchval(
            "SELECT id FROM api_keys WHERE user_id = $1 AND name = 'made by the user'", user.id
        )
        assert (
            await pg.fetchval(
                "SELECT actor FROM audit_log WHERE action = 'key.create' AND subject = $1",
                f"key:{made}",
            )
            == user.email
        )  # a user's own action, with the user as actor


async def test_operator_ledger_adds_up_and_disabling_needs_a_confirmation(
    pg, redis, proxy_url, worker, dashboard_url, page, monkeypatch, tmp_path
):
    admin, target = await make_user(pg, admin=True), await make_user(pg, credit="20")
    now = datetime.now(UTC)
    for i, cost in enumerate(["0.30084", "0.01881375", "0.00000735", "1.5", "0.0000425"]):
        day = max(now - timedelta(days=i), now.replace(day=1, hour=0, minute=0, second=1))
        await add_usage(pg, target.id, cost=cost, created_at=day)
    async with screenshot_on_failure(page, tmp_path):
        await sign_in(page, dashboard_url, admin.email, admin.password)
        await page.goto(f"{dashboard_url}/admin/users/{target.id}")
        await page.fill("input[name=amount_usd]", "-0.123456789")
        await page.fill("input[name=reason]", "goodwill reversal")
        await page.click("button:has-text('Change balance')")
        await page.wait_for_selector("#confirm-form")
        await page.check("#confirm-form input[name=confirm]")
        await page.click("#confirm-form button:has-text('Debit')")
        await page.wait_for_selector("text=Balance changed")

        balance = await pg.fetchval("SELECT balance_usd FROM users WHERE id = $1", target.id)
        opening = await _usd(page.locator("#ledger-sum .money").first)
        amounts = [
            Decimal(v)
            for v in await page.locator("table.billing td.amount").evaluate_all(
                "cells => cells.map(c => c.dataset.usd)"
            )
        ]
        assert amounts and opening + sum(amounts) == balance  # to the last decimal
        assert await page.locator("table.billing tr[data-kind=charge]").count() >= 1
        assert await _usd(page.locator("#balance .money")) == balance
        await shoot(page, "operator-user-ledger")

        await page.check("input[name=disabled]")
        await page.click("button:has-text('Save')")
        await page.wait_for_selector("#confirm-form")
        await page.click("#confirm-form button:has-text('Disable user')")  # nothing given
        await asyncio.sleep(0.2)
        assert await page.is_visible("#confirm-form")
        assert not await pg.fetchval("SELECT disabled FROM users WHERE id = $1", target.id)
        await page.fill("#confirm-form input[name=reason]", "chargeback")
        await page.click("#confirm-form button:has-text('Disable user')")  # box not ticked
        await asyncio.sleep(0.2)
        assert not await pg.fetchval("SELECT disabled FROM users WHERE id = $1", target.id)
        await page.check("#confirm-form input[name=confirm]")
        await page.click("#confirm-form button:has-text('Disable user')")
        await page.wait_for_selector("text=User settings saved")
        assert await pg.fetchval("SELECT disabled FROM users WHERE id = $1", target.id)
        entry = await pg.fetchrow(
            "SELECT actor, reason FROM audit_log WHERE action = 'user.set' AND subject = $1"
            " ORDER BY id DESC LIMIT 1",
            f"user:{target.email}",
        )
        assert (entry["actor"], entry["reason"]) == (admin.email, "chargeback")

        monkeypatch.setenv("PROXY_METRICS_URLS", proxy_url + "/metrics")
        user = await make_user(pg, credit="1")
        await _publish_balance(pg, redis, user.id)
        _, secret = await _key(pg, user.id, "rates")
        await _chat(openai_client(proxy_url, secret))
        await page.goto(dashboard_url + "/admin/system")
        await page.click("button:has-text('Run reconcile')")  # as `meterway reconcile`
        await page.wait_for_selector("#reconcile-result")
        assert "Reconcile:" in (await page.text_content("#reconcile-result") or "")
        rates = page.locator("#error-rates")
        assert "Requests since the proxies started" in (await rates.text_content() or "")
        assert "Unreachable" not in (await rates.text_content() or "")
        await _chat(openai_client(proxy_url, secret))
        await page.reload()
        assert "last" in (await page.locator("#error-rates").text_content() or "")


async def test_phone_layout_has_no_sideways_scroll_and_a_one_row_menu(
    pg, redis, dashboard_url, page, tmp_path
):
    admin = await make_user(pg, admin=True, credit="3")
    key_id, _ = await _key(pg, admin.id, "a rather long key name for a phone", rpm_limit=600)
    for model in ("gpt-4.1", "gpt-4o-mini", "claude-sonnet-4-5"):
        await add_usage(pg, admin.id, model=model, cost="0.0123", api_key_id=key_id)
    async with screenshot_on_failure(page, tmp_path):
        await sign_in(page, dashboard_url, admin.email, admin.password)
        await page.set_viewport_size({"width": 390, "height": 844})
        for path in ("/usage", "/keys", "/prices", "/billing", "/settings",
                     f"/admin/users/{admin.id}", "/admin/usage", "/admin/system"):  # fmt: skip
            await page.goto(dashboard_url + path)
            wide = await page.evaluate("document.documentElement.scrollWidth > window.innerWidth")
            assert not wide, f"{path} scrolls sideways at 390 px"
            nav = await page.locator("header.top nav").bounding_box()
            assert nav is not None and nav["height"] < 48, f"{path}: the menu wraps"
        await page.goto(dashboard_url + "/usage")
        cost = page.locator("table.usage tbody tr td.cost").first
        box = await cost.bounding_box()
        assert box is not None and box["x"] + box["width"] <= 390  # Cost is on screen
        await shoot(page, "usage-phone-breakdown")
        await page.goto(dashboard_url + "/keys")
        await shoot(page, "keys-phone")
