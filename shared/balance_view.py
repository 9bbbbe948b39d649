"""The Redis view of balances and holds, and the Python side of its scripts.

Postgres is the source of truth. Redis keeps, per user, the settled balance in
integer nano-USD with the Postgres `balance_version` it came from, the total
held, one entry per open hold with its expiry, and for API keys with a budget
their open holds and settled spend per period. Every change is one Lua script
(shared.balance_scripts), so a hold is placed against `available = balance -
holds` and the key's budget atomically.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from redis.asyncio import Redis

from shared import balance_scripts as lua
from shared import redis_keys
from shared.cluster_runner import ClusterScriptRunner
from shared.money import units_floor
from shared.redis_client import is_cluster
from shared.script_runner import LuaScript, ScriptRunner

# The largest hold or balance the scripts take: 1e9 USD in nano-USD, inside
# int64 for HINCRBY (balances are kept below 1e9 USD where they are changed).
MAX_UNITS = 10**18

# request ids per script call: far below Lua's limit on unpack() arguments
_PUBLISH_MANY_CHUNK = 1000


@dataclass(frozen=True, slots=True)
class HoldResult:
    placed: bool
    missing_view: bool
    available_units: int  # the balance's room, or the budget's when over_budget
    rate_limited: str | None = None  # "requests" or "tokens" per minute
    missing_key_spend: bool = False  # the key's period spend must be loaded first
    over_budget: bool = False


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A key's per-minute limits and the Redis window they are counted in."""

    window_key: str
    rpm: int | None
    tpm: int | None


@dataclass(frozen=True, slots=True)
class KeyBudget:
    """An API key's budget for the period a request falls in."""

    key_id: int
    period: str  # period id, e.g. "d20261201"
    units: int
    kind: str = "month"  # day, week, month or total
    at: datetime | None = None  # an instant in the period (for reading Postgres)

    @property
    def tag(self) -> str:
        return f"{self.key_id}:{self.period}"


class BalanceView:
    """Registers the scripts once per client; each call is one EVALSHA."""

    def __init__(
        self, redis: Redis, runner: ScriptRunner | ClusterScriptRunner | None = None
    ) -> None:
        """`runner`: run the hold on a pipelined connection (the proxy's hot path), and
        the scripts of many users at once (on a Redis Cluster, redis-py pipelines
        no scripts: there a runner is required for `publish_many` and `extend_holds`)."""
        self._runner = runner
        self._hold_script = LuaScript(lua.HOLD)
        self._publish_many_script = LuaScript(lua.PUBLISH_MANY)
        self._extend_script = LuaScript(lua.EXTEND)
        self._hold = redis.register_script(lua.HOLD)
        self._release = redis.register_script(lua.RELEASE)
        self._publish_many = redis.register_script(lua.PUBLISH_MANY)
        self._reap = redis.register_script(lua.REAP)
        self._extend = redis.register_script(lua.EXTEND)
        self._load_key_spend = redis.register_script(lua.LOAD_KEY_SPEND)
        self._redis = redis

    async def hold(
        self,
        user_id: int,
        request_id: str,
        units: int,
        ttl_ms: int,
        limit: RateLimit | None = None,
        budget: KeyBudget | None = None,
    ) -> HoldResult:
        window = limit.window_key if limit else redis_keys.balance(user_id)
        rpm = str(limit.rpm or 0) if limit else "0"
        tpm = str(limit.tpm or 0) if limit else "0"
        keys = [*redis_keys.user_keys(user_id), window]
        args = [request_id, str(units), str(ttl_ms), rpm, tpm]
        if budget is not None:
            args += [str(budget.units), str(budget.key_id), budget.period]
        else:
            args += ["", "", ""]
        if self._runner is not None:
            status, room = await self._runner.run(self._hold_script, keys, args)
        else:
            status, room = await self._hold(keys=keys, args=args)
        limited = {-2: "requests", -3: "tokens"}.get(status)
        return HoldResult(status == 1, status == -1, int(room), limited, status == -4, status == -5)

    async def load_key_spend(
        self, user_id: int, budget: KeyBudget, spent_units: int, version: int
    ) -> int:
        """Give Redis the key's settled spend of the budget's period where it has
        none: `spent_units` read from Postgres with the user's balance `version`.
        Returns 1 loaded, 0 one was there, -1 the view is at another version."""
        return int(
            await self._load_key_spend(
                keys=redis_keys.user_keys(user_id),
                args=[str(budget.key_id), budget.period, str(spent_units), str(version)],
            )
        )

    async def release(self, user_id: int, request_id: str) -> int:
        amount = await self._release(keys=redis_keys.user_keys(user_id), args=[request_id])
        return int(amount) if amount is not None else 0

    async def publish(
        self, user_id: int, balance_usd: Decimal, version: int, release_request_id: str = ""
    ) -> bool:
        """Store Postgres' balance (if newer than the view) and release a pending
        charge as settled."""
        args = [str(units_floor(balance_usd)), str(version)]
        if release_request_id:
            args.append(release_request_id)
        changed = await self._publish_many(keys=redis_keys.user_keys(user_id), args=args)
        return bool(changed)

    async def publish_many(
        self,
        request_ids: dict[int, list[str]],
        balances: dict[int, tuple[Decimal, int]],
    ) -> None:
        """For each user: release the holds of `request_ids[user]` and publish
        `balances[user]` (balance, version); one round trip for all of them (one
        per node of a cluster)."""
        calls = []
        for user_id, ids in request_ids.items():
            balance, version = balances[user_id]
            head = [str(units_floor(balance)), str(version)]
            keys = redis_keys.user_keys(user_id)
            for start in range(0, len(ids), _PUBLISH_MANY_CHUNK):
                calls.append((keys, head + ids[start : start + _PUBLISH_MANY_CHUNK]))
        await self._many(self._publish_many_script, self._publish_many, calls)

    async def _many(self, script: LuaScript, registered, calls: list) -> None:
        """Run `script` once per (keys, args): on the runner's connections (sent in
        one write each), else in one redis-py pipeline."""
        if self._runner is not None:
            await asyncio.gather(*(self._runner.run(script, k, a) for k, a in calls))
            return
        if is_cluster(self._redis):  # no runner (a test, a tool): one call each, all at once
            await asyncio.gather(*(registered(keys=k, args=a) for k, a in calls))
            return
        pipe = self._redis.pipeline(transaction=False)
        for keys, args in calls:
            await registered(keys=keys, args=args, client=pipe)
        await pipe.execute()

    async def reap_expired(self, user_id: int, limit: int = 500) -> list[tuple[str, int]]:
        """Release this user's expired holds; returns (request id, units) pairs."""
        flat = await self._reap(keys=redis_keys.user_keys(user_id), args=[str(limit)])
        return [
            (rid.decode() if isinstance(rid, bytes) else rid, int(units))
            for rid, units in zip(flat[::2], flat[1::2], strict=True)
        ]

    async def extend_holds(self, request_ids: dict[int, list[str]], ttl_ms: int) -> None:
        """Keep the holds of requests still running from expiring: each user's
        listed holds expire `ttl_ms` from now. One round trip for all users."""
        calls = [
            (
                [redis_keys.hold_expiry(user_id)],
                [str(ttl_ms), *ids[start : start + _PUBLISH_MANY_CHUNK]],
            )
            for user_id, ids in request_ids.items()
            for start in range(0, len(ids), _PUBLISH_MANY_CHUNK)
        ]
        await self._many(self._extend_script, self._extend, calls)

    async def held_units(self, user_id: int) -> int:
        value = await self._redis.hget(redis_keys.balance(user_id), "held")
        return int(value or 0)


class RequestCounter:
    """Counts requests that place no hold (free endpoints) against a key's
    requests per minute, in the window metered requests are counted in."""

    def __init__(self, redis: Redis) -> None:
        self._count = redis.register_script(lua.COUNT_REQUEST)

    async def count(self, limit: RateLimit) -> bool:
        """True when counted; False when the key is at its rpm (nothing counted).
        A key without an rpm limit is never counted (and Redis not asked)."""
        if not limit.rpm:
            return True
        return bool(await self._count(keys=[limit.window_key], args=[str(limit.rpm)]))
