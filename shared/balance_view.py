"""The Redis view of balances and holds, and the Lua scripts that change it.

Postgres is the source of truth. Redis keeps, per user, the settled balance in
integer nano-USD with the Postgres `balance_version` it came from, the total
held, and one entry per open hold with its expiry. Every change is one Lua
script, so a hold is placed against `available = balance - holds` atomically.
Integers are passed to Redis as strings and changed with HINCRBY, never
formatted by Lua (whose number-to-string conversion loses digits).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from redis.asyncio import Redis

from shared import redis_keys
from shared.money import units_floor
from shared.script_runner import LuaScript, ScriptRunner

# KEYS: bal, holds, holdexp, rate window. ARGV: request id, units, ttl ms, rpm, tpm.
# Returns {status, available}: 1 placed, 0 does not fit, -1 no balance view,
# -2 over the key's requests per minute, -3 over its tokens per minute.
_HOLD = """
local units = redis.call('HGET', KEYS[1], 'units')
if not units then return {-1, 0} end
local rpm = tonumber(ARGV[4])
local tpm = tonumber(ARGV[5])
if rpm > 0 or tpm > 0 then
  local used = redis.call('HMGET', KEYS[4], 'n', 't')
  if rpm > 0 and tonumber(used[1] or '0') >= rpm then return {-2, 0} end
  if tpm > 0 and tonumber(used[2] or '0') >= tpm then return {-3, 0} end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local held = tonumber(redis.call('HGET', KEYS[1], 'held') or '0')
local available = tonumber(units) - held
if tonumber(ARGV[2]) > available then return {0, available} end
redis.call('HINCRBY', KEYS[1], 'held', ARGV[2])  -- first: a bad number fails before any write
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), ARGV[1])
if rpm > 0 or tpm > 0 then
  redis.call('HINCRBY', KEYS[4], 'n', 1)
  redis.call('EXPIRE', KEYS[4], 120)
end
return {1, available - tonumber(ARGV[2])}
"""

# KEYS: bal, holds, holdexp. ARGV: at most this many. Releases holds whose
# expiry has passed (their proxy never reported back) and returns them as a
# flat list: request id, units, request id, units, ...
_REAP = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
for _, rid in ipairs(expired) do
  local amount = redis.call('HGET', KEYS[2], rid)
  if amount then
    redis.call('HDEL', KEYS[2], rid)
    if amount ~= '0' then redis.call('HINCRBY', KEYS[1], 'held', '-' .. amount) end
    table.insert(out, rid)
    table.insert(out, amount)
  end
  redis.call('ZREM', KEYS[3], rid)
end
return out
"""

# KEYS: bal, holds, holdexp. ARGV: request id. Returns the released units or nil.
_RELEASE = """
local amount = redis.call('HGET', KEYS[2], ARGV[1])
if amount then
  redis.call('HDEL', KEYS[2], ARGV[1])
  if amount ~= '0' then redis.call('HINCRBY', KEYS[1], 'held', '-' .. amount) end
end
redis.call('ZREM', KEYS[3], ARGV[1])
return amount
"""

# KEYS: bal, holds, holdexp. ARGV: units, version, request id to release or ''.
# Sets the balance only when the version is newer than the one held.
_PUBLISH = """
if ARGV[3] ~= '' then
  local amount = redis.call('HGET', KEYS[2], ARGV[3])
  if amount then
    redis.call('HDEL', KEYS[2], ARGV[3])
    if amount ~= '0' then redis.call('HINCRBY', KEYS[1], 'held', '-' .. amount) end
  end
  redis.call('ZREM', KEYS[3], ARGV[3])
end
local ver = redis.call('HGET', KEYS[1], 'ver')
if ver and tonumber(ver) >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'units', ARGV[1], 'ver', ARGV[2])
return 1
"""


# After a settled batch (worker): release every listed hold and publish the balance
# when its version is newer, in one call per user; what _PUBLISH and _RELEASE do
# one request at a time. KEYS: bal, holds, holdexp. ARGV: units, version, request ids...
_PUBLISH_MANY = """
local ids = {}
for i = 3, #ARGV do ids[#ids + 1] = ARGV[i] end
if #ids > 0 then
  local amounts = redis.call('HMGET', KEYS[2], unpack(ids))
  local present = {}
  for i, rid in ipairs(ids) do
    local units = amounts[i]
    if units then
      present[#present + 1] = rid
      if units ~= '0' then redis.call('HINCRBY', KEYS[1], 'held', '-' .. units) end
    end
  end
  if #present > 0 then redis.call('HDEL', KEYS[2], unpack(present)) end
  redis.call('ZREM', KEYS[3], unpack(ids))
end
local ver = redis.call('HGET', KEYS[1], 'ver')
if ver and tonumber(ver) >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'units', ARGV[1], 'ver', ARGV[2])
return 1
"""

# KEYS: holdexp. ARGV: ttl ms, request ids... Moves the expiry of holds still
# open (members of holdexp) to now + ttl; a released or settled hold is not
# a member any more and stays gone (XX never adds).
_EXTEND = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local at = now + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', at, ARGV[i]) end
return #ARGV - 1
"""

# The largest hold or balance the scripts take: 1e9 USD in nano-USD, inside
# int64 for HINCRBY (balances are kept below 1e9 USD where they are changed).
MAX_UNITS = 10**18

# request ids per script call: far below Lua's limit on unpack() arguments
_PUBLISH_MANY_CHUNK = 1000


@dataclass(frozen=True, slots=True)
class HoldResult:
    placed: bool
    missing_view: bool
    available_units: int
    rate_limited: str | None = None  # "requests" or "tokens" per minute


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A key's per-minute limits and the Redis window they are counted in."""

    window_key: str
    rpm: int | None
    tpm: int | None


class BalanceView:
    """Registers the scripts once per client; each call is one EVALSHA."""

    def __init__(self, redis: Redis, runner: ScriptRunner | None = None) -> None:
        """`runner`: run the hold on a pipelined connection (the proxy's hot path)."""
        self._runner = runner
        self._hold_script = LuaScript(_HOLD)
        self._hold = redis.register_script(_HOLD)
        self._release = redis.register_script(_RELEASE)
        self._publish = redis.register_script(_PUBLISH)
        self._publish_many = redis.register_script(_PUBLISH_MANY)
        self._reap = redis.register_script(_REAP)
        self._extend = redis.register_script(_EXTEND)
        self._redis = redis

    async def hold(
        self,
        user_id: int,
        request_id: str,
        units: int,
        ttl_ms: int,
        limit: RateLimit | None = None,
    ) -> HoldResult:
        window = limit.window_key if limit else redis_keys.balance(user_id)
        rpm = str(limit.rpm or 0) if limit else "0"
        tpm = str(limit.tpm or 0) if limit else "0"
        keys = [*redis_keys.user_keys(user_id), window]
        args = [request_id, str(units), str(ttl_ms), rpm, tpm]
        if self._runner is not None:
            status, available = await self._runner.run(self._hold_script, keys, args)
        else:
            status, available = await self._hold(keys=keys, args=args)
        limited = {-2: "requests", -3: "tokens"}.get(status)
        return HoldResult(status == 1, status == -1, int(available), limited)

    async def release(self, user_id: int, request_id: str) -> int:
        amount = await self._release(keys=redis_keys.user_keys(user_id), args=[request_id])
        return int(amount) if amount is not None else 0

    async def publish(
        self, user_id: int, balance_usd: Decimal, version: int, release_request_id: str = ""
    ) -> bool:
        """Store Postgres' balance (if newer than the view) and release a hold."""
        changed = await self._publish(
            keys=redis_keys.user_keys(user_id),
            args=[str(units_floor(balance_usd)), str(version), release_request_id],
        )
        return bool(changed)

    async def publish_in(
        self, pipe, user_id: int, balance_usd: Decimal, version: int, release_request_id: str = ""
    ) -> None:
        """`publish`, queued on a pipeline."""
        await self._publish(
            keys=redis_keys.user_keys(user_id),
            args=[str(units_floor(balance_usd)), str(version), release_request_id],
            client=pipe,
        )

    async def publish_many(
        self,
        request_ids: dict[int, list[str]],
        balances: dict[int, tuple[Decimal, int]],
    ) -> None:
        """For each user: release the holds of `request_ids[user]` and publish
        `balances[user]` (balance, version); one round trip for all of them."""
        pipe = self._redis.pipeline(transaction=False)
        for user_id, ids in request_ids.items():
            balance, version = balances[user_id]
            head = [str(units_floor(balance)), str(version)]
            keys = redis_keys.user_keys(user_id)
            for start in range(0, len(ids), _PUBLISH_MANY_CHUNK):
                args = head + ids[start : start + _PUBLISH_MANY_CHUNK]
                await self._publish_many(keys=keys, args=args, client=pipe)
        await pipe.execute()

    async def release_in(self, pipe, user_id: int, request_id: str) -> None:
        """`release`, queued on a pipeline."""
        await self._release(keys=redis_keys.user_keys(user_id), args=[request_id], client=pipe)

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
        pipe = self._redis.pipeline(transaction=False)
        for user_id, ids in request_ids.items():
            for start in range(0, len(ids), _PUBLISH_MANY_CHUNK):
                args = [str(ttl_ms), *ids[start : start + _PUBLISH_MANY_CHUNK]]
                await self._extend(keys=[redis_keys.hold_expiry(user_id)], args=args, client=pipe)
        await pipe.execute()

    async def held_units(self, user_id: int) -> int:
        value = await self._redis.hget(redis_keys.balance(user_id), "held")
        return int(value or 0)
