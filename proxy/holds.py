"""Atomic holds against a user's available balance, placed before upstream.

The hold is one Lua script (shared.balance_view). When Redis has no view of
the user's balance yet (first request, or Redis was flushed), it is loaded
from Postgres once and the hold is tried again.

A hold expires `HOLD_TTL_SECONDS` after it was placed, so that the hold of a
request whose proxy died is released by the reaper. A request still running
(a long stream, a slow client) keeps its hold: one sweep per process moves the
expiry of every live hold forward, a quarter of the TTL before it is due.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from datetime import UTC, datetime

import asyncpg
import structlog
from redis.exceptions import RedisError

from shared.balance_view import BalanceView, HoldResult, KeyBudget, RateLimit
from shared.db import api_keys, users
from shared.money import units_ceil

log = structlog.get_logger("meterway.holds")


class Holds:
    def __init__(self, view: BalanceView, pool: asyncpg.Pool, ttl_seconds: int) -> None:
        self.view = view
        self._pool = pool
        self._ttl_ms = ttl_seconds * 1000
        self._live: dict[str, int] = {}  # request id -> user id, for requests running here
        self._keeper: asyncio.Task | None = None

    async def place(
        self,
        user_id: int,
        request_id: str,
        units: int,
        limit: RateLimit | None = None,
        budget: KeyBudget | None = None,
    ) -> HoldResult:
        """One script call; when Redis lacks the user's balance view or the key's
        period spend (first use, a flush, a new period), it is loaded from
        Postgres and the hold tried again."""
        for _ in range(3):
            result = await self.view.hold(user_id, request_id, units, self._ttl_ms, limit, budget)
            if result.missing_view:
                await self.load_view(user_id)
            elif result.missing_key_spend and budget is not None:
                await self.load_key_spend(user_id, budget)
            else:
                break
        return result

    async def release(self, user_id: int, request_id: str) -> None:
        await self.view.release(user_id, request_id)

    async def load_view(self, user_id: int) -> None:
        found = await users.balance(self._pool, user_id)
        if found is not None:
            await self.view.publish(user_id, found[0], found[1])

    async def load_key_spend(self, user_id: int, budget: KeyBudget) -> None:
        """The key's settled spend in the budget's period, exact from Postgres,
        rounded up to whole units (never understated). It is taken only at the
        balance version it was read at; when the view is at another one, the
        balance is published first (the view is behind) or read again (a
        settlement landed meanwhile)."""
        at = budget.at or datetime.now(UTC)
        for _ in range(3):
            found = await api_keys.spend_and_version(self._pool, budget.key_id, budget.kind, at)
            if found is None:
                return
            spent, version = found
            if await self.view.load_key_spend(user_id, budget, units_ceil(spent), version) >= 0:
                return
            await self.load_view(user_id)  # publishes only a newer version

    # --- keeping the holds of running requests --------------------------------------

    def keep(self, user_id: int, request_id: str) -> None:
        """The request is running: its hold must not expire until `forget`."""
        self._live[request_id] = user_id
        if self._keeper is None:
            self._keeper = asyncio.get_running_loop().create_task(self._keep_live_holds())

    def forget(self, request_id: str) -> None:
        self._live.pop(request_id, None)

    @property
    def sweep_seconds(self) -> float:
        return max(self._ttl_ms / 4000, 0.25)

    async def extend_live(self) -> None:
        """Move the expiry of every live hold to a full TTL from now."""
        by_user: dict[int, list[str]] = defaultdict(list)
        for request_id, user_id in list(self._live.items()):
            by_user[user_id].append(request_id)
        if by_user:
            await self.view.extend_holds(by_user, self._ttl_ms)

    async def _keep_live_holds(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_seconds)
            try:
                await self.extend_live()
            except RedisError as exc:  # the next sweep tries again, well before expiry
                log.warning("hold_extension_failed", error=str(exc))

    async def close(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
            self._keeper = None
