"""Every user's ledger (contract section 7): the /billing page, the monthly
statement CSV whose lines sum to the month's change of balance, the operator's
view of any user, code batches downloaded once, reconcile's money-in checks, and
the whole Add credit flow in Chromium against the Stripe simulator."""

# ruff: noqa: F811  (fixtures imported from other test modules are parameters here)

from __future__ import annotations

import asyncio
import csv
import io
import secrets
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from shared.balance_view import BalanceView
from shared.db import codes, payments, users
from shared.reconcile import find_differences, money_in_differences
from shared.redeem import Redeemer
from tests.test_dashboard_browser import chromium, page, screenshot_on_failure, sign_in  # noqa: F401
from tests.test_dashboard_helpers import (  # noqa: F401
    Browser,
    add_usage,
    browser,
    dashboard_url,
    make_user,
    other_browser,
)
from tests.test_stripe import Pay, pay  # noqa: F401


async def _code(pg, amount: str) -> tuple[int, str]:
    async with pg.acquire() as conn:
        ((code_id, code),) = await codes.create_batch(
            conn, Decimal(amount), 1, expires_at=None, note=None, created_by="test"
        )
    return code_id, code


async def _last_ledger_id(pg, user_id: int) -> int:
    return await pg.fetchval("SELECT max(id) FROM ledger WHERE user_id = $1", user_id)


async def _date(pg, ledger_id: int, when: str) -> None:
    await pg.execute(
        "UPDATE ledger SET created_at = $2 WHERE id = $1", ledger_id, datetime.fromisoformat(when)
    )


async def _history(pg, redis, user_id: int) -> dict[str, Decimal]:
    """Entries of every kind over March, April and May 2025."""
    marks: dict[str, Decimal] = {}

    async def credit(amount: str, kind: str, note: str) -> None:
        async with pg.acquire() as conn, conn.transaction():
            await users.change_balance(conn, user_id, Decimal(amount), kind=kind, note=note)

    await credit("100", "topup", "invoice 1 (by op@example.com, dashboard)")
    await _date(pg, await _last_ledger_id(pg, user_id), "2025-03-10T10:00:00+00:00")
    await add_usage(pg, user_id, cost="0.5")
    await _date(pg, await _last_ledger_id(pg, user_id), "2025-03-20T10:00:00+00:00")
    marks["opening"] = await pg.fetchval("SELECT balance_usd FROM users WHERE id = $1", user_id)
    _, code = await _code(pg, "7.25")
    await Redeemer(pg, redis, BalanceView(redis)).redeem(user_id, code)
    await _date(pg, await _last_ledger_id(pg, user_id), "2025-04-01T00:00:00+00:00")
    for cost in ("0.125", "0.25"):
        await add_usage(pg, user_id, cost=cost)
        await _date(pg, await _last_ledger_id(pg, user_id), "2025-04-02T08:00:00+00:00")
    sid = "cs_test_" + secrets.token_hex(6)
    async with pg.acquire() as conn:
        await payments.credit_session(conn, session_id=sid, user_id=user_id,
                                      payment_intent="pi_" + sid, amount_usd=Decimal("12.34"),
                                      event_id=None)  # fmt: skip
    await _date(pg, await _last_ledger_id(pg, user_id), "2025-04-02T09:00:00+00:00")
    await add_usage(pg, user_id, cost="0.000001")
    await _date(pg, await _last_ledger_id(pg, user_id), "2025-04-03T09:00:00+00:00")
    async with pg.acquire() as conn:
        await payments.debit_refunds(conn, session_id=sid, user_id=user_id, charge_id="ch_1",
                                     refunds=[("re_" + sid, Decimal(2))], event_id=None)  # fmt: skip
    await _date(pg, await _last_ledger_id(pg, user_id), "2025-04-05T09:00:00+00:00")
    await credit("-1.5", "adjustment", "goodwill reversal")
    await _date(pg, await _last_ledger_id(pg, user_id), "2025-04-30T23:59:59.999+00:00")
    marks["closing"] = await pg.fetchval("SELECT balance_usd FROM users WHERE id = $1", user_id)
    await credit("3", "topup", "May")
    await _date(pg, await _last_ledger_id(pg, user_id), "2025-05-01T00:00:00+00:00")
    # the entries above were written straight to Postgres: give Redis the
    # balance they end at, as every real path does (or `reconcile` reports it)
    balance, version = await users.balance(pg, user_id)
    await BalanceView(redis).publish(user_id, balance, version)
    return marks


def _rows(text: str) -> list[dict]:
    reader = csv.DictReader(io.StringIO(text))
    assert reader.fieldnames == ["date", "kind", "description", "amount_usd", "balance_usd"]
    return list(reader)


async def test_statement_lines_sum_exactly_to_the_months_change(
    pg, redis, browser: Browser, other_browser: Browser
):
    user = await make_user(pg)
    marks = await _history(pg, redis, user.id)
    assert await browser.login(user) == 303
    status, text, resp = await browser.get("/billing/statement.csv?month=2025-04")
    assert status == 200 and resp.headers["Content-Type"].startswith("text/csv")
    rows = _rows(text)
    assert [(r["date"], r["kind"]) for r in rows] == [
        ("2025-04-01", "redemption"), ("2025-04-02", "charge"), ("2025-04-02", "topup"),
        ("2025-04-03", "charge"), ("2025-04-05", "refund"), ("2025-04-30", "adjustment"),
    ]  # fmt: skip
    assert sum(Decimal(r["amount_usd"]) for r in rows) == marks["closing"] - marks["opening"]
    assert Decimal(rows[-1]["balance_usd"]) == marks["closing"]
    assert rows[1]["amount_usd"] == "-0.375" and rows[1]["description"] == "Usage: 2 requests"
    assert rows[3]["amount_usd"] == "-0.000001"
    assert rows[0]["description"].startswith("Redemption code #")
    assert "cs_test_" in rows[2]["description"] and "re_" in rows[4]["description"]
    assert Decimal(rows[4]["amount_usd"]) == -2 and Decimal(rows[5]["amount_usd"]) == Decimal(
        "-1.5"
    )
    running = marks["opening"]
    for r in rows:  # each line's balance is the one before plus its amount
        running += Decimal(r["amount_usd"])
        assert Decimal(r["balance_usd"]) == running
    march = _rows((await browser.get("/billing/statement.csv?month=2025-03"))[1])
    assert sum(Decimal(r["amount_usd"]) for r in march) == marks["opening"]
    assert len(_rows((await browser.get("/billing/statement.csv?month=2025-05"))[1])) == 1
    assert (await browser.get("/billing/statement.csv?month=2025-13"))[0] == 400
    assert (await browser.get("/billing/statement.csv?month=abc"))[0] == 400

    status, text, _ = await browser.get("/billing?month=2025-04")
    assert status == 200 and "Usage: 2 requests" in text and "redemption" in text
    assert 'id="statement-csv"' in text

    # another user sees only their own; an operator sees this user's
    someone = await make_user(pg)
    assert await other_browser.login(someone) == 303
    assert _rows((await other_browser.get("/billing/statement.csv?month=2025-04"))[1]) == []
    assert (await other_browser.get(f"/admin/users/{user.id}/billing"))[0] == 403
    admin = await make_user(pg, admin=True)
    assert await other_browser.login(admin) == 303
    status, text, _ = await other_browser.get(f"/admin/users/{user.id}")
    assert f"/admin/users/{user.id}/billing" in text
    status, text, _ = await other_browser.get(f"/admin/users/{user.id}/billing?month=2025-04")
    assert status == 200 and user.email in text and "Usage: 2 requests" in text
    status, text, _ = await other_browser.get(
        f"/admin/users/{user.id}/billing/statement.csv?month=2025-04"
    )
    assert _rows(text) == rows
    problems = await money_in_differences(pg)
    assert not [p for p in problems if "top-ups" not in p], problems


async def test_reconcile_catches_a_doubled_external_id(pg, redis):
    user = await make_user(pg)
    code_id, code = await _code(pg, "4")
    await Redeemer(pg, redis, BalanceView(redis)).redeem(user.id, code)
    async with pg.acquire() as conn:
        before = set(await find_differences(conn, redis))
        tx = conn.transaction()
        await tx.start()
        try:  # planted, inside a transaction that is rolled back
            await conn.execute("ALTER TABLE ledger DROP CONSTRAINT ledger_external_id_key")
            await users.change_balance(conn, user.id, Decimal(4), kind="redemption",
                                       external_id=f"code:{code_id}")  # fmt: skip
            found = set(await find_differences(conn, redis)) - before
        finally:
            await tx.rollback()
        assert any(f"code:{code_id} is in the ledger 2 times" in p for p in found), found
        assert any(f"code:{code_id}: 2 ledger entries" in p for p in found), found
        assert any("top-ups" in p for p in found), found
        # a credit with no source, and a redeemed code never credited
        tx = conn.transaction()
        await tx.start()
        try:
            await conn.execute("DELETE FROM ledger WHERE external_id = $1", f"code:{code_id}")
            await conn.execute(
                "INSERT INTO ledger (user_id, kind, amount_usd, balance_after, external_id)"
                " VALUES ($1, 'topup', 1, 1, 'stripe_session:cs_ghost')",
                user.id,
            )
            found = set(await find_differences(conn, redis)) - before
        finally:
            await tx.rollback()
        assert any(f"code:{code_id}: 0 ledger entries" in p for p in found), found
        assert any("stripe_session:cs_ghost has no code" in p for p in found), found
        assert set(await find_differences(conn, redis)) == before


async def test_redeem_form_and_operator_code_batch_downloaded_once(
    pg, redis, browser: Browser, other_browser: Browser
):
    admin = await make_user(pg, admin=True)
    assert await other_browser.login(admin) == 303
    status, text, _ = await other_browser.get("/admin/codes")
    assert status == 200
    once = text.split('name="once" value="', 1)[1].split('"', 1)[0]
    form = {"amount_usd": "2.5", "count": "3", "note": "batch A", "once": once}
    status, text, resp = await other_browser.post("/admin/codes", form)
    assert status == 200 and "attachment" in resp.headers["Content-Disposition"]
    made = list(csv.DictReader(io.StringIO(text)))
    assert len(made) == 3 and all(r["code"].startswith("mwc-") for r in made)
    # the same form again makes nothing, and the list never shows a code
    status, text, _ = await other_browser.post("/admin/codes", form)
    assert "already" in text and not any(r["code"] in text for r in made)
    status, text, _ = await other_browser.get("/admin/codes")
    assert "batch A" in text and not any(r["code"] in text for r in made)
    for bad in ({"amount_usd": "0"}, {"amount_usd": "1e2"}, {"amount_usd": "5", "count": "0"},
                {"amount_usd": "5", "expires_at": "2020-01-01T00:00"}):  # fmt: skip
        assert (await other_browser.post("/admin/codes", bad))[0] == 400

    user = await make_user(pg)
    assert await browser.login(user) == 303
    assert (await browser.get("/admin/codes"))[0] == 403
    status, _, resp = await browser.post("/billing/redeem", {"code": made[0]["code"]})
    assert status == 303
    status, text, _ = await browser.get("/billing")
    assert "2.5 USD credited" in text and made[0]["code"] not in text
    status, text, _ = await browser.post("/billing/redeem", {"code": made[0]["code"]})
    assert status == 409 and "already been redeemed" in text and made[0]["code"] not in text
    status, text, _ = await browser.post("/billing/redeem", {"code": "mwc-nope"})
    assert status == 400 and "Invalid" in text
    assert await pg.fetchval("SELECT balance_usd FROM users WHERE id = $1", user.id) == Decimal(
        "2.5"
    )


async def test_add_credit_in_chromium_reaches_stripe_and_the_late_credit_shows_up(
    pg, pay: Pay, page, tmp_path
):
    user = await make_user(pg)
    pay.sim.webhook_delay = 1.5  # the webhook arrives after the customer is back
    try:
        async with screenshot_on_failure(page, tmp_path):
            await sign_in(page, pay.url, user.email, user.password)
            await page.goto(pay.url + "/billing")
            await page.click("a:has-text('Add credit')")
            await page.fill("input[name=amount_usd]", "12.34")
            await page.click("button:has-text('Continue to payment')")
            await page.wait_for_url(pay.sim_url + "/checkout/*")
            assert (await page.text_content("#amount")) == "$12.34"
            params = pay.sim.created[-1]
            assert params["client_reference_id"] == str(user.id)
            assert params["line_items[0][price_data][unit_amount]"] == "1234"
            await page.click("button:has-text('Pay')")
            await page.wait_for_url(pay.url + "/billing/add-credit/success*")
            assert await page.is_visible("#waiting")
            await page.wait_for_selector("#credited", timeout=5000)
            assert "12.34" in (await page.text_content("#credited") or "")
            assert "12.34" in (await page.text_content("#balance") or "")
            await page.goto(pay.url + "/billing")
            assert await page.locator("tr[data-kind=topup]").count() == 1

            await page.goto(pay.url + "/billing/add-credit")
            await page.fill("input[name=amount_usd]", "6")
            await page.click("button:has-text('Continue to payment')")
            await page.wait_for_url(pay.sim_url + "/checkout/*")
            await page.click("button:has-text('Cancel')")
            await page.wait_for_url(pay.url + "/billing/add-credit/cancel")
            assert await page.is_visible("#cancelled")
    finally:
        pay.sim.webhook_delay = 0.0
        await asyncio.sleep(0)
    assert await pg.fetchval("SELECT balance_usd FROM users WHERE id = $1", user.id) == Decimal(
        "12.34"
    )


def test_month_bounds():
    from shared.db.ledger import month_bounds

    assert month_bounds(2025, 12) == (datetime(2025, 12, 1, tzinfo=UTC),
                                      datetime(2026, 1, 1, tzinfo=UTC))  # fmt: skip


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
