"""A bill end to end: the usage search across users (by user, key, model, day
range and request id) and one request's detail, for operators; a user sees the
detail of their own requests."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from aiohttp import web

from dashboard.common import (
    admin_required,
    current_user,
    login_required,
    page_number,
    query_text,
    render,
    state,
)
from shared.catalog import load_catalog
from shared.db import usage_search as search

PAGE = 50
DEFAULT_DAYS = 30
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_REQUEST_ID = re.compile(r"[A-Za-z0-9_.:-]{1,200}")


def _day(request: web.Request, name: str) -> date | None:
    text = query_text(request, name, 10).strip()
    if not _DAY.fullmatch(text):
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


@admin_required
async def usage_search(request: web.Request) -> web.StreamResponse:
    st = state(request)
    f = {n: query_text(request, n, 200).strip()
         for n in ("user", "key", "model", "from", "to", "request_id")}  # fmt: skip
    start, end = _day(request, "from"), _day(request, "to")
    request_id = f["request_id"] if _REQUEST_ID.fullmatch(f["request_id"]) else ""
    default_range = start is None and end is None and not request_id
    if default_range:  # without dates: the last 30 days (UTC)
        start = datetime.now(UTC).date() - timedelta(days=DEFAULT_DAYS - 1)
    ids = await search.matching_users(st.pg, f["user"]) if f["user"] else None
    where, args = search.usage_search_filter(
        user=f["user"] if f["user"] and ids is None else None, user_ids=ids,
        key=f["key"] or None, model=f["model"] or None,
        start=start, end=end, request_id=request_id or None,
    )  # fmt: skip
    page = page_number(request)
    narrow = bool(f["user"] or f["key"] or f["model"] or request_id or not default_range)
    rows = await search.usage_search(st.pg, where, args, limit=PAGE + 1, offset=(page - 1) * PAGE,
                                by_time=bool(f["user"] or f["key"]))  # fmt: skip
    # the totals read every matching record: for a filter, not for all users' last 30 days
    totals = await search.usage_search_totals(st.pg, where, args) if narrow else None
    if request_id and len(rows) == 1:  # a request id from a support ticket: straight to it
        raise web.HTTPSeeOther(f"/admin/requests/{request_id}")
    return render(request, "admin_usage.html", {
        "title": "Usage search", "rows": rows[:PAGE], "more": len(rows) > PAGE, "page": page,
        "filters": f, "totals": totals, "query": {k: v for k, v in f.items() if v},
        "default_range": default_range,
    })  # fmt: skip


def _pricing(request: web.Request, record: Any) -> dict[str, Any] | None:
    """The catalog's prices for the record's model (per million tokens) and the
    multipliers, with each kind's share of the cost (exact)."""
    try:
        model = load_catalog(state(request).settings.model_catalog).get(record["model"])
    except ValueError:
        return None
    if model is None:
        return None
    tier = record.get("service_tier") if hasattr(record, "get") else None
    prices = model.prices(tier, int(record["input_tokens"]))
    cache_read, cache_write = int(record["cache_read_tokens"]), int(record["cache_write_tokens"])
    write_1h = int(record["cache_write_1h_tokens"])
    uncached = int(record["input_tokens"]) - cache_read - cache_write
    factor = Decimal(record["user_rate_multiplier"]) * model.multiplier
    lines = [
        ("Uncached input", uncached, prices.input),
        ("Cache read", cache_read, prices.cache_read),
        ("Cache write (5 min)", cache_write - write_1h, prices.cache_write),
        ("Cache write (1 h)", write_1h, prices.cache_write_1h),
        ("Output", int(record["output_tokens"]), prices.output),
    ]
    items = [
        {"kind": kind, "tokens": n, "price": price, "cost": n * price / Decimal(1_000_000)}
        for kind, n, price in lines
        if n or kind in ("Uncached input", "Output")
    ]
    return {"items": items, "model_multiplier": model.multiplier,
            "rate_multiplier": record["user_rate_multiplier"], "factor": factor,
            "at_current": sum((i["cost"] for i in items), Decimal(0)) * factor}  # fmt: skip


async def _detail(request: web.Request, *, own: bool) -> web.StreamResponse:
    request_id = request.match_info["request_id"]
    if not _REQUEST_ID.fullmatch(request_id):
        raise web.HTTPNotFound()
    st = state(request)
    record = await search.request_detail(st.pg, request_id)
    if record is None or (own and record["user_id"] != current_user(request).id):
        raise web.HTTPNotFound()
    return render(request, "request_detail.html", {
        "title": f"Request {request_id}", "r": record, "own": own,
        "pricing": _pricing(request, record),
        "charge": await search.ledger_charge(st.pg, request_id),
    })  # fmt: skip


@admin_required
async def request_detail(request: web.Request) -> web.StreamResponse:
    return await _detail(request, own=False)


@login_required
async def own_request_detail(request: web.Request) -> web.StreamResponse:
    return await _detail(request, own=True)
