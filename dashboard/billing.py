"""Billing for every user: the ledger (`/billing`), the monthly statement as CSV,
the redemption-code form; for operators the same for any user, and batches of
codes downloaded once as CSV (`/admin/codes`)."""

from __future__ import annotations

import csv
import io
import re
import secrets
from datetime import UTC, datetime

from aiohttp import web

from dashboard.common import (
    FormError,
    admin_required,
    current_user,
    field,
    flash_redirect,
    has_control,
    int_param,
    log,
    login_required,
    page_number,
    parse_amount,
    render,
    state,
    take_flash,
)
from dashboard.payments import stripe_enabled
from shared import redis_keys
from shared.db import audit, codes, ledger, users
from shared.money import usd_str
from shared.redeem import Redeemer, RedeemRefused

_MONTH = re.compile(r"([0-9]{4})-(0[1-9]|1[0-2])")
MAX_BATCH = 1000
CODES_PAGE = 100


def _month(request: web.Request) -> tuple[str, datetime, datetime]:
    text = request.query.get("month", "").strip()
    found = _MONTH.fullmatch(text)
    if text and (not found or not 1 <= int(found.group(1)) <= 9998):
        raise web.HTTPBadRequest(text="month must look like 2026-01")
    if not text:
        text = datetime.now(UTC).strftime("%Y-%m")
        found = _MONTH.fullmatch(text)
    assert found is not None
    start, end = ledger.month_bounds(int(found.group(1)), int(found.group(2)))
    return text, start, end


async def _target(request: web.Request) -> users.User:
    user = await users.by_id(state(request).pg, int_param(request, "user_id"))
    if user is None:
        raise web.HTTPNotFound()
    return user


async def _billing_page(request: web.Request, target: users.User, *, error: str | None = None,
                        status: int = 200) -> web.Response:  # fmt: skip
    st = state(request)
    month, start, end = _month(request)
    lines = await ledger.lines(st.pg, target.id, start, end)
    opening = await ledger.balance_before(st.pg, target.id, start)
    closing = lines[-1].balance_usd if lines else opening
    me = current_user(request)
    base = "/billing" if target.id == me.id else f"/admin/users/{target.id}/billing"
    balance = (await users.balance(st.pg, target.id) or (target.balance_usd, 0))[0]
    return render(request, "billing.html", {
        "title": "Billing", "target": target, "own": target.id == me.id, "base": base,
        "lines": list(reversed(lines)), "month": month, "months": await ledger.months(
            st.pg, target.id), "opening": opening, "closing": closing, "balance": balance,
        "stripe": stripe_enabled(st.settings), "error": error,
        "flash": await take_flash(request),
    }, status=status)  # fmt: skip


def _statement(lines: list[ledger.Line], filename: str) -> web.Response:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["date", "kind", "description", "amount_usd", "balance_usd"])
    for line in lines:
        writer.writerow([line.day.isoformat(), line.kind, line.description,
                         usd_str(line.amount_usd), usd_str(line.balance_usd)])  # fmt: skip
    return web.Response(
        text=out.getvalue(), content_type="text/csv", charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )  # fmt: skip


@login_required
async def billing_page(request: web.Request) -> web.StreamResponse:
    return await _billing_page(request, current_user(request))


@login_required
async def statement_csv(request: web.Request) -> web.StreamResponse:
    user = current_user(request)
    month, start, end = _month(request)
    lines = await ledger.lines(state(request).pg, user.id, start, end)
    return _statement(lines, f"meterway-statement-{month}.csv")


@admin_required
async def admin_billing_page(request: web.Request) -> web.StreamResponse:
    return await _billing_page(request, await _target(request))


@admin_required
async def admin_statement_csv(request: web.Request) -> web.StreamResponse:
    target = await _target(request)
    month, start, end = _month(request)
    lines = await ledger.lines(state(request).pg, target.id, start, end)
    return _statement(lines, f"meterway-statement-{target.id}-{month}.csv")


@login_required
async def redeem(request: web.Request) -> web.StreamResponse:
    st = state(request)
    user = current_user(request)
    form = await request.post()
    code = field(form, "code", codes.MAX_CODE_LENGTH + 1).strip()
    if not code:
        return await _billing_page(request, user, error="Enter a code.", status=400)
    try:
        result = await Redeemer(st.pg, st.redis, st.view).redeem(user.id, code)
    except RedeemRefused as exc:
        return await _billing_page(request, user, error=exc.message + ".", status=exc.status)
    async with st.pg.acquire() as conn:  # the user's own action, in the audit log (no code)
        source = await conn.fetchval(
            "SELECT external_id FROM ledger WHERE user_id = $1 AND external_id LIKE 'code:%'"
            " ORDER BY id DESC LIMIT 1", user.id)  # fmt: skip
        await audit.record(conn, user.email, "code.redeem", source or f"user:{user.email}",
                           None, {"user": user.email, "credited_usd": result.credited_usd,
                                  "balance_usd": result.balance_usd})  # fmt: skip
    await flash_redirect(request, "/billing", f"Code redeemed: {usd_str(result.credited_usd)}"
                         f" USD credited; balance {usd_str(result.balance_usd)} USD.")  # fmt: skip


# --- operators: batches of codes ---------------------------------------------------------------


async def _codes_page(request: web.Request, *, error: str | None = None, status: int = 200):
    page = page_number(request)
    # newest first; the table is small, so a page is the tail of the first page * n + 1
    rows = await codes.list_codes(state(request).pg, page * CODES_PAGE + 1)
    shown = rows[(page - 1) * CODES_PAGE : page * CODES_PAGE]
    return render(request, "admin_codes.html", {
        "title": "Redemption codes", "rows": shown, "error": error, "page": page,
        "more": len(rows) > page * CODES_PAGE, "query": {},
        "flash": await take_flash(request), "once": secrets.token_urlsafe(16),
    }, status=status)  # fmt: skip


@admin_required
async def codes_page(request: web.Request) -> web.StreamResponse:
    return await _codes_page(request)


@admin_required
async def codes_create(request: web.Request) -> web.StreamResponse:
    """Makes a batch and answers it as a CSV download: the codes exist only in
    this one response (only their hashes are stored)."""
    st = state(request)
    form = await request.post()
    note = field(form, "note", 501).strip() or None
    try:
        amount = parse_amount(field(form, "amount_usd", 40), "Amount", negative=False)
        assert amount is not None
        if amount <= 0:
            raise FormError("Amount must be above 0")
        count_text = field(form, "count", 10).strip() or "1"
        if (
            not count_text.isascii()
            or not count_text.isdigit()
            or not (1 <= int(count_text) <= MAX_BATCH)
        ):
            raise FormError(f"Count must be a whole number from 1 to {MAX_BATCH}")
        expires_at = _expiry(field(form, "expires_at", 60).strip())
        if note is not None and (len(note) > 500 or has_control(note)):
            raise FormError("The note must be at most 500 characters, no control characters")
    except FormError as exc:
        return await _codes_page(request, error=str(exc), status=400)
    once = field(form, "once", 100)
    if once and not await st.redis.set(
        redis_keys.dashboard_form_once(once), 1, nx=True, ex=24 * 3600
    ):  # the same form sent again: no second batch
        return await _codes_page(request, error="That batch was already made and downloaded.")
    operator = current_user(request)
    async with st.pg.acquire() as conn, conn.transaction():
        made = await codes.create_batch(conn, amount, int(count_text), expires_at=expires_at,
                                        note=note, created_by=operator.email)  # fmt: skip
        await audit.record(conn, operator.email, "code.create", audit.codes_subject(made), None,
                           audit.codes_after(made, amount, expires_at, note))  # fmt: skip
    log.info("codes_created", by=operator.id, count=len(made), amount_usd=str(amount))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "code", "amount_usd", "expires_at", "note"])
    for code_id, code in made:
        writer.writerow([code_id, code, usd_str(amount),
                         expires_at.isoformat() if expires_at else "", note or ""])  # fmt: skip
    return web.Response(
        text=out.getvalue(), content_type="text/csv", charset="utf-8",
        headers={"Content-Disposition":
                 f'attachment; filename="meterway-codes-{made[0][0]}-{made[-1][0]}.csv"'},
    )  # fmt: skip


def _expiry(text: str) -> datetime | None:
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise FormError("Expiry must be a date and time such as 2026-12-31T23:59") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # the form's datetime-local field: taken as UTC
    if when <= datetime.now(UTC):
        raise FormError("Expiry is in the past")
    return when
