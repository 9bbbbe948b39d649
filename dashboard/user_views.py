"""Pages for every signed-in user: API keys, usage (table, chart, CSV), settings.

Every query is scoped to the signed-in user's id; another user's key is a 404.
"""

from __future__ import annotations

import csv
import io
import re
import secrets
from datetime import date

from aiohttp import web

from dashboard import key_controls
from dashboard.chart import spend_chart
from dashboard.common import (
    FormError,
    confirmed,
    current_user,
    field,
    flash_redirect,
    has_control,
    int_param,
    login_required,
    parse_amount,
    query_text,
    render,
    state,
    take_flash,
)
from shared import daily, invalidation, redis_keys
from shared.db import api_keys, users
from shared.db import dashboard as q
from shared.db import usage as db_usage
from shared.keys import hash_proxy_key, new_proxy_key, visible_prefix
from shared.money import units_to_usd, usd_str

PAGE_SIZE = 50
CSV_LIMIT = 100_000
MAX_PAGE = 1_000_000  # beyond any real history; keeps the OFFSET a small integer
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_PAGE = re.compile(r"[0-9]{1,12}")


@login_required
async def home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/usage")


async def _keys_page(request: web.Request, new_key: str | None = None, error: str | None = None,
                     status: int = 200) -> web.Response:  # fmt: skip
    user = current_user(request)
    keys = await api_keys.list_for_user(state(request).pg, user.id)
    keys.sort(key=lambda k: (k.revoked_at is not None, -k.id))
    return render(request, "keys.html", {"title": "API keys", "new_key": new_key,
                  "rows": await key_controls.key_rows(request, keys),
                  "models": key_controls.catalog_models(request),
                  "error": error, "flash": await take_flash(request),
                  "once": secrets.token_urlsafe(16)}, status=status)  # fmt: skip


@login_required
async def keys_list(request: web.Request) -> web.StreamResponse:
    return await _keys_page(request)


@login_required
async def key_create(request: web.Request) -> web.StreamResponse:
    user = current_user(request)
    form = await request.post()
    name = field(form, "name", 81).strip()
    if not name or len(name) > 80 or has_control(name):
        return await _keys_page(request, error="Give the key a name (at most 80 characters,"
                                " no control characters).", status=400)  # fmt: skip
    try:
        controls = key_controls.parse_create(form, key_controls.catalog_models(request))
    except FormError as exc:
        return await _keys_page(request, error=str(exc), status=400)
    once = field(form, "once", 100)
    if once and not await state(request).redis.set(
        redis_keys.dashboard_form_once(once), 1, nx=True, ex=24 * 3600
    ):  # the same form sent again (a reload): no second key
        return await _keys_page(request, error="That key was already created and shown once.")
    secret = new_proxy_key()
    await api_keys.create(state(request).pg, user.id, hash_proxy_key(secret),
                          visible_prefix(secret), name=name, **controls)  # fmt: skip
    # Shown in this response only; never stored or shown again.
    return await _keys_page(request, new_key=secret)


@login_required
async def key_revoke(request: web.Request) -> web.StreamResponse:
    user = current_user(request)
    st = state(request)
    key = await api_keys.get(st.pg, int_param(request, "key_id"))
    if key is None or key.user_id != user.id:
        raise web.HTTPNotFound()
    if key.revoked_at is None:
        _, page = confirmed(
            request, await request.post(), title=f"Revoke key {key.name} ({key.prefix}…)?",
            message="Every request with this key gets 401 from now on; this cannot be undone.",
            button="Revoke key", back="/keys", reason_required=False,
        )  # fmt: skip
        if page is not None:
            return page
    key_hash = await api_keys.hash_of(st.pg, key.id)
    assert key_hash is not None
    await api_keys.revoke_by_hash(st.pg, key_hash)
    await st.notify(invalidation.key_message(key_hash))
    await flash_redirect(request, "/keys", f"Key {key.name} ({key.prefix}…) revoked.")


@login_required
async def key_controls_save(request: web.Request) -> web.StreamResponse:
    """The owner sets or clears a key's budget, models and expiry (a blank field clears)."""
    user = current_user(request)
    key = await api_keys.get(state(request).pg, int_param(request, "key_id"))
    if key is None or key.user_id != user.id:
        raise web.HTTPNotFound()
    if key.revoked_at is not None:
        return await _keys_page(request, error="That key is revoked.", status=400)
    form = await request.post()
    try:
        changes = key_controls.parse_controls(
            form, key_controls.catalog_models(request), with_rates=False
        )
    except FormError as exc:
        return await _keys_page(request, error=str(exc), status=400)
    await key_controls.apply(request, key, changes)
    await flash_redirect(request, "/keys", f"Limits of {key.name} ({key.prefix}…) saved.")


def _filters(request: web.Request) -> tuple[date | None, str | None, str | None]:
    day_text = query_text(request, "day", 40).strip()
    model = query_text(request, "model", 200).strip() or None
    day = None
    if day_text:
        try:
            if not _DAY.fullmatch(day_text):
                raise ValueError(day_text)
            day = date.fromisoformat(day_text)
            if not 1 <= day.year <= 9998:  # a day with a next day (the query's end)
                raise ValueError(day_text)
        except ValueError:
            return None, model, "The day must look like 2026-01-31."
    return day, model, None


def _page(request: web.Request) -> int:
    """The page asked for, clamped to 1..MAX_PAGE (anything not a number is page 1)."""
    text = request.query.get("page", "1").strip()
    return min(MAX_PAGE, max(1, int(text))) if _PAGE.fullmatch(text) else 1


@login_required
async def usage(request: web.Request) -> web.StreamResponse:
    user = current_user(request)
    st = state(request)
    day, model, error = _filters(request)
    page = _page(request)
    rows, total = await q.usage_page(st.pg, user.id, day=day, model=model, limit=PAGE_SIZE,
                                     offset=(page - 1) * PAGE_SIZE)  # fmt: skip
    if page > max(1, -(-total // PAGE_SIZE)):  # past the end: show the last page
        page = max(1, -(-total // PAGE_SIZE))
        rows, total = await q.usage_page(st.pg, user.id, day=day, model=model, limit=PAGE_SIZE,
                                         offset=(page - 1) * PAGE_SIZE)  # fmt: skip
    held = units_to_usd(await st.view.held_units(user.id))
    fresh = await users.by_id(st.pg, user.id)
    assert fresh is not None
    today = daily.today()
    points = await q.daily_spend(st.pg, user.id, 30, today)
    return render(request, "usage.html", {
        "title": "Usage", "rows": rows, "total": total, "page": page,
        "pages": max(1, -(-total // PAGE_SIZE)), "day": day.isoformat() if day else "",
        "model": model or "", "models": await q.usage_models(st.pg, user.id), "error": error,
        "balance": fresh.balance_usd, "held": held, "available": fresh.balance_usd - held,
        "spend_today": await _spend_today(request, user.id), "chart": spend_chart(points),
        "month_total": sum((v for _, v in points)),
    }, status=400 if error else 200)  # fmt: skip


async def _spend_today(request: web.Request, user_id: int):
    """The daily counter the proxy reads; Postgres when Redis has none (as /v1/account)."""
    st = state(request)
    if await st.redis.exists(daily.counter_key("user", user_id)):
        return await daily.spend(st.redis, "user", user_id)
    return await db_usage.spend_since(st.pg, user_id, db_usage.start_of_utc_day())


CSV_FIELDS = ["request_id", "created_at", "provider", "model", "endpoint", "stream",
              "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
              "cost_usd", "estimated", "status"]  # fmt: skip


@login_required
async def usage_csv(request: web.Request) -> web.StreamResponse:
    user = current_user(request)
    day, model, error = _filters(request)
    if error:
        raise web.HTTPBadRequest(text=error)
    rows, _ = await q.usage_page(state(request).pg, user.id, day=day, model=model,
                                 limit=CSV_LIMIT, offset=0)  # fmt: skip
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for r in rows:
        writer.writerow([
            r["request_id"], r["created_at"].isoformat(), r["provider"], r["model"],
            r["endpoint"], str(r["stream"]).lower(), r["input_tokens"], r["output_tokens"],
            r["cache_read_tokens"], r["cache_write_tokens"], usd_str(r["cost_usd"]),
            str(r["estimated"]).lower(), r["status"],
        ])  # fmt: skip
    name = f"meterway-usage-{day.isoformat() if day else 'all'}.csv"
    return web.Response(
        text=out.getvalue(), content_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )  # fmt: skip


@login_required
async def settings_page(request: web.Request) -> web.StreamResponse:
    return render(request, "settings.html", {"title": "Alerts", **_session_facts(request),
                  "flash": await take_flash(request)})  # fmt: skip


def _session_facts(request: web.Request) -> dict:
    hours = state(request).settings.dashboard_session_max_hours
    return {"session_hours": f"{hours:g}"}


@login_required
async def settings_save(request: web.Request) -> web.StreamResponse:
    user = current_user(request)
    st = state(request)
    form = await request.post()
    try:
        fields = {
            name: parse_amount(field(form, name), label, allow_blank=True, negative=False)
            for name, label in (("daily_alert_usd", "Daily alert"),
                                ("low_balance_usd", "Low balance alert"))
        }  # fmt: skip
    except FormError as exc:
        return render(request, "settings.html", {"title": "Alerts", "error": str(exc),
                      **_session_facts(request)}, status=400)  # fmt: skip
    await users.update(st.pg, user.id, **fields)
    await st.notify(invalidation.user_message(user.id))
    await flash_redirect(request, "/settings", "Alert settings saved.")
