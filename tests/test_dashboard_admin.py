"""Dashboard operator pages over HTTP: refused to non-operators page by page and
form by form; credit, user settings, providers, provider keys, alerts, system."""

# ruff: noqa: F811  (the fixtures imported from test_dashboard_helpers are parameters here)

from __future__ import annotations

import asyncio
import secrets
from decimal import Decimal

import pytest

from dashboard.admin_ops import queue_stats
from dashboard.common import State
from shared import redis_keys
from shared.db import providers
from shared.db.usage import start_of_utc_day
from shared.keys import SecretBox
from shared.money import units_floor
from shared.redis_keys import INVALIDATE_CHANNEL
from tests.test_dashboard_helpers import (  # noqa: F401  (fixtures)
    Browser,
    add_usage,
    browser,
    dashboard_url,
    make_user,
    other_browser,
)
from tests.util import SECRET_KEY

OPERATOR_PAGES = [
    "/admin/users",
    "/admin/users/{uid}",
    "/admin/providers",
    "/admin/provider-keys",
    "/admin/alerts",
    "/admin/catalog",
    "/admin/system",
]
OPERATOR_FORMS = [
    ("/admin/users", {"email": "sneaky@example.com", "is_admin": "on"}),
    ("/admin/users/{uid}/credit", {"amount_usd": "1000", "reason": "free money"}),
    ("/admin/users/{uid}/settings", {"rate_multiplier": "0"}),
    ("/admin/users/{uid}/password", {"password": "x" * 12, "confirm": "x" * 12}),
    ("/admin/users/{uid}/invite", {}),
    ("/admin/providers/openai/pause", {}),
    ("/admin/providers/anthropic/resume", {}),
    ("/admin/providers/openai/thresholds", {"warn_usd": "1", "stop_usd": "0"}),
    ("/admin/provider-keys", {"provider": "openai", "secret": "sk-stolen-123456", "name": "x"}),
    ("/admin/provider-keys/{pkid}/disable", {}),
    ("/admin/provider-keys/{pkid}/enable", {}),
    ("/admin/provider-keys/{pkid}/remove", {}),
]


CONFIRM = {"confirming": "1", "confirm": "yes", "reason": "a test"}


async def _snapshot(pg) -> tuple:
    return (
        await pg.fetch("SELECT id, email, is_admin, disabled, rate_multiplier, balance_usd,"
                       " password_hash FROM users ORDER BY id"),
        await pg.fetch("SELECT * FROM providers ORDER BY name"),
        await pg.fetch("SELECT id, status FROM provider_keys ORDER BY id"),
        await pg.fetchval("SELECT count(*) FROM ledger"),
    )  # fmt: skip


async def test_operator_pages_and_forms_refuse_non_operators(pg, provider_keys, browser: Browser):
    user = await make_user(pg, credit="1")
    await browser.login(user)
    ids = {"uid": user.id, "pkid": provider_keys["openai"]}
    for page in OPERATOR_PAGES:
        status, text, _ = await browser.get(page.format(**ids))
        assert status == 403 and "for operators" in text, page
    before = await _snapshot(pg)
    for path, form in OPERATOR_FORMS:
        status, _, _ = await browser.post(path.format(**ids), form)
        assert status == 403, path
    assert await _snapshot(pg) == before
    assert "free money" not in str(await pg.fetch("SELECT note FROM ledger"))


async def _listen(redis):
    pubsub = redis.pubsub()
    await pubsub.subscribe(INVALIDATE_CHANNEL)
    await pubsub.get_message(timeout=1.0)
    return pubsub


async def _messages(pubsub, wait: float = 0.7) -> list[str]:
    found, deadline = [], asyncio.get_running_loop().time() + wait
    while asyncio.get_running_loop().time() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message:
            found.append(message["data"].decode())
    await pubsub.aclose()
    return found


async def test_operator_tops_up_and_debits_with_a_reason(pg, redis, browser: Browser):
    admin, user = await make_user(pg, admin=True), await make_user(pg, credit="2")
    await browser.login(admin)
    _, text, _ = await browser.get(f"/admin/users?q={user.email[:12]}")
    assert user.email in text and f"/admin/users/{user.id}" in text
    status, _, _ = await browser.post(
        f"/admin/users/{user.id}/credit", {"amount_usd": "5.25", "reason": "invoice 42"}
    )
    assert status == 303
    status, _, _ = await browser.post(
        f"/admin/users/{user.id}/credit",
        {"amount_usd": "-0.25", "reason": "refund fix", "confirming": "1", "confirm": "yes"},
    )
    assert status == 303
    balance = await pg.fetchval("SELECT balance_usd FROM users WHERE id = $1", user.id)
    assert balance == Decimal("7.00")
    ledger = await pg.fetch(
        "SELECT kind, amount_usd, note FROM ledger WHERE user_id = $1 ORDER BY id", user.id
    )
    assert [r["kind"] for r in ledger] == ["topup", "topup", "adjustment"]
    assert "invoice 42" in ledger[1]["note"] and admin.email in ledger[1]["note"]
    assert "refund fix" in ledger[2]["note"]
    units = await redis.hget(redis_keys.balance(user.id), "units")
    assert int(units) == units_floor(Decimal(7))
    _, text, _ = await browser.get(f"/admin/users/{user.id}")
    assert "$7.00" in text and "invoice 42" in text

    for form in (
        {"amount_usd": "3", "reason": ""},
        {"amount_usd": "0", "reason": "x"},
        {"amount_usd": "abc", "reason": "x"},
        {"amount_usd": "NaN", "reason": "x"},
    ):
        assert (await browser.post(f"/admin/users/{user.id}/credit", form))[0] == 400, form
    assert await pg.fetchval("SELECT balance_usd FROM users WHERE id = $1", user.id) == balance


async def test_operator_changes_rate_and_disables_a_user(
    pg, redis, browser: Browser, other_browser: Browser
):
    admin, user = await make_user(pg, admin=True), await make_user(pg)
    await browser.login(admin)
    await other_browser.login(user)
    pubsub = await _listen(redis)
    form = {"rate_multiplier": "1.2", "disabled": "on"}
    status, text, _ = await browser.post(f"/admin/users/{user.id}/settings", form)
    assert status == 200 and 'id="confirm-form"' in text  # disabling asks first
    assert not await pg.fetchval("SELECT disabled FROM users WHERE id = $1", user.id)
    status, _, _ = await browser.post(
        f"/admin/users/{user.id}/settings", {**form, "confirm": "yes", "reason": "abuse"}
    )
    assert status == 303
    assert f"user:{user.id}" in await _messages(pubsub)
    row = await pg.fetchrow("SELECT rate_multiplier, disabled FROM users WHERE id = $1", user.id)
    assert row["rate_multiplier"] == Decimal("1.2") and row["disabled"]
    assert (await other_browser.get("/usage"))[0] == 303  # signed out
    assert await other_browser.login(user) == 401  # and cannot sign in again
    status, _, _ = await browser.post(f"/admin/users/{user.id}/settings", {"rate_multiplier": "1"})
    assert status == 303 and await other_browser.login(user) == 303
    status, text, _ = await browser.post(
        f"/admin/users/{admin.id}/settings", {"rate_multiplier": "1", "disabled": "on"}
    )
    assert status == 400 and "cannot disable yourself" in text


async def test_operator_sets_a_password_and_creates_users(pg, browser: Browser, other_browser):
    admin, user = await make_user(pg, admin=True), await make_user(pg)
    await browser.login(admin)
    new = "brand-new-password"
    status, _, _ = await browser.post(
        f"/admin/users/{user.id}/password", {"password": new, "confirm": new}
    )
    assert status == 303
    assert await other_browser.login(user) == 401
    assert await other_browser.login(type(user)(user.id, user.email, new)) == 303
    assert (await browser.post(f"/admin/users/{user.id}/password",
                               {"password": new, "confirm": "other"}))[0] == 400  # fmt: skip

    email = f"created-{user.id}@example.com"
    status, _, resp = await browser.post("/admin/users", {"email": email})
    assert status == 303 and resp.headers["Location"].startswith("/admin/users/")
    created = await pg.fetchrow("SELECT is_admin, password_hash FROM users WHERE email = $1", email)
    assert created and not created["is_admin"] and created["password_hash"] is None

    # as `meterway user create EMAIL --admin --rate-multiplier 1.25 --password P`
    email = f"full-{user.id}@example.com"
    status, _, _ = await browser.post("/admin/users", {"email": email, "is_admin": "on",
                                      "rate_multiplier": "1.25", "password": new})  # fmt: skip
    assert status == 303
    created = await pg.fetchrow("SELECT id, is_admin, rate_multiplier FROM users"
                                " WHERE email = $1", email)  # fmt: skip
    assert created["is_admin"] and created["rate_multiplier"] == Decimal("1.25")
    assert await other_browser.login(type(user)(created["id"], email, new)) == 303
    for bad in ({"rate_multiplier": "-1"}, {"password": "short"}):
        email = f"bad-{secrets.token_hex(3)}@example.com"
        status, _, _ = await browser.post("/admin/users", {"email": email, **bad})
        assert status == 303 and not await pg.fetchval(
            "SELECT 1 FROM users WHERE email = $1", email)  # fmt: skip


async def test_operator_pauses_resumes_and_sets_thresholds(pg, redis, browser: Browser):
    admin = await make_user(pg, admin=True)
    await browser.login(admin)
    try:
        pubsub = await _listen(redis)
        assert (await browser.post("/admin/providers/anthropic/pause", CONFIRM))[0] == 303
        assert "providers" in await _messages(pubsub)
        assert await pg.fetchval("SELECT paused FROM providers WHERE name = 'anthropic'")
        _, text, _ = await browser.get("/admin/providers")
        assert "Reactivate" in text and "paused by operator" in text
        assert (await browser.post("/admin/providers/anthropic/resume"))[0] == 303
        assert not await pg.fetchval("SELECT paused FROM providers WHERE name = 'anthropic'")
        from shared import daily

        key = daily.counter_key("provider", "anthropic")
        assert await redis.hexists(key, "resumed_at_spend")
    finally:
        await providers.set_paused(pg, "anthropic", False)
    status, _, _ = await browser.post(
        "/admin/providers/anthropic/thresholds", {"warn_usd": "50", "stop_usd": "80.5"}
    )
    assert status == 303
    row = await pg.fetchrow("SELECT warn_usd, stop_usd FROM providers WHERE name = 'anthropic'")
    assert row["warn_usd"] == Decimal(50) and row["stop_usd"] == Decimal("80.5")
    _, text, _ = await browser.get("/admin/providers")
    assert 'value="80.5"' in text and "Spend today" in text
    status, _, _ = await browser.post(  # a blank field clears its threshold
        "/admin/providers/anthropic/thresholds", {"warn_usd": "", "stop_usd": "80.5"}
    )
    row = await pg.fetchrow("SELECT warn_usd, stop_usd FROM providers WHERE name = 'anthropic'")
    assert status == 303 and row["warn_usd"] is None and row["stop_usd"] == Decimal("80.5")
    await browser.post("/admin/providers/anthropic/thresholds", {"warn_usd": "x", "stop_usd": ""})
    _, text, _ = await browser.get("/admin/providers")  # a refusal in the error style
    assert '<p class="error" role="alert">' in text and 'class="flash"' not in text
    assert (await pg.fetchrow("SELECT stop_usd FROM providers WHERE name = 'anthropic'"))[
        "stop_usd"] == Decimal("80.5")  # fmt: skip
    await browser.post("/admin/providers/anthropic/thresholds", {"warn_usd": "", "stop_usd": ""})
    assert (await browser.post("/admin/providers/nope/pause"))[0] == 404


async def test_provider_keys_are_added_encrypted_and_never_shown(pg, redis, browser: Browser):
    admin = await make_user(pg, admin=True)
    await browser.login(admin)
    secret = "sk-dashboard-test-secret-0042"
    pubsub = await _listen(redis)
    status, text, _ = await browser.post(
        "/admin/provider-keys", {"provider": "openai", "name": "dash", "secret": secret}
    )
    assert status == 303 and secret not in text
    assert "providers" in await _messages(pubsub)
    row = await pg.fetchrow("SELECT * FROM provider_keys WHERE name = 'dash' ORDER BY id DESC")
    assert SecretBox(SECRET_KEY).decrypt(row["secret_enc"]) == secret
    assert secret.encode() not in bytes(row["secret_enc"])
    _, text, _ = await browser.get("/admin/provider-keys")
    assert secret not in text and row["prefix"] in text and "Added openai key" in text
    try:
        for action, status_after in (("disable", "disabled"), ("enable", "active")):
            path = f"/admin/provider-keys/{row['id']}/{action}"
            assert (await browser.post(path, CONFIRM))[0] == 303
            current = await pg.fetchval("SELECT status FROM provider_keys WHERE id = $1", row["id"])
            assert current == status_after
    finally:
        assert (await browser.post(f"/admin/provider-keys/{row['id']}/remove", CONFIRM))[0] == 303
    assert await pg.fetchval("SELECT count(*) FROM provider_keys WHERE id = $1", row["id"]) == 0
    assert (await browser.post(f"/admin/provider-keys/{row['id']}/remove"))[0] == 404


@pytest.mark.parametrize("page", ["/admin/alerts", "/admin/catalog", "/admin/system"])
async def test_operator_read_only_pages(pg, redis, settings, browser: Browser, page):
    admin = await make_user(pg, admin=True)
    await browser.login(admin)
    if page == "/admin/alerts":
        await pg.execute(
            "INSERT INTO alerts (rule, subject, day, message) VALUES"
            " ('user_low_balance', 'user:dash-test', current_date, 'balance below 1 USD')"
        )
    if page == "/admin/system":
        await add_usage(pg, admin.id, estimated=True)
    status, text, _ = await browser.get(page)
    assert status == 200
    if page == "/admin/alerts":
        assert "user_low_balance" in text and "balance below 1 USD" in text
        key_id = await pg.fetchval(
            "INSERT INTO provider_keys (provider, name, prefix, secret_enc, status) VALUES"
            " ('openai', 'alerted', 'sk-alert', '\\x00', 'disabled') RETURNING id"
        )
        await pg.execute(
            "INSERT INTO alerts (rule, subject, day, message) VALUES ('provider_key_disabled',"
            " $1, current_date, 'key refused')", f"provider_key:{key_id}",
        )  # fmt: skip
        _, text, _ = await browser.get(page)
        row = text.split('data-rule="provider_key_disabled"')[1].split("</tr>")[0]
        assert "openai key alerted <code>sk-alert…</code>" in row  # not provider_key:N
        assert ">Provider key disabled</td>" in row
        await pg.execute("DELETE FROM alerts WHERE subject = $1", f"provider_key:{key_id}")
        await pg.execute("DELETE FROM provider_keys WHERE id = $1", key_id)
    elif page == "/admin/catalog":
        assert "gpt-4o" in text and "claude-sonnet-4-5" in text
    else:
        depth, _ = await queue_stats(State(settings, pg, redis, *[None] * 5))  # type: ignore[arg-type]
        estimated = await pg.fetchval(
            "SELECT count(*) FROM usage_records WHERE estimated AND created_at >= $1",
            start_of_utc_day(),
        )
        assert "Queue depth" in text and f"<dd>{depth}</dd>" in text
        assert f"Estimated usage records today</dt><dd>{estimated}</dd>" in text


async def test_queue_stats_reads_the_usage_stream():
    from types import SimpleNamespace

    import fakeredis

    fake = fakeredis.FakeAsyncRedis()
    st = SimpleNamespace(redis=fake)
    assert await queue_stats(st) == (0, None)  # type: ignore[arg-type]
    await fake.xadd(redis_keys.USAGE_STREAM, {"e": "{}"}, id="1690000000000-0")
    await fake.xadd(redis_keys.USAGE_STREAM, {"e": "{}"}, id="1700000000000-0")
    depth, oldest = await queue_stats(st)  # type: ignore[arg-type]
    assert depth == 2
    assert oldest is not None and int(oldest.timestamp() * 1000) == 1_690_000_000_000
    await fake.aclose()


async def test_system_page_health_reconcile_and_paused_banner(pg, redis, browser, other_browser):
    admin, user = await make_user(pg, admin=True), await make_user(pg)
    await browser.login(admin)
    await other_browser.login(user)
    status, text, _ = await browser.get("/admin/system")
    assert status == 200
    assert "Postgres" in text and "Redis" in text and "Dead letters" in text
    assert "Workers" in text and "Settlement lag" in text
    status, _, resp = await browser.post("/admin/reconcile")
    assert status == 303 and resp.headers["Location"] == "/admin/system"
    _, text, _ = await browser.get("/admin/system")
    assert 'id="reconcile-result"' in text and "Reconcile:" in text
    assert await pg.fetchval("SELECT count(*) FROM audit_log WHERE action = 'reconcile.run'"
                             " AND actor = $1", admin.email) == 1  # fmt: skip
    assert "paused-banner" not in (await other_browser.get("/usage"))[1]
    try:
        await providers.set_paused(pg, "anthropic", True, "test")
        _, text, _ = await other_browser.get("/usage")  # no requests yet: every paused one
        assert 'id="paused-banner"' in text and "anthropic is paused" in text
        _, text, _ = await browser.get("/admin/users")
        assert 'id="paused-banner"' in text
        await add_usage(pg, user.id)  # an openai request: anthropic is not one the user uses
        assert "paused-banner" not in (await other_browser.get("/usage"))[1]
        assert 'id="paused-banner"' in (await browser.get("/admin/users"))[1]  # operators: all
        await pg.execute("UPDATE usage_records SET provider = 'anthropic' WHERE request_id = $1",
                         await add_usage(pg, user.id, model="claude-sonnet-4-5"))  # fmt: skip
        assert 'id="paused-banner"' in (await other_browser.get("/usage"))[1]
    finally:
        await providers.set_paused(pg, "anthropic", False)
