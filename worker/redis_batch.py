"""After a batch is committed: new balance views and hold releases, one script
call per user (not one per event) and one round trip for the whole batch.

The script does what `BalanceView.publish` does for the user's first request
id and `BalanceView.release` for the others: it releases every listed hold
(a pending charge or a hold left by a proxy) and stores Postgres' balance when
its version is newer than the view's. Amounts go to HINCRBY as the strings
Redis stored, never through a Lua number, so they stay exact.
"""

from __future__ import annotations

from decimal import Decimal

from redis.asyncio import Redis

from shared import redis_keys
from shared.money import units_floor

# KEYS: bal, holds, holdexp. ARGV: units, version, request id, request id, ...
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

# request ids per script call: far below Lua's limit on unpack() arguments
CHUNK = 1000


class BatchPublisher:
    """Registers the script once per Redis client."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._script = redis.register_script(_PUBLISH_MANY)

    async def publish(
        self,
        request_ids: dict[int, list[str]],
        balances: dict[int, tuple[Decimal, int]],
    ) -> None:
        """For each user: release the holds of `request_ids[user]` and publish
        `balances[user]` (balance, version); one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for user_id, ids in request_ids.items():
            balance, version = balances[user_id]
            head = [str(units_floor(balance)), str(version)]
            keys = redis_keys.user_keys(user_id)
            for start in range(0, len(ids), CHUNK):
                args = head + ids[start : start + CHUNK]
                await self._script(keys=keys, args=args, client=pipe)
        await pipe.execute()
