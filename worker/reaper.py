"""Releases holds whose request never reported back, and keeps a record of them.

A hold expires when its proxy died mid-request (a finished request turns its
hold into a pending charge that does not expire). Policy: such an orphaned
request is not billed, because nothing is known of what upstream did; its hold
is released and recorded in `orphaned_holds` (and logged) for the operator.
"""

from __future__ import annotations

import asyncpg
import structlog
from redis.asyncio import Redis

from shared import redis_keys
from shared.balance_view import BalanceView
from shared.money import units_to_usd

log = structlog.get_logger("meterway.reaper")


async def reap_orphaned_holds(
    redis: Redis, pg: asyncpg.Pool, view: BalanceView | None = None
) -> int:
    """Every user's hold-expiry set (on a cluster, SCAN visits every master)."""
    view = view or BalanceView(redis)
    released = 0
    async for key in redis.scan_iter(match=redis_keys.HOLD_EXPIRY_PATTERN, count=1000):
        user_id = redis_keys.user_id_of(key)
        for request_id, units in await view.reap_expired(user_id):
            await pg.execute(
                "INSERT INTO orphaned_holds (request_id, user_id, held_usd) VALUES ($1, $2, $3)"
                " ON CONFLICT (request_id) DO NOTHING",
                request_id,
                user_id,
                units_to_usd(units),
            )
            log.warning("orphaned_hold_released", request_id=request_id, user_id=user_id)
            released += 1
    return released
