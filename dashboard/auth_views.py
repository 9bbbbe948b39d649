"""Sign in, sign out (here or everywhere), and setting a password through a
one-time invite link."""

from __future__ import annotations

import asyncio

from aiohttp import web
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from dashboard.common import (
    SESSION_KEY,
    USER_KEY,
    field,
    has_control,
    log,
    render,
    state,
)
from shared.db import dashboard as q
from shared.db import users
from shared.passwords import MAX_PASSWORD, MIN_PASSWORD, password_problem

__all__ = ["MIN_PASSWORD", "check_new_password", "hash_password"]

_hasher = PasswordHasher()
# Verified against when the email is unknown, so both cases take the same time.
_DUMMY_HASH = _hasher.hash("meterway-dummy-password")
MAX_EMAIL = 320


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


async def _verify(password_hash: str, password: str) -> bool:
    try:
        return await asyncio.to_thread(_hasher.verify, password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def check_new_password(password: str, confirm: str) -> str | None:
    """The shared password rule (shared.passwords), and both copies must agree."""
    problem = password_problem(password)
    if problem:
        return problem
    if password != confirm:
        return "The two passwords differ."
    return None


def client_ip(request: web.Request) -> str:
    return request.remote or "unknown"


async def login_page(request: web.Request) -> web.StreamResponse:
    if request.get(USER_KEY) is not None:
        raise web.HTTPSeeOther("/")
    flash = await state(request).sessions.pop_flash(request[SESSION_KEY])
    email = ""
    if flash and flash.startswith(PREFILL):  # after an invite: the account's email filled in
        email, _, flash = flash[len(PREFILL) :].partition("\x1f")
    return render(request, "login.html", {"title": "Sign in", "flash": flash, "email": email})


PREFILL = "\x1eemail:"


async def login(request: web.Request) -> web.StreamResponse:
    st = state(request)
    form = await request.post()
    email = field(form, "email", MAX_EMAIL + 1).strip().lower()
    password = field(form, "password", MAX_PASSWORD + 1)
    shown = email[:MAX_EMAIL]
    ip = client_ip(request)
    # Counted before the password is checked: a burst cannot get past the limit.
    if not await st.throttle.attempt(email, ip):
        log.info("dashboard_sign_in_throttled")
        return render(request, "login.html", {"title": "Sign in", "email": shown,
                      "error": "Too many failed attempts. Try again in 15 minutes."},
                      status=429)  # fmt: skip
    plausible = 0 < len(email) <= MAX_EMAIL and not has_control(email)
    row = await q.login_row(st.pg, email) if plausible else None
    stored = row["password_hash"] if row and row["password_hash"] else _DUMMY_HASH
    ok = await _verify(stored, password) and row is not None and stored is not _DUMMY_HASH
    ok = ok and len(password) <= MAX_PASSWORD and not row["disabled"]
    if ok:
        # Read the generation, then check that the password and the account did not
        # change while we verified: a sign-out-everywhere from then on ends this session.
        generation = await st.sessions.generation(row["id"])
        again = await q.login_row(st.pg, email)
        ok = again is not None and again["password_hash"] == stored and not again["disabled"]
    if not ok:
        return render(request, "login.html", {"title": "Sign in", "email": shown,
                      "error": "Wrong email or password."}, status=401)  # fmt: skip
    await st.throttle.succeeded(email, ip)
    if _hasher.check_needs_rehash(stored):
        # only if the hash is still the one verified (never undo a password change)
        await st.pg.execute(
            "UPDATE users SET password_hash = $3 WHERE id = $1 AND password_hash = $2",
            row["id"], stored, await hash_password(password),
        )  # fmt: skip
    # Session fixation: the pre-login session is dropped and a new id issued.
    await st.sessions.delete(request[SESSION_KEY])
    request[SESSION_KEY] = await st.sessions.create(row["id"], generation=generation)
    raise web.HTTPSeeOther("/")


async def logout(request: web.Request) -> web.StreamResponse:
    """Sign out this browser, or with `everywhere=1` every session of the user."""
    form = await request.post()
    if field(form, "everywhere") and request.get(USER_KEY) is not None:
        return await logout_everywhere(request)
    st = state(request)
    await st.sessions.delete(request[SESSION_KEY])
    request[SESSION_KEY] = await st.sessions.create(None)
    request[USER_KEY] = None
    raise web.HTTPSeeOther("/login")


async def logout_everywhere(request: web.Request) -> web.StreamResponse:
    st = state(request)
    user = request.get(USER_KEY)
    if user is None:
        raise web.HTTPSeeOther("/login")
    await st.sessions.delete_all_for_user(user.id)
    log.info("dashboard_signed_out_everywhere", user_id=user.id)
    request[SESSION_KEY] = await st.sessions.create(None)
    request[USER_KEY] = None
    await st.sessions.set_flash(request[SESSION_KEY], "Signed out everywhere.")
    raise web.HTTPSeeOther("/login")


async def invite_page(request: web.Request) -> web.StreamResponse:
    token = request.match_info["token"]
    user_id = await state(request).invites.peek(token)
    account = await users.by_id(state(request).pg, user_id) if user_id is not None else None
    if account is None:
        return _invite_gone(request)
    return render(request, "invite.html", {"title": "Set your password", "token": token,
                  "account": account.email})  # fmt: skip


async def invite_submit(request: web.Request) -> web.StreamResponse:
    st = state(request)
    token = request.match_info["token"]
    form = await request.post()
    password = field(form, "password", MAX_PASSWORD + 1)
    problem = check_new_password(password, field(form, "confirm", MAX_PASSWORD + 1))
    if problem:
        if await st.invites.peek(token) is None:
            return _invite_gone(request)
        account = await users.by_id(st.pg, await st.invites.peek(token) or 0)
        return render(request, "invite.html", {"title": "Set your password", "token": token,
                      "error": problem, "account": account.email if account else ""},
                      status=400)  # fmt: skip
    user_id = await st.invites.consume(token)
    if user_id is None:
        return _invite_gone(request)
    await q.set_password_hash(st.pg, user_id, await hash_password(password))
    await st.sessions.delete_all_for_user(user_id)
    if request[SESSION_KEY].user_id == user_id:  # this browser's session ended with the rest
        request[SESSION_KEY] = await st.sessions.create(None)
        request[USER_KEY] = None
    account = await users.by_id(st.pg, user_id)
    await st.sessions.set_flash(request[SESSION_KEY], f"{PREFILL}{account.email if account else ''}"
                                "\x1fPassword set. You can sign in now.")  # fmt: skip
    raise web.HTTPSeeOther("/login")


def _invite_gone(request: web.Request) -> web.Response:
    return render(request, "error.html", {"title": "Link expired",
                  "message": "This invite link was used already or has expired. "
                  "Ask an operator for a new one."}, status=404)  # fmt: skip
