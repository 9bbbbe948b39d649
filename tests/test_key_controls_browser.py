"""Chromium on the keys page: a key's Limits link opens its form, and saved
limits show in the table (skips without Playwright or Chromium)."""

# ruff: noqa: F811  (the fixtures imported below are parameters here)

from __future__ import annotations

from decimal import Decimal

from tests.test_dashboard_browser import (  # noqa: F401  (fixtures)
    chromium,
    page,
    screenshot_on_failure,
    sign_in,
)
from tests.test_dashboard_helpers import dashboard_url, make_user  # noqa: F401


async def test_limits_link_opens_the_keys_form_in_a_browser(pg, dashboard_url, page, tmp_path):
    """Chromium: the Limits link opens the key's form; saving a budget and a model shows them."""
    user = await make_user(pg)
    async with screenshot_on_failure(page, tmp_path):
        await sign_in(page, dashboard_url, user.email, user.password)
        await page.goto(dashboard_url + "/keys")
        await page.fill("input[name=name]", "browser key")
        await page.click("button:has-text('Create new key')")
        key_id = await pg.fetchval("SELECT id FROM api_keys WHERE user_id = $1", user.id)
        await page.click(f'tr[data-key-id="{key_id}"] a:has-text("Limits")')
        form = page.locator(f"#controls-{key_id}")
        assert await form.get_attribute("open") is not None
        await form.locator("input[name=budget_usd]").fill("1.5")
        await form.locator("select[name=budget_period]").select_option("day")
        await form.locator("select[name=models]").select_option(["gpt-4o-mini"])
        await form.locator("button:has-text('Save limits')").click()
        await page.wait_for_selector("text=saved.")
        row = page.locator(f'tr[data-key-id="{key_id}"]')
        assert (await row.locator("td.budget").text_content() or "").strip() == "$1.50 / day"
        assert (await row.locator("td.models").text_content() or "").strip() == "gpt-4o-mini"
    key = await pg.fetchrow("SELECT * FROM api_keys WHERE id = $1", key_id)
    assert key["budget_usd"] == Decimal("1.5") and key["models"] == ["gpt-4o-mini"]
