"""Dashboard key controls (CONTRACT.md section 6): a user sets, sees and clears
their own keys' budget, models and expiry; an operator does the same (and
rpm/tpm) for any user's keys. Every change publishes the key's invalidation."""

# ruff: noqa: F811  (the fixtures imported from test_dashboard_helpers are parameters here)

from __future__ import annotations

import asyncio
import html
from datetime import UTC, datetime
from decimal import Decimal

import aiohttp
from redis.asyncio import Redis

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


async def _listen(redis: Redis):
    pubsub = redis.pubsub()
    await pubsub.subscribe(INVALIDATE_CHANNEL)
    await pubsub.get_message(timeout=1.0)
    return pubsub


async def _messages(pubsub, wait: float = 1.0) -> list[str]:
    found, deadline = [], asyncio.get_running_loop().time() + wait
    while asyncio.get_running_loop().time() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message:
            found.append(message["data"].decode())
    return found


def _secret(text: str) -> str:
    return text.split('<code id="new-key">', 1)[1].split("</code>", 1)[0]


async def _post_multi(browser: Browser, path: str, pairs: list[tuple[str, str]]):
    """A form with repeated fields (a multi-select), with the session's CSRF token."""
    data = aiohttp.FormData([*pairs, ("csrf", browser.csrf)])
    async with browser.http.post(browser.base + path, data=data, allow_redirects=False) as resp:
        text = await resp.text()
    browser._remember(text)
    return resp.status, text


async def test_user_creates_a_key_with_limits_sees_and_clears_them(pg, redis, browser: Browser):
    user = await make_user(pg)
    await browser.login(user)
    _, page, _ = await browser.get("/keys")
    assert 'name="budget_usd"' in page and '<option value="gpt-4o"' in page

    status, text = await _post_multi(browser, "/keys", [
        ("name", "agent"), ("budget_usd", "2.5"), ("budget_period", "week"),
        ("models", "gpt-4o"), ("models", "gpt-4o-mini"), ("expires_at", "2031-01-02T03:04:05"),
    ])  # fmt: skip
    assert status == 200 and "shown only this once" in text, text
    secret = _secret(text)
    row = await pg.fetchrow("SELECT * FROM api_keys WHERE user_id = $1", user.id)
    assert row["budget_usd"] == Decimal("2.5") and row["budget_period"] == "week"
    assert row["models"] == ["gpt-4o", "gpt-4o-mini"]
    assert row["expires_at"] == datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)  # the form is UTC

    # a plain key too: blank limits are none
    status, text, _ = await browser.post("/keys", {"name": "plain", "budget_usd": "",
                                                   "expires_at": ""})  # fmt: skip
    assert status == 200
    plain = await pg.fetchrow(
        "SELECT * FROM api_keys WHERE user_id = $1 AND name = 'plain'", user.id
    )
    assert plain["budget_usd"] is None and plain["models"] is None and plain["expires_at"] is None

    await add_usage(pg, user.id, cost="0.0375")
    await pg.execute("UPDATE usage_records SET api_key_id = $1 WHERE user_id = $2",
                     row["id"], user.id)  # fmt: skip
    _, page, _ = await browser.get("/keys")
    assert "$2.50</span> / week" in page and "gpt-4o, gpt-4o-mini" in page
    assert "2031-01-02 03:04:05" in page
    assert "$0.0375" in page and "this week" in page  # spend this period
    assert f"/keys/{row['id']}/controls" in page
    assert secret not in page

    pubsub = await _listen(redis)
    try:
        status, _ = await _post_multi(browser, f"/keys/{row['id']}/controls", [
            ("budget_usd", "0.000000000001"), ("budget_period", "day"), ("models", "gpt-4.1"),
            ("expires_at", "2030-06-01T00:00:00+02:00"),
        ])  # fmt: skip
        assert status == 303
        assert f"key:{hash_proxy_key(secret).hex()}" in await _messages(pubsub)
        changed = await pg.fetchrow("SELECT * FROM api_keys WHERE id = $1", row["id"])
        assert changed["budget_usd"] == Decimal("0.000000000001")
        assert changed["budget_period"] == "day" and changed["models"] == ["gpt-4.1"]
        assert changed["expires_at"] == datetime(2030, 5, 31, 22, tzinfo=UTC)

        # blank fields clear every limit
        status, _, _ = await browser.post(f"/keys/{row['id']}/controls", {
            "budget_usd": "", "budget_period": "day", "expires_at": ""})  # fmt: skip
        assert status == 303
        assert f"key:{hash_proxy_key(secret).hex()}" in await _messages(pubsub)
    finally:
        await pubsub.aclose()
    cleared = await pg.fetchrow("SELECT * FROM api_keys WHERE id = $1", row["id"])
    assert (cleared["budget_usd"], cleared["budget_period"], cleared["models"],
            cleared["expires_at"]) == (None,) * 4  # fmt: skip
    _, page, _ = await browser.get("/keys")
    assert "Limits of" in page and "saved" in page  # the flash


async def test_bad_limits_are_form_errors_and_change_nothing(pg, browser: Browser):
    user = await make_user(pg)
    await browser.login(user)
    await browser.post("/keys", {"name": "k", "budget_usd": "3"})
    key = await pg.fetchrow("SELECT * FROM api_keys WHERE user_id = $1", user.id)
    bad = [
        ({"budget_usd": "-1"}, "must not be negative"),
        ({"budget_usd": "1e3"}, "plain decimal"),
        ({"budget_usd": "1", "budget_period": "year"}, "day, week, month or total"),
        ({"models": "gpt-4o,no-such-model"}, "no-such-model"),
        ({"expires_at": "tomorrow"}, "Expiry"),
    ]
    for form, needle in bad:
        status, text, _ = await browser.post(f"/keys/{key['id']}/controls", form)
        assert status == 400 and needle in html.unescape(text), (form, text)
        status, text, _ = await browser.post("/keys", {"name": "x", **form})
        assert status == 400 and needle in html.unescape(text), (form, text)
    assert await pg.fetchrow("SELECT * FROM api_keys WHERE id = $1", key["id"]) == key
    assert await pg.fetchval("SELECT count(*) FROM api_keys WHERE user_id = $1", user.id) == 1
    # without the CSRF token: refused
    status, _, _ = await browser.post(f"/keys/{key['id']}/controls", {"budget_usd": ""}, csrf="")
    assert status == 403
    assert await pg.fetchrow("SELECT * FROM api_keys WHERE id = $1", key["id"]) == key


async def test_a_user_cannot_change_another_users_key(pg, browser: Browser, other_browser):
    alice, bob = await make_user(pg), await make_user(pg)
    await browser.login(alice)
    await other_browser.login(bob)
    await other_browser.post("/keys", {"name": "bobs", "budget_usd": "1"})
    bob_key = await pg.fetchrow("SELECT * FROM api_keys WHERE user_id = $1", bob.id)
    status, _, _ = await browser.post(f"/keys/{bob_key['id']}/controls", {"budget_usd": ""})
    assert status == 404
    assert await pg.fetchrow("SELECT * FROM api_keys WHERE id = $1", bob_key["id"]) == bob_key
    # not an operator: the operator forms are 403
    for path in (f"/admin/users/{bob.id}/keys/{bob_key['id']}/controls",
                 f"/admin/users/{bob.id}/keys"):  # fmt: skip
        status, _, _ = await browser.post(path, {"name": "x", "budget_usd": ""})
        assert status == 403, path
    assert await pg.fetchrow("SELECT * FROM api_keys WHERE id = $1", bob_key["id"]) == bob_key
    assert await pg.fetchval("SELECT count(*) FROM api_keys WHERE user_id = $1", bob.id) == 1


async def test_operator_sets_and_clears_any_users_key_limits(pg, redis, browser: Browser,
                                                             other_browser):  # fmt: skip
    operator, user = await make_user(pg, admin=True), await make_user(pg)
    await browser.login(operator)
    status, text = await _post_multi(browser, f"/admin/users/{user.id}/keys", [
        ("name", "svc"), ("budget_usd", "10"), ("budget_period", "total"), ("models", "gpt-4o"),
        ("rpm", "30"), ("tpm", ""), ("expires_at", ""),
    ])  # fmt: skip
    assert status == 200 and "shown only this once" in text, text
    secret = _secret(text)
    key = await pg.fetchrow("SELECT * FROM api_keys WHERE user_id = $1", user.id)
    assert bytes(key["key_hash"]) == hash_proxy_key(secret)
    assert (key["budget_usd"], key["budget_period"], key["models"], key["rpm_limit"],
            key["tpm_limit"]) == (10, "total", ["gpt-4o"], 30, None)  # fmt: skip
    _, page, _ = await browser.get(f"/admin/users/{user.id}")
    assert "$10.00</span> / total" in page and "in total" in page and "30 / -" in page
    assert secret not in page

    pubsub = await _listen(redis)
    try:
        path = f"/admin/users/{user.id}/keys/{key['id']}/controls"
        status, _, _ = await browser.post(path, {"budget_usd": "4", "budget_period": "month",
                                                 "rpm": "", "tpm": "1000",
                                                 "expires_at": "2029-02-03T04:05"})  # fmt: skip
        assert status == 303
        assert f"key:{hash_proxy_key(secret).hex()}" in await _messages(pubsub)
    finally:
        await pubsub.aclose()
    key = await pg.fetchrow("SELECT * FROM api_keys WHERE id = $1", key["id"])
    assert (key["budget_usd"], key["budget_period"], key["models"], key["rpm_limit"],
            key["tpm_limit"]) == (4, "month", None, None, 1000)  # fmt: skip
    assert key["expires_at"] == datetime(2029, 2, 3, 4, 5, tzinfo=UTC)
    status, text, _ = await browser.post(path, {"rpm": "0"})
    assert status == 400 and "Requests per minute" in text
    # a key of another user under this user's path is a 404
    other = await make_user(pg)
    await other_browser.login(other)
    await other_browser.post("/keys", {"name": "o"})
    other_key = await pg.fetchval("SELECT id FROM api_keys WHERE user_id = $1", other.id)
    status, _, _ = await browser.post(f"/admin/users/{user.id}/keys/{other_key}/controls", {})
    assert status == 404
