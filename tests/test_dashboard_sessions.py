"""Dashboard sessions under attack and over time, over real HTTP and real Redis:
throttling under parallel sign-ins, signing out everywhere (asked for, password
changes, disabling), and the absolute session lifetime."""

# ruff: noqa: F811  (the fixtures imported from test_dashboard_helpers are parameters here)

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator
from http.cookies import SimpleCookie

import aiohttp
import pytest
from aiohttp import web

from dashboard import auth_views
from dashboard.app import create_app
from dashboard.sessions import THROTTLE_LIMIT, SessionStore
from shared import redis_keys
from shared.config import Settings
from tests.test_dashboard_helpers import (  # noqa: F401  (fixtures)
    CSRF_RE,
    Browser,
    browser,
    dashboard_url,
    make_user,
    other_browser,
)
from tests.util import free_port

BURST = 40


@contextlib.asynccontextmanager
async def _browser(base: str) -> AsyncIterator[Browser]:
    b = Browser(base)
    try:
        yield b
    finally:
        await b.close()


def _token(browser: Browser) -> str:
    value = browser.session_id
    assert value
    return value.rpartition(".")[0]


def _session_key(browser: Browser) -> str:
    return redis_keys.dashboard_session(hashlib.sha256(_token(browser).encode()).hexdigest())


@pytest.fixture
def verifies(monkeypatch) -> list[int]:
    """Counts the password verifications the running dashboard does."""
    calls: list[int] = []
    real = auth_views._verify

    async def counting(password_hash: str, password: str) -> bool:
        calls.append(1)
        return await real(password_hash, password)

    monkeypatch.setattr(auth_views, "_verify", counting)
    return calls


async def _burst(dashboard_url: str, email: str, passwords: list[str]) -> list[int]:
    """All the sign-in attempts at once, from one anonymous session (one address)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(dashboard_url + "/login") as resp:
            csrf = CSRF_RE.search(await resp.text()).group(1)  # type: ignore[union-attr]

        async def one(password: str) -> int:
            form = {"csrf": csrf, "email": email, "password": password}
            async with http.post(dashboard_url + "/login", data=form,
                                 allow_redirects=False) as resp:  # fmt: skip
                await resp.read()
                return resp.status

        return list(await asyncio.gather(*(one(p) for p in passwords)))


async def test_a_parallel_burst_verifies_at_most_the_limit(pg, dashboard_url, verifies):
    user = await make_user(pg)
    # the right password in the middle of 39 wrong ones, all at once
    passwords = [f"wrong-{i}" for i in range(BURST - 1)]
    passwords.insert(BURST // 2, user.password)
    statuses = await _burst(dashboard_url, user.email, passwords)
    assert len(verifies) <= THROTTLE_LIMIT
    assert statuses.count(429) >= BURST - THROTTLE_LIMIT
    assert set(statuses) <= {401, 429, 303}
    assert statuses.count(401) + statuses.count(303) == len(verifies)
    # and now the right password alone is refused too, unverified
    before = len(verifies)
    assert await _burst(dashboard_url, user.email, [user.password]) == [429]
    assert len(verifies) == before


async def test_after_the_limit_no_burst_of_right_passwords_gets_in(pg, dashboard_url, verifies):
    user = await make_user(pg)
    wrong = await _burst(dashboard_url, user.email, ["wrong"] * THROTTLE_LIMIT)
    assert wrong == [401] * THROTTLE_LIMIT and len(verifies) == THROTTLE_LIMIT
    statuses = await _burst(dashboard_url, user.email, [user.password] * BURST)
    assert statuses == [429] * BURST and len(verifies) == THROTTLE_LIMIT


async def test_the_window_passes_and_a_success_takes_back_only_its_own_count(
    pg, redis, browser: Browser
):
    user = await make_user(pg)
    for _ in range(THROTTLE_LIMIT - 1):
        assert await browser.login(user, "wrong-password") == 401
    assert await browser.login(user) == 303  # the 5th attempt, right: let in
    await browser.post("/logout")
    assert await browser.login(user, "wrong-password") == 401  # the 5th wrong one
    assert await browser.login(user) == 429  # the limit holds across a success
    # the window (from the first attempt) has a TTL, and when it is over, sign-in works
    keys = [k async for k in redis.scan_iter(match=redis_keys.dashboard_failures("*"))]
    ttls = [await redis.pttl(k) for k in keys]
    assert ttls and all(t > 0 for t in ttls)
    for k in keys:
        await redis.delete(k)  # the window passing
    assert await browser.login(user) == 303


async def test_sign_out_everywhere_ends_every_session(
    pg, redis, browser: Browser, other_browser: Browser
):
    user, bystander = await make_user(pg), await make_user(pg)
    await browser.login(user)
    await other_browser.login(user)
    async with _browser(browser.base) as third:
        await third.login(bystander)
        _, text, _ = await browser.get("/settings")
        assert "Sign out everywhere" in text and 'name="everywhere"' in text
        # the per-user set expired first (the old bug): the sessions must end anyway
        await redis.delete(redis_keys.dashboard_user_sessions(user.id))
        status, _, resp = await browser.post("/logout", {"everywhere": "1"})
        assert status == 303 and resp.headers["Location"] == "/login"
        assert (await other_browser.get("/usage"))[0] == 303
        assert (await browser.get("/usage"))[0] == 303
        _, text, _ = await browser.get("/login")
        assert "Signed out everywhere" in text
        assert (await third.get("/usage"))[0] == 200  # another user's session is untouched
    assert await browser.login(user) == 303  # signing in again works


async def test_sign_out_everywhere_needs_the_csrf_token(pg, browser: Browser, other_browser):
    user = await make_user(pg)
    await browser.login(user)
    await other_browser.login(user)
    assert (await browser.post("/logout", {"everywhere": "1"}, csrf="forged"))[0] == 403
    assert (await other_browser.get("/usage"))[0] == 200


async def test_a_password_change_by_invite_ends_every_session(pg, browser, other_browser):
    admin, user = await make_user(pg, admin=True), await make_user(pg)
    await other_browser.login(user)
    await browser.login(admin)
    _, text, _ = await browser.post(f"/admin/users/{user.id}/invite")
    path = text.split('<code id="invite-link">', 1)[1].split("</code>", 1)[0]
    path = path.split(browser.base, 1)[1]
    async with _browser(browser.base) as invitee:
        await invitee.get(path)
        new = "an-invited-new-password"
        assert (await invitee.post(path, {"password": new, "confirm": new}))[0] == 303
    assert (await other_browser.get("/usage"))[0] == 303
    assert (await browser.get("/admin/users"))[0] == 200  # the operator is someone else


async def test_an_operator_password_change_ends_every_session_of_the_user(
    pg, browser: Browser, other_browser: Browser
):
    admin, user = await make_user(pg, admin=True), await make_user(pg)
    await browser.login(admin)
    await other_browser.login(user)
    new = "set-by-the-operator"
    assert (await browser.post(f"/admin/users/{user.id}/password",
                               {"password": new, "confirm": new}))[0] == 303  # fmt: skip
    assert (await other_browser.get("/usage"))[0] == 303

    # an operator changing their own password: their other sessions end, they go on
    async with _browser(browser.base) as elsewhere:
        await elsewhere.login(admin)
        before = browser.session_id
        assert (await browser.post(f"/admin/users/{admin.id}/password",
                                   {"password": new, "confirm": new}))[0] == 303  # fmt: skip
        assert browser.session_id != before
        assert (await browser.get("/admin/users"))[0] == 200
        assert (await elsewhere.get("/usage"))[0] == 303


async def test_disabling_ends_every_session_at_once(
    pg, redis, browser: Browser, other_browser: Browser
):
    admin, user = await make_user(pg, admin=True), await make_user(pg)
    await browser.login(admin)
    await other_browser.login(user)
    key = _session_key(other_browser)
    assert await redis.exists(key)
    await redis.delete(redis_keys.dashboard_user_sessions(user.id))  # even if the set is gone
    status, _, _ = await browser.post(
        f"/admin/users/{user.id}/settings",
        {"rate_multiplier": "1", "disabled": "on", "confirm": "yes", "reason": "test"},
    )
    assert status == 303
    generation = await redis.get(redis_keys.dashboard_user_generation(user.id))
    assert generation and int(generation) >= 1
    assert (await other_browser.get("/usage"))[0] == 303
    assert not await redis.exists(key)


async def test_an_operator_ends_a_users_sessions(pg, redis, browser: Browser, other_browser):
    admin, user = await make_user(pg, admin=True), await make_user(pg)
    await browser.login(admin)
    await other_browser.login(user)
    key = _session_key(other_browser)
    _, text, _ = await browser.get(f"/admin/users/{user.id}")
    assert 'name="end_sessions"' in text
    status, _, _ = await browser.post(f"/admin/users/{user.id}/settings", {"end_sessions": "1"})
    assert status == 303
    assert not await redis.exists(key)  # gone at once, not at the next request
    assert (await other_browser.get("/usage"))[0] == 303
    row = await pg.fetchrow("SELECT disabled, rate_multiplier FROM users WHERE id = $1", user.id)
    assert not row["disabled"]
    assert (await browser.get(f"/admin/users/{user.id}"))[0] == 200
    assert await other_browser.login(user) == 303  # the account itself is fine


async def test_a_session_ends_at_its_maximum_age_whatever_its_use(pg, redis, browser: Browser):
    user = await make_user(pg)
    await browser.login(user)
    key = _session_key(browser)
    born = float(await redis.hget(key, "born"))
    assert abs(born - time.time()) < 60
    # the key itself expires no later than the lifetime after sign-in, however it is used
    for _ in range(3):
        assert (await browser.get("/usage"))[0] == 200
    assert 0 < await redis.pttl(key) <= 12 * 3600 * 1000
    user_set_ttl = await redis.pttl(redis_keys.dashboard_user_sessions(user.id))
    assert user_set_ttl >= await redis.pttl(key) - 1000  # the set does not expire first
    # signed in 12 hours and a minute ago: over, even though the key is still there
    await redis.hset(key, "born", repr(time.time() - 12 * 3600 - 60))
    await redis.pexpire(key, 3600 * 1000)
    assert (await browser.get("/usage"))[0] == 303
    assert not await redis.exists(key)


async def test_a_session_without_a_sign_in_time_is_over(pg, redis, browser: Browser):
    user = await make_user(pg)
    await browser.login(user)
    key = _session_key(browser)
    await redis.hdel(key, "born")  # as sessions made before sign-in times were kept
    assert (await browser.get("/usage"))[0] == 303


LIFETIME = 3.0  # seconds, for the short dashboard


@pytest.fixture
async def short_dashboard(settings: Settings, pg) -> AsyncIterator[str]:
    """A dashboard whose sessions live LIFETIME seconds (DASHBOARD_SESSION_MAX_HOURS)."""
    short = settings.model_copy(update={"dashboard_session_max_hours": LIFETIME / 3600})
    port = free_port()
    runner = web.AppRunner(create_app(short), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_dashboard_session_max_hours_is_obeyed_and_the_cookie_does_not_outlive_it(
    pg, short_dashboard: str
):
    user = await make_user(pg)
    async with _browser(short_dashboard) as b:
        await b.get("/login")
        status, _, resp = await b.post("/login", {"email": user.email, "password": user.password})
        signed_in = time.monotonic()
        assert status == 303
        cookie = SimpleCookie(resp.headers["Set-Cookie"])["mw_session"]
        assert 1 <= int(cookie["max-age"]) <= LIFETIME
        while time.monotonic() < signed_in + LIFETIME - 1.2:  # in use all the time
            assert (await b.get("/usage"))[0] == 200
            await asyncio.sleep(0.2)
        await asyncio.sleep(signed_in + LIFETIME + 0.3 - time.monotonic())
    # the server refuses it too, even from a client that keeps the cookie longer
    async with aiohttp.ClientSession(cookies={"mw_session": cookie.value}) as keeper:
        async with keeper.get(short_dashboard + "/usage", allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/login"


async def test_a_sign_in_racing_a_sign_out_everywhere_does_not_survive_it(pg, redis):
    """The sign-in reads the generation before it checks the password; a
    sign-out-everywhere in between (a password change) ends the new session."""
    user = await make_user(pg)
    store = SessionStore(redis)
    generation = await store.generation(user.id)
    await store.delete_all_for_user(user.id)  # the password changes meanwhile
    late = await store.create(user.id, generation=generation)
    assert await store.load(late.token) is None
    fresh = await store.create(user.id)
    assert await store.load(fresh.token) is not None


async def test_an_invite_used_while_signed_in_ends_that_session_too(
    pg, redis, browser, other_browser
):
    admin, user = await make_user(pg, admin=True), await make_user(pg)
    await other_browser.login(admin)
    _, text, _ = await other_browser.post(f"/admin/users/{user.id}/invite")
    path = text.split('<code id="invite-link">', 1)[1].split("</code>", 1)[0]
    path = path.split(browser.base, 1)[1]
    await browser.login(user)
    old_key = _session_key(browser)
    await browser.get(path)
    new = "set-while-signed-in"
    status, _, resp = await browser.post(path, {"password": new, "confirm": new})
    assert status == 303 and resp.headers["Location"] == "/login"
    assert not await redis.exists(old_key)
    _, text, _ = await browser.get("/login")
    assert "Password set" in text
    assert (await browser.get("/usage"))[0] == 303
    # no session key is ever left without an expiry
    async for key in redis.scan_iter(match=redis_keys.dashboard_session("*")):
        assert await redis.pttl(key) > 0, key
