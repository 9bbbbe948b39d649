"""Sign in, sign out, and setting a password through a one-time invite link."""

from __future__ import annotations

import asyncio

from aiohttp import web
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from dashboard.common import SESSION_KEY, USER_KEY, render, state
from shared.db import dashboard as q

MIN_PASSWORD = 10
_hasher = PasswordHasher()
# Verified against when the email is unknown, so both cases take the same time.
_DUMMY_HASH = _hasher.hash("meterway-dummy-password")


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


async def _verify(password_hash: str, password: str) -> bool:
    try:
        return await asyncio.to_thread(_hasher.verify, password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def check_new_password(password: str, confirm: str) -> str | None:
    if len(password) < MIN_PASSWORD:
        return f"The password needs at least {MIN_PASSWORD} characters."
    if len(password) > 1024:
        return "The password is too long."
    if password != confirm:
        return "The two passwords differ."
    return None


def client_ip(request: web.Request) -> str:
    return request.remote or "unknown"


async def login_page(request: web.Request) -> web.StreamResponse:
    if request.get(USER_KEY) is not None:
        raise web.HTTPSeeOther("/")
    flash = await state(request).sessions.pop_flash(request[SESSION_KEY])
    return render(request, "login.html", {"title": "Sign in", "flash": flash, "email": ""})


async def login(request: web.Request) -> web.StreamResponse:
    st = state(request)
    form = await request.post()
    email = str(form.get("email", "")).strip().lower()[:320]
    password = str(form.get("password", ""))[:1024]
    ip = client_ip(request)
    if await st.throttle.blocked(email, ip):
        return render(request, "login.html", {"title": "Sign in", "email": email,
                      "error": "Too many failed attempts. Try again in 15 minutes."},
                      status=429)  # fmt: skip
    row = await q.login_row(st.pg, email) if email else None
    stored = row["password_hash"] if row and row["password_hash"] else _DUMMY_HASH
    ok = await _verify(stored, password) and row is not None and stored is not _DUMMY_HASH
    if not ok or row["disabled"]:
        await st.throttle.failed(email, ip)
        return render(request, "login.html", {"title": "Sign in", "email": email,
                      "error": "Wrong email or password."}, status=401)  # fmt: skip
    await st.throttle.reset(email, ip)
    if _hasher.check_needs_rehash(stored):
        await q.set_password_hash(st.pg, row["id"], await hash_password(password))
    # Session fixation: the pre-login session is dropped and a new id issued.
    await st.sessions.delete(request[SESSION_KEY])
    request[SESSION_KEY] = await st.sessions.create(row["id"])
    raise web.HTTPSeeOther("/")


async def logout(request: web.Request) -> web.StreamResponse:
    st = state(request)
    await st.sessions.delete(request[SESSION_KEY])
    request[SESSION_KEY] = await st.sessions.create(None)
    request[USER_KEY] = None
    raise web.HTTPSeeOther("/login")


async def invite_page(request: web.Request) -> web.StreamResponse:
    token = request.match_info["token"]
    if await state(request).invites.peek(token) is None:
        return _invite_gone(request)
    return render(request, "invite.html", {"title": "Set your password", "token": token})


async def invite_submit(request: web.Request) -> web.StreamResponse:
    st = state(request)
    token = request.match_info["token"]
    form = await request.post()
    problem = check_new_password(str(form.get("password", "")), str(form.get("confirm", "")))
    if problem:
        if await st.invites.peek(token) is None:
            return _invite_gone(request)
        return render(request, "invite.html", {"title": "Set your password", "token": token,
                      "error": problem}, status=400)  # fmt: skip
    user_id = await st.invites.consume(token)
    if user_id is None:
        return _invite_gone(request)
    await q.set_password_hash(st.pg, user_id, await hash_password(str(form["password"])))
    await st.sessions.delete_all_for_user(user_id)
    await st.sessions.set_flash(request[SESSION_KEY], "Password set. You can sign in now.")
    raise web.HTTPSeeOther("/login")


def _invite_gone(request: web.Request) -> web.Response:
    return render(request, "error.html", {"title": "Link expired",
                  "message": "This invite link was used already or has expired. "
                  "Ask an operator for a new one."}, status=404)  # fmt: skip
