"""Pages for every signed-in user: API keys, usage (table, chart, CSV), settings.

Every query is scoped to the signed-in user's id; another user's key is a 404.
"""

from __future__ import annotations

import csv
import io
import re
import secrets
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

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
from shared.db import api_keys, audit, users
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
    async with state(request).pg.acquire() as conn, conn.transaction():
        key = await api_keys.create(conn, user.id, hash_proxy_key(secret),
                                    visible_prefix(secret), name=name, **controls)  # fmt: skip
        await audit.record(conn, user.email, "key.create", f"key:{key.id}", None,
                           {**audit.key_fields(key), "user": user.email})  # fmt: skip
    # Shown in this response only; never stored or shown again.
    return await _keys_page(request, new_key=secret)


@login_required
async def key_revoke(request: web.Request) -> web.StreamResponse:
    user = current_user(request)
    st = state(request)
    key = await api_keys.get(st.pg, int_param(request, "key_id"))
    if key is None or key.user_id != user.id:
        raise web.HTTPNotFound()
    if key.revoked_at is not None:
        await flash_redirect(
            request, "/keys", f"Key {key.name} ({key.prefix}…) was revoked already."
        )
    reason, page = confirmed(
        request, await request.post(), title=f"Revoke key {key.name} ({key.prefix}…)?",
        message="Every request with this key gets 401 from now on; this cannot be undone.",
        button="Revoke key", back="/keys", reason_required=False,
    )  # fmt: skip
    if page is not None:
        return page
    key_hash = await api_keys.hash_of(st.pg, key.id)
    assert key_hash is not None
    async with st.pg.acquire() as conn, conn.transaction():
        await api_keys.revoke_by_hash(conn, key_hash)
        after = await api_keys.get(conn, key.id)
        await audit.record(conn, user.email, "key.revoke", f"key:{key.id}",
                           {**audit.key_fields(key), "user": user.email},
                           {**audit.key_fields(after), "user": user.email}, reason)  # fmt: skip
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
    await key_controls.apply(request, key, changes, actor=user.email)
    await flash_redirect(request, "/keys", f"Limits of {key.name} ({key.prefix}…) saved.")


def _parse_day(text: str) -> date:
    if not _DAY.fullmatch(text):
        raise ValueError(text)
    day = date.fromisoformat(text)
    if not 1 <= day.year <= 9998:  # a day with a next day (the query's end)
        raise ValueError(text)
    return day


@dataclass(slots=True)
class Filters:
    start: date | None = None
    end: date | None = None
    model: str | None = None
    key_id: int | None = None
    error: str | None = None

    def query(self) -> dict[str, str]:
        """The filter as query parameters (for links: paging, CSV, breakdown rows)."""
        q = {"from": self.start.isoformat() if self.start else "",
             "to": self.end.isoformat() if self.end else "", "model": self.model or "",
             "key": str(self.key_id) if self.key_id is not None else ""}  # fmt: skip
        return {k: v for k, v in q.items() if v}


def _filters(request: web.Request) -> Filters:
    """From/to days (or `day`, both at once), a model and an API key id."""
    f = Filters(model=query_text(request, "model", 200).strip() or None)
    key_text = query_text(request, "key", 20).strip()
    if key_text:
        if key_text.isascii() and key_text.isdigit() and len(key_text) <= 18:
            f.key_id = int(key_text)
        else:
            f.error = "Choose a key from the list."
    day_text = query_text(request, "day", 40).strip()
    texts = (
        (day_text, day_text)
        if day_text
        else (query_text(request, "from", 40).strip(), query_text(request, "to", 40).strip())
    )
    try:
        f.start = _parse_day(texts[0]) if texts[0] else None
        f.end = _parse_day(texts[1]) if texts[1] else None
    except ValueError:
        f.start = f.end = None
        f.error = "The day must look like 2026-01-31."
    return f


def _page(request: web.Request) -> int:
    """The page asked for, clamped to 1..MAX_PAGE (anything not a number is page 1)."""
    text = request.query.get("page", "1").strip()
    return min(MAX_PAGE, max(1, int(text))) if _PAGE.fullmatch(text) else 1


def _key_label(name: str | None, prefix: str | None, key_id: int | None) -> str:
    if key_id is None:
        return "(no key)"
    return f"{name or '(unnamed)'} ({prefix}…)" if prefix else f"key {key_id} (deleted)"


DEFAULT_DAYS = 30
CHART_DAYS = 92


def _back(day: date, days: int) -> date:
    """`days` before `day`, or the first day there is."""
    return day - timedelta(days=days) if day.toordinal() > days else date.min


@login_required
async def usage(request: web.Request) -> web.StreamResponse:
    """Without dates the page covers the last 30 days (UTC): the totals per model,
    key and day and the request list come from one pass over those records."""
    user = current_user(request)  # read at this request by the session middleware
    st = state(request)
    f = _filters(request)
    today = daily.today()
    if f.start is None and f.end is None and not f.error:
        f.start = today - timedelta(days=DEFAULT_DAYS - 1)
    page = _page(request)
    scope = {"start": f.start, "end": f.end, "model": f.model, "key_id": f.key_id}
    summary = await q.usage_summary(st.pg, user.id, **scope)
    pages = max(1, -(-summary.requests // PAGE_SIZE))
    page = min(page, pages)  # past the end: the last page
    rows = await q.usage_rows(st.pg, user.id, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE,
                              **scope)  # fmt: skip
    held = units_to_usd(await st.view.held_units(user.id))
    last = min(f.end or today, today)
    first = max(f.start or _back(last, DEFAULT_DAYS - 1), _back(last, CHART_DAYS - 1))
    first = min(first, last)
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    points = [(d, summary.by_day.get(d, Decimal(0))) for d in days]
    keys = await api_keys.list_for_user(st.pg, user.id)
    names = {k.id: k for k in keys}
    key_rows = []
    for r in summary.by_key:
        k = names.get(r["api_key_id"])
        label = _key_label(k.name if k else None, k.prefix if k else None, r["api_key_id"])
        key_rows.append({**r, "label": label})
    used = {r["model"] for r in summary.by_model} | ({f.model} if f.model else set())
    models = sorted(set(key_controls.catalog_models(request)) | used)
    return render(request, "usage.html", {
        "title": "Usage", "rows": rows, "total": summary.requests, "page": page,
        "pages": pages, "f": f, "query": f.query(), "model": f.model or "", "models": models,
        "keys": sorted(keys, key=lambda k: (k.revoked_at is not None, k.name, k.id)),
        "error": f.error, "by_model": summary.by_model, "by_key": key_rows,
        "model_top": max((r["spend"] for r in summary.by_model), default=0),
        "key_top": max((r["spend"] for r in key_rows), default=0),
        "balance": user.balance_usd, "held": held, "available": user.balance_usd - held,
        "spend_today": await _spend_today(request, user.id), "chart": spend_chart(points),
        "chart_days": len(points), "range_total": summary.spend,
        "default_range": not request.query.get("from") and not request.query.get("to")
        and not request.query.get("day"),
    }, status=400 if f.error else 200)  # fmt: skip


async def _spend_today(request: web.Request, user_id: int):
    """The daily counter the proxy reads; Postgres when Redis has none (as /v1/account)."""
    st = state(request)
    if await st.redis.exists(daily.counter_key("user", user_id)):
        return await daily.spend(st.redis, "user", user_id)
    return await db_usage.spend_since(st.pg, user_id, db_usage.start_of_utc_day())


CSV_FIELDS = ["request_id", "created_at", "api_key_id", "api_key_name", "provider", "model",
              "endpoint", "stream",
              "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
              "cost_usd", "estimated", "status"]  # fmt: skip


@login_required
async def usage_csv(request: web.Request) -> web.StreamResponse:
    user = current_user(request)
    f = _filters(request)
    if f.error:
        raise web.HTTPBadRequest(text=f.error)
    rows, _ = await q.usage_page(state(request).pg, user.id, start=f.start, end=f.end,
                                 model=f.model, key_id=f.key_id, limit=CSV_LIMIT,
                                 offset=0)  # fmt: skip
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for r in rows:
        writer.writerow([
            r["request_id"], r["created_at"].isoformat(), r["api_key_id"] or "",
            r["key_name"] or "", r["provider"], r["model"],
            r["endpoint"], str(r["stream"]).lower(), r["input_tokens"], r["output_tokens"],
            r["cache_read_tokens"], r["cache_write_tokens"], usd_str(r["cost_usd"]),
            str(r["estimated"]).lower(), r["status"],
        ])  # fmt: skip
    span = "-".join(d.isoformat() for d in dict.fromkeys(x for x in (f.start, f.end) if x))
    name = f"meterway-usage-{span or 'all'}.csv"
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
    before = audit.user_fields(user, fields)
    changed = {k: v for k, v in fields.items() if before[k] != v}
    async with st.pg.acquire() as conn, conn.transaction():
        await users.update(conn, user.id, **fields)
        if changed:  # the user's own change, with the user as the actor
            await audit.record(conn, user.email, "user.set", f"user:{user.email}",
                               {k: before[k] for k in changed}, changed)  # fmt: skip
    await st.notify(invalidation.user_message(user.id))
    await flash_redirect(request, "/settings", "Alert settings saved.")
