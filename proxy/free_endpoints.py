"""Endpoints forwarded free (contract section 5): an adapter with `billed = False`.

The key is checked as for a metered path (401, expiry), the model must be in the
catalog (400) and allowed for the key (403), the provider must be serving
(paused: 429, no keys: 503), and the request counts against the key's requests
per minute (not its tokens per minute) in the window metered requests share.
Then the body goes upstream as given, through the relay and its key-pool
failover. No hold, no usage event, never billed: a user without credit is
served too.
"""

from __future__ import annotations

import weakref

import structlog
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from proxy.errors import ProxyError
from proxy.handlers import admit, billing_store_unavailable
from proxy.key_controls import rate_limit_of, seconds_to_next_minute
from proxy.providers import Adapter
from proxy.relay import Relay
from proxy.routes import Call
from proxy.state import Gateway
from shared.balance_view import RequestCounter

log = structlog.get_logger("meterway.proxy")

# one counter (its registered script) per Redis client of a running proxy
_COUNTERS: weakref.WeakKeyDictionary[Redis, RequestCounter] = weakref.WeakKeyDictionary()


def is_billed(adapter: Adapter) -> bool:
    return getattr(adapter, "billed", True)


async def serve_free(
    gw: Gateway, request: web.Request, call: Call, request_id: str
) -> web.StreamResponse:
    owner, body, raw, _, _ = await admit(gw, request, call)
    limit = rate_limit_of(owner)
    if limit is not None and limit.rpm:
        try:
            counted = await _counter(gw).count(limit)
        except RedisError as exc:  # the key's limit cannot be kept: refused, as when metered
            raise billing_store_unavailable(exc) from exc
        if not counted:
            raise ProxyError(
                429,
                f"Rate limit reached: {limit.rpm} requests per minute for this API key",
                code="rate_limit_exceeded",
                retry_after=seconds_to_next_minute(),
            )
    prepared = call.adapter.prepare(body, raw)
    result = await Relay(gw, request, call, prepared, request_id).run()
    return result.response


def _counter(gw: Gateway) -> RequestCounter:
    counter = _COUNTERS.get(gw.redis)
    if counter is None:
        counter = _COUNTERS[gw.redis] = RequestCounter(gw.redis)
    return counter
