"""Hostile input to every dashboard form and query parameter, over real HTTP,
signed in as a user and as an operator: never a 500, and a refused form
changes nothing (balances checked in Postgres to the exact decimal).

A table of known-hostile values plus seeded random strings from hostile
alphabets (reproducible: the seed is fixed)."""

# ruff: noqa: F811, RUF001  (fixtures are parameters here; the look-alike digits are the point)

from __future__ import annotations

import asyncio
import random
from decimal import Decimal
from urllib.parse import quote

import pytest

from shared import money
from tests.test_dashboard_helpers import (  # noqa: F401  (fixtures)
    Browser,
    add_usage,
    browser,
    dashboard_url,
    make_user,
    other_browser,
)

HOSTILE_AMOUNTS = [
    "1e999", "1e-100000", "-1e-100000", "1E5", "nan", "NaN", "-nan", "sNaN", "inf",
    "Infinity", "-Infinity", "-0", "0", "0.0", "-0.000", "9" * 5000, "1" + "0" * 400,
    "0." + "0" * 11 + "1", "0." + "0" * 12 + "1", "999999999.999999999999", "1000000000",
    "-999999999.999999999999", "-1000000000", "１２", "١٢٣", "৫", "²", "12\u00a0", " 7 ",
    "\t3\n", "\u2003", "", " ", "5\x00", "\x00", "0x10", "1_000", "1,5", "1.000,00", "+5",
    "--5", "5.", ".5", "-.5", "5..0", "1e3", "１.５", "$5", "5$", "5 USD", "💰", "\u202e5",
    "0.1" * 50, "-", ".", "e", "5e", "3.14159265358979323846", "٠.٥",
]  # fmt: skip
HOSTILE_TEXT = [
    "", " ", "\x00", "a\x00b@example.com", "x" * 5000, "@", "a@", "@b", "a@b c", "a b@c",
    "\u202eevil@example.com", "ünïcödé@例え.jp", "<script>alert(1)</script>",
    "'; DROP TABLE users; --", "%", "_", "\\", "a" * 330 + "@example.com", "\r\n\r\n",
    "\ufeff", "😀" * 100, "\ud7ff", "\x7f", "\x1b[31m",
]  # fmt: skip
HOSTILE_PAGES = [
    "1e29", "1e999", "-1", "0", "99999999999999999999", "9223372036854775808", "١", "nan",
    "", " ", "\x00", "1.5", "0x1", "+1", "9" * 5000, "２",
]  # fmt: skip
HOSTILE_DAYS = [
    "9999-12-31", "0001-01-01", "0000-01-01", "2026-02-30", "２０２６-01-01", "2026-W01-1",
    "20260101", "\x00", "-1", "2026-01-01T00:00", "9" * 5000, "2026-1-1",
]  # fmt: skip
HOSTILE_IDS = [
    "99999999999999999999", "9223372036854775808", "9223372036854775807", "-1", "0",
    "١", "1e3", "%00", "%FF", "1.0", "x", "9" * 5000, " 1", "0x1",
]  # fmt: skip
ALPHABETS = [
    "0123456789", "0123456789.-", "0123456789.-eE+ ", "١٢٣٤٥٦٧٨٩٠０１２３.",
    " \t\n\r\u00a0\u2003\u3000", "\x00\x01\x1f\x7f\u202e\ufeff", "abcxyz@._%\\'\"<>&",
    "😀💰€£¥", "ÄÖÜßéñ漢字",
]  # fmt: skip


def random_strings(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        chars = "".join(rng.choice(ALPHABETS) for _ in range(rng.randint(1, 3)))
        out.append("".join(rng.choice(chars) for _ in range(rng.choice([1, 3, 8, 20, 300]))))
    return out


def accepted_amount(text: str, *, negative: bool = True) -> Decimal | None:
    """The contract's rule for a typed amount, as the shared parser applies it."""
    try:
        return money.parse_amount(text, negative=negative)
    except money.AmountError:
        return None


async def _balance(pg, user_id: int) -> tuple[Decimal, int]:
    row = await pg.fetchrow("SELECT balance_usd, (SELECT count(*) FROM ledger WHERE user_id = $1)"
                            " AS n FROM users WHERE id = $1", user_id)  # fmt: skip
    return row["balance_usd"], row["n"]


async def test_hostile_credits_are_refused_and_change_nothing(pg, browser: Browser):
    admin, user = await make_user(pg, admin=True), await make_user(pg, credit="3.5")
    await browser.login(admin)
    for amount in HOSTILE_AMOUNTS + random_strings(120, seed=10):
        before, entries = await _balance(pg, user.id)
        status, text, _ = await browser.post(
            f"/admin/users/{user.id}/credit",
            {"amount_usd": amount, "reason": "fuzz", "confirming": "1", "confirm": "yes"},
        )
        after, entries_after = await _balance(pg, user.id)
        expected = accepted_amount(amount)
        if expected is not None and abs(before + expected) >= money.MAX_AMOUNT:
            expected = None  # a balance stays below 1e9 USD in absolute value
        if expected is None or expected == 0:
            assert status == 400, (amount, status)
            assert "error" in text
            assert (after, entries_after) == (before, entries), amount
        else:
            assert status == 303, (amount, status)
            assert after == before + expected and entries_after == entries + 1, amount
            assert str(after - before) == str(expected) or after - before == expected
    # the one from the security review: a clear form error, not a 500
    status, text, _ = await browser.post(
        f"/admin/users/{user.id}/credit", {"amount_usd": "1e-100000", "reason": "x"}
    )
    assert status == 400 and "plain decimal" in text


async def test_hostile_multipliers_and_thresholds(pg, browser: Browser):
    admin, user = await make_user(pg, admin=True), await make_user(pg)
    await browser.login(admin)
    values = [*HOSTILE_AMOUNTS, "0", "0.0000001", "1000", "1000.000001", "0.000001", "1.25"]
    for value in values + random_strings(60, seed=11):
        before = await pg.fetchval("SELECT rate_multiplier FROM users WHERE id = $1", user.id)
        status, _, _ = await browser.post(
            f"/admin/users/{user.id}/settings", {"rate_multiplier": value}
        )
        after = await pg.fetchval("SELECT rate_multiplier FROM users WHERE id = $1", user.id)
        try:
            expected = money.parse_multiplier(value)
        except money.AmountError:
            assert status == 400 and after == before, (value, status)
        else:
            assert status == 303 and after == expected, (value, status)
    row = "SELECT warn_usd, stop_usd FROM providers WHERE name = 'openai'"
    original = await pg.fetchrow(row)
    try:
        for value in HOSTILE_AMOUNTS + random_strings(40, seed=12):
            before = await pg.fetchrow(row)
            status, _, _ = await browser.post(
                "/admin/providers/openai/thresholds", {"warn_usd": value, "stop_usd": "5"}
            )
            assert status == 303, (value, status)  # the page shows the error as a flash
            after = await pg.fetchrow(row)
            expected = accepted_amount(value, negative=False)
            if not value.strip():  # blank: no threshold
                assert after["warn_usd"] is None, value
            elif expected is None:  # refused
                assert after["warn_usd"] == before["warn_usd"], value
            else:
                assert after["warn_usd"] == expected and after["stop_usd"] == 5, value
    finally:
        await pg.execute(
            "UPDATE providers SET warn_usd = $1, stop_usd = $2 WHERE name = 'openai'",
            original["warn_usd"], original["stop_usd"],
        )  # fmt: skip


async def test_hostile_user_forms(pg, browser: Browser):
    user = await make_user(pg, credit="1")
    await browser.login(user)
    columns = "SELECT daily_alert_usd, low_balance_usd FROM users WHERE id = $1"
    for value in HOSTILE_AMOUNTS + random_strings(60, seed=20):
        before = await pg.fetchrow(columns, user.id)
        status, _, _ = await browser.post(
            "/settings", {"daily_alert_usd": value, "low_balance_usd": "1"}
        )
        after = await pg.fetchrow(columns, user.id)
        expected = None if not value.strip() else accepted_amount(value, negative=False)
        if value.strip() and expected is None:
            assert status == 400 and after == before, (value, status)
        else:
            assert status == 303 and after["daily_alert_usd"] == expected, (value, status)
    keys = "SELECT count(*) FROM api_keys WHERE user_id = $1"
    for name in HOSTILE_TEXT + random_strings(40, seed=21):
        before = await pg.fetchval(keys, user.id)
        status, _, _ = await browser.post("/keys", {"name": name})
        assert status in (200, 400), (name, status)
        assert await pg.fetchval(keys, user.id) == before + (status == 200), name
    assert await _balance(pg, user.id) == (Decimal(1), 1)


async def test_hostile_query_parameters_and_ids(pg, browser: Browser, other_browser: Browser):
    user, admin = await make_user(pg), await make_user(pg, admin=True)
    for _ in range(55):  # two pages
        await add_usage(pg, user.id)
    await browser.login(user)
    await other_browser.login(admin)
    for page in HOSTILE_PAGES + random_strings(20, seed=30):
        status, text, _ = await browser.get("/usage?page=" + quote(page))  # page 1 or the last
        assert status == 200 and ("page 1 of 2" in text or "page 2 of 2" in text), page
    for day in HOSTILE_DAYS + random_strings(20, seed=31):
        for path in ("/usage", "/usage.csv"):
            status, _, _ = await browser.get(f"{path}?day={quote(day)}")
            assert status in (200, 400), (path, day, status)
    for model in HOSTILE_TEXT + random_strings(20, seed=32):
        for path in ("/usage", "/usage.csv"):
            status, _, _ = await browser.get(f"{path}?model={quote(model)}&page=2")
            assert status == 200, (path, model, status)
        status, _, _ = await other_browser.get(f"/admin/users?q={quote(model)}")
        assert status == 200, (model, status)
    for raw in ("%FF%FE", "%00", "%ED%A0%80", "%C0%AF", "a%"):
        assert (await browser.get(f"/usage?model={raw}&day=&page={raw}"))[0] == 200, raw
        assert (await other_browser.get(f"/admin/users?q={raw}"))[0] == 200, raw
    for ident in HOSTILE_IDS:
        assert (await browser.post(f"/keys/{ident}/revoke"))[0] == 404, ident
        assert (await other_browser.get(f"/admin/users/{ident}"))[0] == 404, ident
        for action in ("credit", "settings", "password", "invite"):
            status, _, _ = await other_browser.post(
                f"/admin/users/{ident}/{action}", {"amount_usd": "1", "reason": "x"}
            )
            assert status == 404, (ident, action, status)
        status, _, _ = await other_browser.post(f"/admin/provider-keys/{ident}/disable")
        assert status == 404, (ident, status)
    for token in ("x", "%FF", "%00", "A" * 5000, "...", "%2e%2e%2f"):
        assert (await browser.get(f"/invite/{token}"))[0] == 404, token
        status, _, _ = await browser.post(f"/invite/{token}", {"password": "p" * 12,
                                                               "confirm": "p" * 12})  # fmt: skip
        assert status == 404, token


async def test_hostile_sign_ins_and_operator_text_fields(pg, dashboard_url, browser: Browser):
    admin = await make_user(pg, admin=True)
    values = HOSTILE_TEXT + random_strings(30, seed=40)
    anon = Browser(dashboard_url)
    try:
        for value in values:
            status, _, _ = await anon.post("/login", {"email": value, "password": value})
            assert status in (401, 429), (value, status)
            status, _, _ = await anon.post("/login", {"email": admin.email, "password": value})
            assert status in (401, 429), (value, status)
    finally:
        await anon.close()
    await browser.login(admin)
    target = await make_user(pg)
    users_before = await pg.fetchval("SELECT count(*) FROM users")
    for value in values:
        status, _, _ = await browser.post("/admin/users", {"email": value})
        assert status == 303, (value, status)
        status, _, _ = await browser.post(
            f"/admin/users/{target.id}/credit", {"amount_usd": "1", "reason": value}
        )
        assert status in (303, 400), (value, status)
        status, _, _ = await browser.post(
            f"/admin/users/{target.id}/password", {"password": value, "confirm": value}
        )
        assert status in (303, 400), (value, status)
        status, _, _ = await browser.post(
            "/admin/provider-keys", {"provider": value, "name": value, "secret": value}
        )
        assert status == 303, (value, status)
    # every created user has a plausible, storable email
    created = await pg.fetch("SELECT email FROM users ORDER BY id OFFSET $1", users_before)
    for row in created:
        assert "@" in row["email"] and "\x00" not in row["email"] and len(row["email"]) <= 320


async def _raw(dashboard_url: str, head: bytes, body: bytes = b"") -> int:
    host, port = dashboard_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    await writer.drain()
    status_line = await reader.readline()
    await reader.read()
    writer.close()
    return int(status_line.split()[1])


async def test_undecodable_bytes_and_overlong_fields(pg, dashboard_url, browser: Browser):
    admin, user = await make_user(pg, admin=True), await make_user(pg, credit="2")
    await browser.login(admin)
    cookie = f"mw_session={browser.session_id}".encode()
    csrf = browser.csrf.encode()
    before = await _balance(pg, user.id)
    urlencoded = b"Content-Type: application/x-www-form-urlencoded\r\n"
    for path in (f"/admin/users/{user.id}/credit", "/settings", "/keys", "/login", "/logout"):
        post = b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nCookie: " + cookie + b"\r\n"
        bodies = [
            (urlencoded, b"csrf=" + csrf + b"&amount_usd=\xff\xfe5&reason=\xc3"),
            (b"Content-Type: application/x-www-form-urlencoded; charset=nope\r\n",
             b"csrf=" + csrf + b"&amount_usd=5&reason=x"),
            (b"Content-Type: multipart/form-data; boundary=B\r\n",
             b"--B\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n" + csrf
             + b"\r\n--B\r\nContent-Disposition: form-data; name=\"amount_usd\"\r\n\r\n\xff5"
             b"\r\n--B--\r\n"),
            (b"Content-Type: multipart/form-data; boundary=B\r\n",
             b"--B\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n" + csrf
             + b"\r\n--B\r\nContent-Disposition: form-data; name=\"amount_usd\"; filename=\"a\""
             b"\r\n\r\n5\r\n--B\r\nContent-Disposition: form-data; name=\"reason\"\r\n\r\nx"
             b"\r\n--B--\r\n"),
            (b"Content-Type: multipart/form-data; boundary=B\r\n", b"--B\r\ngarbage"),
            (urlencoded, b"csrf=" + csrf + b"&amount_usd=%FF5&reason=%ED%A0%80"),
        ]  # fmt: skip
        for content_type, body in bodies:
            status = await _raw(dashboard_url, post + content_type, body)
            assert status < 500, (path, body[:60], status)
            if "credit" in path:
                assert status >= 400, (path, body[:60], status)
    assert await _balance(pg, user.id) == before
    await browser.login(admin)  # the /logout bodies that did decode signed out
    cookie = f"mw_session={browser.session_id}".encode()
    csrf = browser.csrf.encode()
    # cookies and headers of undecodable bytes
    for bad_cookie in (b"mw_session=\xff\xfe.abc", b"mw_session=" + b"\xc3" * 300, b"\xff=\xff"):
        status = await _raw(dashboard_url, b"GET /usage HTTP/1.1\r\nHost: x\r\nCookie: "
                            + bad_cookie + b"\r\n")  # fmt: skip
        assert status == 303, bad_cookie
    status = await _raw(
        dashboard_url,
        b"POST /admin/users/%d/invite HTTP/1.1\r\nHost: \xff\xfe\r\nCookie: " % user.id
        + cookie + b"\r\n" + urlencoded, b"csrf=" + csrf,
    )  # fmt: skip
    assert status < 500
    # overlong: a huge amount is a form error, a body over the limit a 413
    status, _, _ = await browser.post(
        f"/admin/users/{user.id}/credit", {"amount_usd": "9" * 900_000, "reason": "x"}
    )
    assert status == 400
    status, _, _ = await browser.post(
        f"/admin/users/{user.id}/credit", {"amount_usd": "1", "reason": "x" * 2_000_000}
    )
    assert status == 413
    status, _, _ = await browser.get("/usage?model=" + "x" * 20_000)
    assert 400 <= status < 500 or status == 200
    assert await _balance(pg, user.id) == before


@pytest.mark.parametrize("amount", ["1e-100000", "1e999", "nan", "-0", "１"])
async def test_each_review_amount_is_a_clear_form_error(pg, browser: Browser, amount):
    admin, user = await make_user(pg, admin=True), await make_user(pg, credit="1.25")
    await browser.login(admin)
    status, text, _ = await browser.post(
        f"/admin/users/{user.id}/credit", {"amount_usd": amount, "reason": "review"}
    )
    assert status == 400 and ("plain decimal" in text or "must not be zero" in text)
    assert await _balance(pg, user.id) == (Decimal("1.25"), 1)
