"""Atomic holds against a user's available balance, placed before upstream.

The hold is one Lua script (shared.balance_view). When Redis has no view of
the user's balance yet (first request, or Redis was flushed), it is loaded
from Postgres once and the hold is tried again.
"""

from __future__ import annotations

import asyncpg

from shared.balance_view import BalanceView, HoldResult, RateLimit
from shared.db import users


class Holds:
    def __init__(self, view: BalanceView, pool: asyncpg.Pool, ttl_seconds: int) -> None:
        self.view = view
        self._pool = pool
        self._ttl_ms = ttl_seconds * 1000

    async def place(
        self, user_id: int, request_id: str, units: int, limit: RateLimit | None = None
    ) -> HoldResult:
        result = await self.view.hold(user_id, request_id, units, self._ttl_ms, limit)
        if result.missing_view:
            await self.load_view(user_id)
            result = await self.view.hold(user_id, request_id, units, self._ttl_ms, limit)
        return result

    async def release(self, user_id: int, request_id: str) -> None:
        await self.view.release(user_id, request_id)

    async def load_view(self, user_id: int) -> None:
        found = await users.balance(self._pool, user_id)
        if found is not None:
            await self.view.publish(user_id, found[0], found[1])
