"""Operator pages for users: search, create, credit, rate multiplier, disable,
set a password or make a one-time invite link."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
from aiohttp import web

from dashboard import key_controls
from dashboard.auth_views import check_new_password, hash_password
from dashboard.common import (
    SESSION_KEY,
    FormError,
    actor,
    admin_required,
    confirmed,
    current_user,
    field,
    flash_redirect,
    has_control,
    int_param,
    log,
    money_text,
    page_number,
    parse_amount,
    parse_multiplier,
    query_text,
    render,
    safe_text,
    state,
    take_flash,
)
from shared import invalidation, money, redis_keys
from shared.db import api_keys, audit, ledger, users
from shared.db import dashboard as q
from shared.keys import hash_proxy_key, new_proxy_key, visible_prefix
from shared.money import units_to_usd, usd_str
from shared.passwords import MAX_PASSWORD

MAX_EMAIL = 320
USERS_PAGE = 50


@admin_required
async def users_list(request: web.Request) -> web.StreamResponse:
    query = query_text(request, "q", 200)
    page = page_number(request)
    rows = await q.search_users(state(request).pg, query, limit=USERS_PAGE + 1,
                                offset=(page - 1) * USERS_PAGE)  # fmt: skip
    return render(request, "admin_users.html", {
        "title": "Users", "rows": rows[:USERS_PAGE], "q": query, "page": page,
        "more": len(rows) > USERS_PAGE, "query": {"q": query} if query else {},
        "flash": await take_flash(request),
    })  # fmt: skip


@admin_required
async def user_create(request: web.Request) -> web.StreamResponse:
    st = state(request)
    form = await request.post()
    email = field(form, "email", MAX_EMAIL + 1).strip().lower()
    if not _plausible_email(email):
        await flash_redirect(
            request, "/admin/users", f"Not an email address: {email[:80]!r}.", error=True
        )
    try:  # as `meterway user create EMAIL [--admin] [--rate-multiplier R] [--password P]`
        rate_text = field(form, "rate_multiplier", 40).strip()
        rate = parse_multiplier(rate_text, "Rate multiplier") if rate_text else Decimal(1)
    except FormError as exc:
        await flash_redirect(request, "/admin/users", str(exc), error=True)
    password = field(form, "password", MAX_PASSWORD + 1)
    hashed = None
    if password:
        problem = check_new_password(password, password)
        if problem:
            await flash_redirect(request, "/admin/users", problem, error=True)
        hashed = await hash_password(password)
    try:
        async with st.pg.acquire() as conn, conn.transaction():
            user = await users.create(conn, email, is_admin=form.get("is_admin") == "on",
                                      password_hash=hashed, rate_multiplier=rate)  # fmt: skip
            await audit.record(conn, actor(request), "user.create", f"user:{user.email}", None,
                               {**audit.user_fields(user),
                                "password_set": hashed is not None})  # fmt: skip
    except asyncpg.UniqueViolationError:
        await flash_redirect(
            request, "/admin/users", f"A user with email {email} exists.", error=True
        )
    await flash_redirect(request, f"/admin/users/{user.id}", "User created." + (
        "" if hashed else " Set a password or make an invite link."))  # fmt: skip


def _plausible_email(email: str) -> bool:
    local, at, domain = email.rpartition("@")
    return (bool(at and local and domain) and len(email) <= MAX_EMAIL and not has_control(email)
            and not any(c.isspace() for c in email))  # fmt: skip


async def _load(request: web.Request) -> users.User:
    user = await users.by_id(state(request).pg, int_param(request, "user_id"))
    if user is None:
        raise web.HTTPNotFound()
    return user


async def _detail(request: web.Request, target: users.User, *, error: str | None = None,
                  invite: str | None = None, new_key: str | None = None,
                  status: int = 200) -> web.Response:  # fmt: skip
    st = state(request)
    held = units_to_usd(await st.view.held_units(target.id))
    keys = await api_keys.list_for_user(st.pg, target.id)
    keys.sort(key=lambda k: (k.revoked_at is not None, -k.id))
    return render(request, "admin_user.html", {
        "title": target.email, "target": target, "held": held, "error": error,
        "invite": invite, "flash": await take_flash(request), "new_key": new_key,
        "rows": await key_controls.key_rows(request, keys),
        "models": key_controls.catalog_models(request), "once": secrets.token_urlsafe(16),
        **await _statement(st, target),
    }, status=status)  # fmt: skip


async def _statement(st, target: users.User) -> dict:
    """This month's ledger, charges rolled up per UTC day, newest first, with the
    opening balance: opening + the amounts = the balance at the last line."""
    now = datetime.now(UTC)
    start, end = ledger.month_bounds(now.year, now.month)
    lines = await ledger.lines(st.pg, target.id, start, end)
    opening = await ledger.balance_before(st.pg, target.id, start)
    return {"ledger": list(reversed(lines)), "opening": opening, "month": now.strftime("%Y-%m"),
            "ledger_sum": sum((line.amount_usd for line in lines), Decimal(0))}  # fmt: skip


@admin_required
async def user_detail(request: web.Request) -> web.StreamResponse:
    return await _detail(request, await _load(request))


@admin_required
async def user_credit(request: web.Request) -> web.StreamResponse:
    """Top up (positive) or debit (negative); the reason lands in the ledger note."""
    st = state(request)
    target = await _load(request)
    form = await request.post()
    reason = field(form, "reason", 501).strip()
    try:
        amount = parse_amount(field(form, "amount_usd"), "Amount")
        assert amount is not None
        if amount == 0:
            raise FormError("Amount must not be zero")
        if not reason:
            raise FormError("Give a reason: it is written to the ledger")
        if len(reason) > 500 or has_control(reason):
            raise FormError("The reason must be at most 500 characters, no control characters")
    except FormError as exc:
        return await _detail(request, target, error=str(exc), status=400)
    if amount < 0:  # a debit takes money away: confirm it first
        _, page = confirmed(
            request, form, title=f"Debit {money_text(-amount)} from {target.email}?",
            message=f"The balance goes down by {usd_str(-amount)} USD. Reason: {reason}",
            button="Debit", back=f"/admin/users/{target.id}",
        )  # fmt: skip
        if page is not None:
            return page
    operator = current_user(request)
    kind = "topup" if amount > 0 else "adjustment"
    try:
        async with st.pg.acquire() as conn, conn.transaction():
            before = await conn.fetchval(
                "SELECT balance_usd FROM users WHERE id = $1 FOR UPDATE", target.id
            )
            balance, version = await users.change_balance(
                conn, target.id, amount, kind=kind,
                note=f"{reason} (by {operator.email}, dashboard)",
            )  # fmt: skip
            await audit.record(conn, operator.email, "credits.add", f"user:{target.email}",
                               {"balance_usd": before},
                               {"balance_usd": balance, "amount_usd": amount, "kind": kind},
                               reason)  # fmt: skip
    except money.AmountError as exc:  # the balance would leave its range: nothing changed
        return await _detail(request, target, error=str(exc), status=400)
    try:
        await st.view.publish(target.id, balance, version)
    except Exception as exc:  # the proxy rebuilds a missing view from Postgres
        log.warning("balance_view_not_updated", error=str(exc))
    await flash_redirect(request, f"/admin/users/{target.id}",
                         f"Balance changed by {money_text(amount, cost=True)} (exactly"
                         f" {usd_str(amount)} USD); now {money_text(balance)}.")  # fmt: skip


@admin_required
async def user_settings(request: web.Request) -> web.StreamResponse:
    st = state(request)
    target = await _load(request)
    form = await request.post()
    if field(form, "end_sessions"):
        return await user_end_sessions(request)
    try:
        rate = parse_multiplier(field(form, "rate_multiplier"), "Rate multiplier")
    except FormError as exc:
        return await _detail(request, target, error=str(exc), status=400)
    disabled = form.get("disabled") == "on"
    if target.id == current_user(request).id and disabled:
        return await _detail(request, target, error="You cannot disable yourself.", status=400)
    fields: dict[str, object] = {"rate_multiplier": rate, "disabled": disabled}
    try:  # the alert thresholds, where the form has them; blank: no alert
        for name, what in (("daily_alert_usd", "Daily alert"), ("low_balance_usd", "Low balance")):
            if name in form:
                fields[name] = parse_amount(field(form, name, 100), what, allow_blank=True,
                                            negative=False)  # fmt: skip
    except FormError as exc:
        return await _detail(request, target, error=str(exc), status=400)
    reason = None
    if disabled and not target.disabled:  # every key stops working: confirm it first
        reason, page = confirmed(
            request, form, title=f"Disable {target.email}?", button="Disable user",
            message="Every API key of this user gets 401 and every dashboard session ends,"
            " until the user is enabled again.", back=f"/admin/users/{target.id}",
        )  # fmt: skip
        if page is not None:
            return page
    before = audit.user_fields(target, fields)
    changed = {k: v for k, v in fields.items() if before[k] != v}
    async with st.pg.acquire() as conn, conn.transaction():
        await users.update(conn, target.id, **fields)
        if changed:
            await audit.record(conn, actor(request), "user.set", f"user:{target.email}",
                               {k: before[k] for k in changed}, changed, reason)  # fmt: skip
    await st.notify(invalidation.user_message(target.id))
    if disabled:  # every dashboard session of the user ends now, not at its next request
        await st.sessions.delete_all_for_user(target.id)
    await flash_redirect(request, f"/admin/users/{target.id}", "User settings saved.")


@admin_required
async def user_end_sessions(request: web.Request) -> web.StreamResponse:
    """Sign a user out of every dashboard session (their API keys keep working)."""
    target = await _load(request)
    await _end_sessions(request, target.id)
    await audit.record(state(request).pg, actor(request), "user.sessions_end",
                       f"user:{target.email}")  # fmt: skip
    log.info("dashboard_sessions_ended", user_id=target.id, by=current_user(request).id)
    await flash_redirect(request, f"/admin/users/{target.id}",
                         "Every dashboard session of this user has ended.")  # fmt: skip


async def _end_sessions(request: web.Request, user_id: int) -> None:
    """Ends every session of the user; an operator acting on themselves goes on
    in a new session (the old ones, this one included, are over)."""
    st = state(request)
    await st.sessions.delete_all_for_user(user_id)
    if user_id == current_user(request).id:
        request[SESSION_KEY] = await st.sessions.create(user_id)


@admin_required
async def user_password(request: web.Request) -> web.StreamResponse:
    st = state(request)
    target = await _load(request)
    form = await request.post()
    password = field(form, "password", MAX_PASSWORD + 1)
    problem = check_new_password(password, field(form, "confirm", MAX_PASSWORD + 1))
    if problem:
        return await _detail(request, target, error=problem, status=400)
    hashed = await hash_password(password)
    async with st.pg.acquire() as conn, conn.transaction():
        await q.set_password_hash(conn, target.id, hashed)
        await audit.record(conn, actor(request), "user.password", f"user:{target.email}",
                           None, {"password_set": True})  # fmt: skip
    await _end_sessions(request, target.id)
    await flash_redirect(request, f"/admin/users/{target.id}",
                         "Password set; the user's dashboard sessions have ended.")  # fmt: skip


@admin_required
async def user_invite(request: web.Request) -> web.StreamResponse:
    target = await _load(request)
    token = await state(request).invites.create(target.id)
    await audit.record(state(request).pg, actor(request), "user.invite", f"user:{target.email}",
                       None, {"invite_hours": 72})  # fmt: skip
    host = safe_text(request.host)
    link = f"{request.scheme}://{host}/invite/{token}"
    if request.headers.get("X-Forwarded-Proto", "").lower() == "https":
        link = f"https://{host}/invite/{token}"
    return await _detail(request, target, invite=link)


@admin_required
async def user_key_create(request: web.Request) -> web.StreamResponse:
    """An operator makes a key for the user, with any controls; shown here once."""
    st = state(request)
    target = await _load(request)
    form = await request.post()
    name = field(form, "name", 81).strip()
    if not name or len(name) > 80 or has_control(name):
        return await _detail(request, target, status=400, error="Give the key a name (at most"
                             " 80 characters, no control characters).")  # fmt: skip
    try:
        controls = key_controls.parse_controls(
            form, key_controls.catalog_models(request), with_rates=True
        )
    except FormError as exc:
        return await _detail(request, target, error=str(exc), status=400)
    once = field(form, "once", 100)
    if once and not await st.redis.set(
        redis_keys.dashboard_form_once(once), 1, nx=True, ex=24 * 3600
    ):  # the same form sent again (a reload): no second key
        return await _detail(request, target, error="That key was already created and shown once.")
    secret = new_proxy_key()
    rates = {"rpm_limit": controls.pop("rpm"), "tpm_limit": controls.pop("tpm")}
    async with st.pg.acquire() as conn, conn.transaction():
        key = await api_keys.create(conn, target.id, hash_proxy_key(secret),
                                    visible_prefix(secret), name=name, **rates,
                                    **controls)  # fmt: skip
        await audit.record(conn, actor(request), "key.create", f"key:{key.id}", None,
                           {**audit.key_fields(key), "user": target.email})  # fmt: skip
    log.info("api_key_created", user_id=target.id, api_key_id=key.id,
             by=current_user(request).id)  # fmt: skip
    return await _detail(request, target, new_key=secret)


@admin_required
async def user_key_controls(request: web.Request) -> web.StreamResponse:
    """An operator sets or clears a user's key's budget, models, expiry, rpm and tpm."""
    target = await _load(request)
    key = await api_keys.get(state(request).pg, int_param(request, "key_id"))
    if key is None or key.user_id != target.id:
        raise web.HTTPNotFound()
    if key.revoked_at is not None:
        return await _detail(request, target, error="That key is revoked.", status=400)
    form = await request.post()
    try:
        changes = key_controls.parse_controls(
            form, key_controls.catalog_models(request), with_rates=True
        )
    except FormError as exc:
        return await _detail(request, target, error=str(exc), status=400)
    await key_controls.apply(request, key, changes, actor=actor(request))
    log.info("api_key_controls_set", user_id=target.id, api_key_id=key.id,
             by=current_user(request).id)  # fmt: skip
    await flash_redirect(request, f"/admin/users/{target.id}",
                         f"Limits of key {key.name} ({key.prefix}…) saved.")  # fmt: skip


@admin_required
async def user_key_revoke(request: web.Request) -> web.StreamResponse:
    """An operator revokes a user's key, after a confirmation with a reason; audited."""
    st = state(request)
    target = await _load(request)
    key = await api_keys.get(st.pg, int_param(request, "key_id"))
    if key is None or key.user_id != target.id:
        raise web.HTTPNotFound()
    back = f"/admin/users/{target.id}"
    if key.revoked_at is not None:
        await flash_redirect(request, back, f"Key {key.name} ({key.prefix}…) was revoked already.")
    form = await request.post()
    reason, page = confirmed(
        request, form, title=f"Revoke key {key.name or key.id} ({key.prefix}…)?",
        message=f"Every request with this key of {target.email} gets 401 from now on;"
        " this cannot be undone.", button="Revoke key", back=back,
    )  # fmt: skip
    if page is not None:
        return page
    key_hash = await api_keys.hash_of(st.pg, key.id)
    async with st.pg.acquire() as conn, conn.transaction():
        await api_keys.revoke_by_hash(conn, key_hash)
        after = await api_keys.get(conn, key.id)
        await audit.record(conn, actor(request), "key.revoke", f"key:{key.id}",
                           {**audit.key_fields(key), "user": target.email},
                           {**audit.key_fields(after), "user": target.email}, reason)  # fmt: skip
    await st.notify(invalidation.key_message(key_hash))
    await flash_redirect(request, back, f"Key {key.name} ({key.prefix}…) revoked.")
