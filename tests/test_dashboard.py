"""Dashboard over HTTP: sign-in, sessions, CSRF, throttling, and a user's own pages."""

# ruff: noqa: F811  (the fixtures imported from test_dashboard_helpers are parameters here)

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import aiohttp
from redis.asyncio import Redis

from shared.balance_view import BalanceView
from shared.config import REPO_ROOT
from shared.keys import hash_proxy_key
from shared.redis_keys import INVALIDATE_CHANNEL
from tests.test_dashboard_helpers import (  # noqa: F401  (fixtures)
    Browser,
    add_usage,
    browser,
    dashboard_url,
    make_user,
    other_browser,
)


async def test_sign_in_sets_a_new_secure_session_and_sign_out_ends_it(pg, browser: Browser):
    user = await make_user(pg)
    status, text, resp = await browser.get("/login")
    assert status == 200 and 'name="csrf"' in text
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    before = browser.session_id
    assert before

    assert await browser.login(user) == 303
    after = browser.session_id
    assert after and after != before  # session fixation: a new id at sign-in
    status, text, _ = await browser.get("/usage")
    assert status == 200 and user.email in text

    # the pre-login id is worthless now
    async with aiohttp.ClientSession(cookies={"mw_session": before}) as fixated:
        async with fixated.get(browser.base + "/usage", allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/login"

    status, _, resp = await browser.post("/logout")
    assert status == 303 and resp.headers["Location"] == "/login"
    async with aiohttp.ClientSession(cookies={"mw_session": after}) as stale:
        async with stale.get(browser.base + "/keys", allow_redirects=False) as resp:
            assert resp.status == 303
    status, _, _ = await browser.get("/usage")
    assert status == 303


async def test_cookie_is_secure_behind_https(browser: Browser):
    _, _, resp = await browser.get("/login", headers={"X-Forwarded-Proto": "https"})
    assert "Secure" in resp.headers["Set-Cookie"]


async def test_wrong_password_and_unknown_email_are_refused(pg, browser: Browser):
    user = await make_user(pg)
    assert await browser.login(user, "not-the-password") == 401
    status, text, _ = await browser.get("/usage")
    assert status == 303
    ghost = type(user)(0, "nobody@example.com", "whatever-password")
    assert await browser.login(ghost) == 401
    _, text, _ = await browser.get("/login")
    assert user.email not in text


async def test_repeated_failures_are_throttled(pg, browser: Browser):
    user = await make_user(pg)
    for _ in range(5):
        assert await browser.login(user, "wrong-password") == 401
    # even the right password is refused for a while now
    status, text, _ = await browser.post("/login", {"email": user.email, "password": user.password})
    assert status == 429 and "Too many failed attempts" in text
    assert browser.session_id and (await browser.get("/usage"))[0] == 303


async def test_every_form_needs_the_session_csrf_token(pg, browser: Browser, dashboard_url):
    user = await make_user(pg)
    # sign-in form: no token, a wrong token, no session at all
    await browser.get("/login")
    form = {"email": user.email, "password": user.password}
    assert (await browser.post("/login", form, csrf=""))[0] == 403
    assert (await browser.post("/login", form, csrf="forged"))[0] == 403
    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.post(dashboard_url + "/login", data=form) as resp:
            assert resp.status == 403

    assert await browser.login(user) == 303
    for path, data in [
        ("/keys", {"name": "x"}),
        ("/settings", {"daily_alert_usd": "5", "low_balance_usd": "1"}),
        ("/logout", {}),
    ]:
        assert (await browser.post(path, data, csrf=""))[0] == 403, path
        assert (await browser.post(path, data, csrf="wrong-token"))[0] == 403, path
    assert await pg.fetchval("SELECT count(*) FROM api_keys WHERE user_id = $1", user.id) == 0
    assert (await browser.get("/usage"))[0] == 200  # still signed in


async def test_pages_need_sign_in(browser: Browser):
    for path in ["/", "/keys", "/usage", "/usage.csv", "/settings", "/admin/users"]:
        status, _, resp = await browser.get(path)
        assert status == 303 and resp.headers["Location"] == "/login", path


async def _listen(redis: Redis):
    pubsub = redis.pubsub()
    await pubsub.subscribe(INVALIDATE_CHANNEL)
    await pubsub.get_message(timeout=1.0)  # the subscribe confirmation
    return pubsub


async def _messages(pubsub, wait: float = 1.0) -> list[str]:
    found, deadline = [], asyncio.get_running_loop().time() + wait
    while asyncio.get_running_loop().time() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message:
            found.append(message["data"].decode())
    return found


async def test_key_is_shown_once_and_only_its_hash_is_stored(pg, redis, browser: Browser):
    user = await make_user(pg)
    await browser.login(user)
    status, text, _ = await browser.post("/keys", {"name": "laptop"})
    assert status == 200 and "shown only this once" in text
    secret = text.split('<code id="new-key">', 1)[1].split("</code>", 1)[0]
    assert secret.startswith("mw-") and len(secret) > 30
    row = await pg.fetchrow("SELECT * FROM api_keys WHERE user_id = $1", user.id)
    assert bytes(row["key_hash"]) == hash_proxy_key(secret) and row["name"] == "laptop"
    assert secret not in str(dict(row)) and secret.startswith(row["prefix"])
    _, text, _ = await browser.get("/keys")
    assert secret not in text and "laptop" in text and row["prefix"] in text

    assert (await browser.post("/keys", {"name": ""}))[0] == 400
    pubsub = await _listen(redis)
    status, text, _ = await browser.post(f"/keys/{row['id']}/revoke")
    assert status == 200 and "I understand" in text  # a confirmation first: nothing yet
    assert not await pg.fetchval("SELECT revoked_at FROM api_keys WHERE id = $1", row["id"])
    status, _, _ = await browser.post(
        f"/keys/{row['id']}/revoke", {"confirming": "1", "confirm": "yes"}
    )
    assert status == 303
    assert f"key:{hash_proxy_key(secret).hex()}" in await _messages(pubsub)
    await pubsub.aclose()
    assert await pg.fetchval("SELECT revoked_at FROM api_keys WHERE id = $1", row["id"])
    _, text, _ = await browser.get("/keys")
    assert "revoked" in text


async def test_a_user_never_sees_or_changes_another_users_keys_or_usage(
    pg, browser: Browser, other_browser: Browser
):
    alice, bob = await make_user(pg), await make_user(pg)
    await browser.login(alice)
    await other_browser.login(bob)
    _, text, _ = await other_browser.post("/keys", {"name": "bobs-secret-key"})
    bob_key = await pg.fetchrow("SELECT id, prefix FROM api_keys WHERE user_id = $1", bob.id)
    bob_request = await add_usage(pg, bob.id, model="claude-sonnet-4-5")
    alice_request = await add_usage(pg, alice.id)

    _, keys_page, _ = await browser.get("/keys")
    assert "bobs-secret-key" not in keys_page and bob_key["prefix"] not in keys_page
    status, _, _ = await browser.post(f"/keys/{bob_key['id']}/revoke")
    assert status == 404
    assert await pg.fetchval("SELECT revoked_at FROM api_keys WHERE id = $1", bob_key["id"]) is None
    assert (await browser.post("/keys/999999999/revoke"))[0] == 404
    assert (await browser.post("/keys/nope/revoke"))[0] == 404

    for path in ["/usage", "/usage.csv"]:
        _, text, _ = await browser.get(path)
        assert bob_request not in text, path  # nor bob's model in alice's totals:
        assert 'data-model="claude-sonnet-4-5"' not in text and "sonnet-4-5," not in text, path
        assert alice_request in text, path
    _, text, _ = await browser.get("/usage?model=claude-sonnet-4-5")
    assert bob_request not in text and "0 requests" in text
    _, text, _ = await browser.get("/usage.csv?model=claude-sonnet-4-5")
    assert bob_request not in text and len(text.strip().splitlines()) == 1
    _, text, _ = await other_browser.get("/usage")
    assert bob_request in text and alice_request not in text


async def test_usage_filters_paging_chart_and_csv(pg, browser: Browser):
    user = await make_user(pg)
    now = datetime.now(UTC)
    yesterday = now - timedelta(days=1)
    for i in range(55):
        await add_usage(pg, user.id, cost="0.001", created_at=now - timedelta(seconds=i))
    old = await add_usage(pg, user.id, model="gpt-4.1", cost="0.5", created_at=yesterday)
    est = await add_usage(pg, user.id, model="gpt-4.1", cost="0.0000425", estimated=True)
    await browser.login(user)

    _, page1, _ = await browser.get("/usage")
    assert page1.count("data-request-id=") == 50 and "57 requests" in page1
    assert "page 1 of 2" in page1 and est in page1 and "estimated" in page1
    assert "0.0000425" in page1
    assert page1.count('class="bar"') == 30 and "<svg" in page1
    _, page2, _ = await browser.get("/usage?page=2")
    assert page2.count("data-request-id=") == 7 and old in page2

    _, by_day, _ = await browser.get(f"/usage?day={yesterday.date().isoformat()}")
    assert by_day.count("data-request-id=") == 1 and old in by_day
    _, by_model, _ = await browser.get("/usage?model=gpt-4.1")
    assert by_model.count("data-request-id=") == 2
    assert (await browser.get("/usage?day=garbage"))[0] == 400

    status, text, resp = await browser.get("/usage.csv?model=gpt-4.1")
    assert status == 200 and resp.headers["Content-Type"].startswith("text/csv")
    assert "attachment" in resp.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["request_id"] for r in rows] == [est, old]
    assert rows[0]["cost_usd"] == "0.0000425" and rows[0]["estimated"] == "true"
    assert rows[1]["cost_usd"] == "0.5" and rows[1]["model"] == "gpt-4.1"
    assert rows[1]["input_tokens"] == "12" and rows[1]["output_tokens"] == "30"
    _, all_csv, _ = await browser.get("/usage.csv")
    assert len(list(csv.DictReader(io.StringIO(all_csv)))) == 57


async def test_balance_held_and_alert_settings(pg, redis, browser: Browser):
    user = await make_user(pg, credit="12.5")
    balance, version = await pg.fetchrow(
        "SELECT balance_usd, balance_version FROM users WHERE id = $1", user.id
    )
    view = BalanceView(redis)
    await view.publish(user.id, balance, version)
    assert (await view.hold(user.id, "req-held", 250_000_000, 60_000)).placed
    try:
        await browser.login(user)
        _, text, _ = await browser.get("/usage")
        assert "$12.50" in text and "$0.25" in text and "$12.25" in text
    finally:
        await view.release(user.id, "req-held")

    pubsub = await _listen(redis)
    status, _, _ = await browser.post(
        "/settings", {"daily_alert_usd": "7.5", "low_balance_usd": ""}
    )
    assert status == 303
    assert f"user:{user.id}" in await _messages(pubsub)
    await pubsub.aclose()
    row = await pg.fetchrow("SELECT daily_alert_usd, low_balance_usd FROM users WHERE id = $1",
                            user.id)  # fmt: skip
    assert row["daily_alert_usd"] == Decimal("7.5") and row["low_balance_usd"] is None
    _, text, _ = await browser.get("/settings")
    assert 'value="7.5"' in text and "Alert settings saved" in text
    status, text, _ = await browser.post("/settings", {"daily_alert_usd": "-1"})
    assert status == 400 and "must not be negative" in text


async def test_invite_link_sets_a_password_once(pg, browser: Browser, other_browser: Browser):
    admin = await make_user(pg, admin=True)
    await browser.login(admin)
    invitee = await pg.fetchval(
        "INSERT INTO users (email) VALUES ('invitee-' || md5(random()::text) || '@example.com')"
        " RETURNING id"
    )
    _, text, _ = await browser.post(f"/admin/users/{invitee}/invite")
    link = text.split('<code id="invite-link">', 1)[1].split("</code>", 1)[0]
    path = link.split(browser.base, 1)[1]
    assert path.startswith("/invite/")

    email = await pg.fetchval("SELECT email FROM users WHERE id = $1", invitee)
    status, text, _ = await other_browser.get(path)
    assert status == 200 and f'<strong id="invite-account">{email}</strong>' in text
    status, text, _ = await other_browser.post(path, {"password": "short", "confirm": "short"})
    assert status == 400 and "at least 10" in text and email in text
    new = "a-long-enough-password"
    status, _, _ = await other_browser.post(path, {"password": new, "confirm": new})
    assert status == 303
    _, text, _ = await other_browser.get("/login")  # the email is filled in
    assert f'name="email" value="{email}"' in text and "Password set" in text
    assert (await other_browser.get(path))[0] == 404  # used up
    assert await other_browser.login(type(admin)(invitee, email, new)) == 303
    assert (await other_browser.get("/usage"))[0] == 200


async def test_a_forged_session_cookie_is_refused(dashboard_url):
    import aiohttp

    # a random token that was never issued, with or without a made-up signature
    for forged in ("A" * 43, "A" * 43 + "." + "0" * 32):
        async with aiohttp.ClientSession(cookies={"mw_session": forged}) as http:
            async with http.get(f"{dashboard_url}/keys", allow_redirects=False) as resp:
                assert resp.status in (302, 303)
                assert "/login" in resp.headers["Location"]


async def test_reloading_the_key_creation_makes_no_second_key(pg, browser: Browser):
    user = await make_user(pg)
    await browser.login(user)
    _, page, _ = await browser.get("/keys")
    once = page.split('name="once" value="', 1)[1].split('"', 1)[0]
    status, text, _ = await browser.post("/keys", {"name": "laptop", "once": once})
    assert status == 200 and '<code id="new-key">' in text
    status, text, _ = await browser.post("/keys", {"name": "laptop", "once": once})  # a reload
    assert "already created" in text and '<code id="new-key">' not in text
    assert await pg.fetchval("SELECT count(*) FROM api_keys WHERE user_id = $1", user.id) == 1


async def test_navigation_is_what_the_docs_say(pg, browser: Browser):
    """The developer docs send users to Settings → API Keys; the dashboard has it."""
    docs = "".join(p.read_text() for p in (REPO_ROOT / "proxy" / "templates").rglob("*.html"))
    assert "Settings → API Keys" in docs
    user = await make_user(pg)
    await browser.login(user)
    _, text, _ = await browser.get("/usage")
    assert '<a href="/keys" id="nav-settings"' in text and ">Settings</a>" in text
    docs_link = text.split('id="nav-docs"')[0].rsplit("<a href=", 1)[1]
    assert docs_link.startswith('"http') and docs_link.rstrip('" ').endswith("/docs")
    _, text, _ = await browser.get("/keys")
    subnav = text.split('class="subnav"')[1].split("</nav>")[0]
    assert ">API Keys</a>" in subnav and ">Alerts</a>" in subnav
    assert "Create new key</button>" in text and "Create new key" in docs  # the docs' words
