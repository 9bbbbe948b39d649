"""A customer's bill end to end (issue #16 item 1) over real HTTP: the operator's
ledger adds up to the balance to the exact decimal, the usage search across
users, a request's detail, the one money format; and no page does one query
per row."""

# ruff: noqa: F811  (fixtures imported from test_dashboard_helpers are parameters here)

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg

from dashboard.common import money_text
from shared.db import api_keys
from shared.keys import hash_proxy_key, new_proxy_key, visible_prefix
from tests.test_dashboard_helpers import (  # noqa: F401  (fixtures)
    Browser,
    add_usage,
    browser,
    dashboard_url,
    make_user,
    other_browser,
)

USD = re.compile(r'data-usd="(-?[0-9.]+)"')


async def test_operator_ledger_adds_up_to_the_balance(pg, browser: Browser):
    admin, user = await make_user(pg, admin=True), await make_user(pg, credit="10.123456789")
    costs = ["0.0000425", "0.30084", "0.01881375", "0.00000735", "1.5"]
    for c in costs:
        await add_usage(pg, user.id, cost=c)
    await browser.login(admin)
    assert (await browser.post(f"/admin/users/{user.id}/credit",
                               {"amount_usd": "2.5", "reason": "invoice 1"}))[0] == 303  # fmt: skip
    await add_usage(pg, user.id, cost="0.25")
    status, text, _ = await browser.get(f"/admin/users/{user.id}")
    assert status == 200
    balance = await pg.fetchval("SELECT balance_usd FROM users WHERE id = $1", user.id)
    table = text.split('<table class="billing">')[1].split("</table>")[0]
    amounts = [Decimal(a) for a in re.findall(r'class="num amount" data-usd="([-0-9.]+)"', table)]
    # newest first: today's charges rolled up in one line, the credit, the first top-up
    assert len(amounts) == 3
    assert sum(amounts) == balance  # the month started at 0: the lines add up, exactly
    kinds = re.findall(r'<tr data-kind="([a-z]+)"', table)
    assert kinds == ["charge", "topup", "topup"]
    assert -amounts[0] == sum(Decimal(c) for c in costs) + Decimal("0.25")
    summary = text.split('id="ledger-sum"')[1].split("</p>")[0]
    assert Decimal(USD.findall(summary)[-1]) == balance
    assert "Usage: 6 requests" in table
    assert f'href="/admin/usage?user={user.email.replace("@", "%40")}' in text


async def test_usage_search_and_request_detail(pg, browser: Browser, other_browser: Browser):
    admin = await make_user(pg, admin=True)
    alice, bob = await make_user(pg, credit="5"), await make_user(pg, credit="5")
    secret = new_proxy_key()
    key = await api_keys.create(pg, alice.id, hash_proxy_key(secret), visible_prefix(secret),
                                name="ci-key", rpm_limit=60)  # fmt: skip
    old = datetime.now(UTC) - timedelta(days=3)
    r1 = await add_usage(pg, alice.id, cost="0.00000735", model="gpt-4o")
    r2 = await add_usage(pg, alice.id, cost="0.30084", model="gpt-4o-mini", created_at=old)
    r3 = await add_usage(pg, bob.id, cost="0.01881375")
    await pg.execute("UPDATE usage_records SET api_key_id = $1, input_tokens = 1234567,"
                     " upstream_request_id = 'chatcmpl-up-1', stream = true,"
                     " duration_ms = 1234, ttfb_ms = 56 WHERE request_id = $2",
                     key.id, r1)  # fmt: skip
    await browser.login(admin)
    _, text, _ = await browser.get(f"/admin/usage?user={alice.email}")
    assert r1 in text and r2 in text and r3 not in text
    assert "1,234,567" in text  # thousands separators
    _, text, _ = await browser.get("/admin/usage?key=ci-key")
    assert r1 in text and r2 not in text
    _, text, _ = await browser.get(f"/admin/usage?key={key.id}&model=gpt-4o")
    assert r1 in text and r2 not in text
    today = datetime.now(UTC).date()
    _, text, _ = await browser.get(f"/admin/usage?user={alice.email}&from={today}&to={today}")
    assert r1 in text and r2 not in text
    day = old.date()
    _, text, _ = await browser.get(f"/admin/usage?from={day}&to={day}&user={alice.email}")
    assert r2 in text and r1 not in text
    totals = text.split('id="totals"')[1].split("</p>")[0]
    assert 'data-usd="0.30084"' in totals
    status, _, resp = await browser.get(f"/admin/usage?request_id={r1}")
    assert status == 303 and resp.headers["Location"] == f"/admin/requests/{r1}"
    status, text, _ = await browser.get(f"/admin/requests/{r1}")
    assert status == 200
    assert 'id="cost" data-usd="0.00000735">0.00000735 USD' in text
    assert "chatcmpl-up-1" in text and "ci-key" in text and alice.email in text
    assert "1,234,567" in text
    assert '<dd id="duration">1,234 ms, first byte after 56 ms</dd>' in text
    _, text, _ = await browser.get(f"/admin/requests/{r2}")
    assert "not recorded" in text.split('id="duration"')[1].split("</dd>")[0]
    assert (await browser.get("/admin/requests/req_nope"))[0] == 404
    # a user sees their own request's detail, never another's
    await other_browser.login(bob)
    assert (await other_browser.get(f"/usage/requests/{r3}"))[0] == 200
    assert (await other_browser.get(f"/usage/requests/{r1}"))[0] == 404
    assert (await other_browser.get("/admin/usage"))[0] == 403
    _, text, _ = await other_browser.get("/usage")
    assert f"/usage/requests/{r3}" in text


async def test_money_format():
    for value, shown, as_cost in [
        ("22.93141505", "$22.93", "$22.93"), ("0.30084", "$0.30", "$0.3008"),
        ("0.01881375", "$0.02", "$0.01881"), ("0.00000735", "$0.00000735", "$0.00000735"),
        ("1234567.891", "$1,234,567.89", "$1,234,567.89"), ("-0.25", "-$0.25", "-$0.25"),
        ("0", "$0.00", "$0.00"),
    ]:  # fmt: skip
        assert money_text(Decimal(value)) == shown
        assert money_text(Decimal(value), cost=True) == as_cost


async def test_pages_do_not_query_per_row(pg, browser: Browser, monkeypatch):
    """Many keys and records: the user page and the search run a handful of
    statements (every asyncpg statement of this process is counted)."""
    admin, user = await make_user(pg, admin=True), await make_user(pg, credit="50")
    for i in range(30):
        s = new_proxy_key()
        await api_keys.create(pg, user.id, hash_proxy_key(s), visible_prefix(s), name=f"k{i}")
    for _ in range(60):
        await add_usage(pg, user.id, cost="0.001")
    await browser.login(admin)
    count = [0]
    for name in ("fetch", "fetchrow", "fetchval", "execute"):
        original = getattr(asyncpg.Connection, name)

        def counted(self, *args, _original=original, **kwargs):
            count[0] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(asyncpg.Connection, name, counted)
    pages = (f"/admin/users/{user.id}", f"/admin/usage?user={user.email}", "/admin/audit",
             f"/admin/users/{user.id}/billing", "/admin/users", "/admin/providers",
             "/admin/provider-keys", "/admin/system", "/admin/alerts", "/admin/codes")  # fmt: skip
    for path in pages:
        count[0] = 0
        status, _, _ = await browser.get(path)
        assert status == 200
        # 30 keys, 60 rows: not one query each (the rest: session, banners, flash)
        assert 0 < count[0] < 25, (path, count[0])
    await browser.login(user)  # the user's own pages: as many statements with more rows
    user_pages = ("/usage", "/keys", "/billing", "/prices", "/settings", "/usage?page=2")

    async def statements() -> dict[str, int]:
        found = {}
        for path in user_pages:
            count[0] = 0
            status, _, _ = await browser.get(path)
            assert status == 200
            found[path] = count[0]
        return found

    before = await statements()
    assert all(0 < n < 20 for n in before.values()), before
    for i in range(20):
        s = new_proxy_key()
        key = await api_keys.create(pg, user.id, hash_proxy_key(s), visible_prefix(s), name=f"m{i}")
        await add_usage(pg, user.id, cost="0.002", api_key_id=key.id, model=f"model-{i}")
    assert await statements() == before


def test_every_template_uses_the_one_money_format():
    """Amounts go through money()/cost()/price() (or exact() in form values and the
    request's exact cost): no template writes its own `$` before a number."""
    import re
    from pathlib import Path

    templates = Path(__file__).resolve().parents[1] / "dashboard" / "templates"
    for path in templates.glob("*.html"):
        text = path.read_text()
        assert "usd(" not in text, path.name
        assert not re.search(r"\$\{\{", text), path.name  # "${{ value }}"
