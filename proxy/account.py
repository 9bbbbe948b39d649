"""`/v1/account` and `/v1/account/usage`: the caller's balance and usage."""

from __future__ import annotations

from aiohttp import web

from proxy.errors import ProxyError
from proxy.handlers import authenticate
from proxy.state import GATEWAY, REQUEST_ID
from shared.db import usage as db_usage
from shared.money import units_to_usd, usd_str

MAX_USAGE_LIMIT = 1000
_LIMIT_RULE = f"limit must be an integer from 1 to {MAX_USAGE_LIMIT}"


def _json(data: object, request_id: str) -> web.Response:
    return web.json_response(data, headers={"x-request-id": request_id})


async def account(request: web.Request) -> web.Response:
    """One consistent snapshot (contract section 9): the balance and today's
    spend come from one Postgres statement; what is held from Redis."""
    gw = request.app[GATEWAY]
    request_id = request[REQUEST_ID]
    owner = await authenticate(gw, request, allow_x_api_key=True)
    found = await db_usage.account_snapshot(gw.pg, owner.user_id, db_usage.start_of_utc_day())
    assert found is not None  # the key's owner was found a moment ago
    user_id, email, balance, spend_today = found
    held = units_to_usd(await gw.holds.view.held_units(owner.user_id))
    return _json(
        {
            "user_id": user_id,
            "email": email,
            "balance_usd": usd_str(balance),
            "held_usd": usd_str(held),
            "available_usd": usd_str(balance - held),
            "spend_today_usd": usd_str(spend_today),
        },
        request_id,
    )


async def account_usage(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    request_id = request[REQUEST_ID]
    owner = await authenticate(gw, request, allow_x_api_key=True)
    limit = _limit(request.query.get("limit"))
    rows = await db_usage.recent_for_user(gw.pg, owner.user_id, limit)
    data = [
        {
            "request_id": r["request_id"],
            "created_at": r["created_at"].isoformat(),
            "provider": r["provider"],
            "model": r["model"],
            "endpoint": r["endpoint"],
            "stream": r["stream"],
            "input_tokens": r["input_tokens"],
            "output_tokens": r["output_tokens"],
            "cache_read_tokens": r["cache_read_tokens"],
            "cache_write_tokens": r["cache_write_tokens"],
            "cost_usd": usd_str(r["cost_usd"]),
            "estimated": r["estimated"],
            "status": r["status"],
            "web_search_calls": r["web_search_calls"],
            "service_tier": r["service_tier"],
        }
        for r in rows
    ]
    return _json({"data": data}, request_id)


def _limit(raw: str | None) -> int:
    """`?limit=N`: plain ASCII digits only (no sign, exponent, spaces or other scripts)."""
    if raw is None:
        return 50
    if not (0 < len(raw) <= 4 and raw.isascii() and raw.isdigit()):
        raise ProxyError(400, _LIMIT_RULE, code="invalid_limit")
    limit = int(raw)
    if not 1 <= limit <= MAX_USAGE_LIMIT:
        raise ProxyError(400, _LIMIT_RULE, code="invalid_limit")
    return limit
