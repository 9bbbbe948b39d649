"""The usage-event queue: Redis streams the proxy appends to in one script.

One stream per shard of users (`shared.redis_keys.usage_stream`): a user's
event goes to the stream whose hash tag the user's keys carry, so that the
script below touches one Redis Cluster slot.

The proxy appends the event (JSON) to the stream and, in the same atomic Lua
script, turns the request's hold into a *pending charge*: its amount becomes
the request's priced cost and it no longer expires, so admitted spend stays
bounded however long the workers take. Only settlement (or an operator)
releases it. Workers read the stream in batches through a consumer group; an
entry is acknowledged and deleted only after its batch is committed in
Postgres, and entries of a worker that died are claimed by another.
"""

from __future__ import annotations

import time
from datetime import timedelta

from redis.asyncio import Redis

from shared import redis_keys
from shared.balance_scripts import UNTAG
from shared.cluster_runner import ClusterScriptRunner
from shared.events import EncodedUsageEvent, UsageEvent
from shared.script_runner import LuaScript, ScriptRunner

# A pending charge waits this long for its settlement before the reaper frees it.
KEEP_UNSETTLED = timedelta(days=30)
_KEEP_MS = int(KEEP_UNSETTLED.total_seconds() * 1000)
GROUP = "settlers"

# KEYS: bal, holds, holdexp, holdkey, stream, rate window[, response tokens].
# ARGV: event JSON, request id, pending units, units - placed, placed, expiry ms,
#       tokens to count against the key's per-minute token limit ('0': none),
#       the key tag `<key>:<period>` of a budgeted key ('' none)[, the
#       response's tokens, how long to remember them in ms].
# The hold becomes a pending charge of the priced cost (`held` and, for a
# budgeted key, the key's open total move by the difference); a hold that is
# gone (Redis flushed) is re-created as a pending charge.
_ENQUEUE = (
    UNTAG
    + """
redis.call('XADD', KEYS[5], '*', 'e', ARGV[1])
local old = redis.call('HGET', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[2])
if old == ARGV[5] then
  if ARGV[4] ~= '0' then redis.call('HINCRBY', KEYS[1], 'held', ARGV[4]) end
elseif old then
  if old ~= '0' then redis.call('HINCRBY', KEYS[1], 'held', '-' .. old) end
  if ARGV[3] ~= '0' then redis.call('HINCRBY', KEYS[1], 'held', ARGV[3]) end
elseif ARGV[3] ~= '0' then
  redis.call('HINCRBY', KEYS[1], 'held', ARGV[3])
end
untag(ARGV[2], old)  -- the key's open total loses the hold ...
if ARGV[8] ~= '' then  -- ... and gains the pending charge, in the period it ends in
  if ARGV[3] ~= '0' then
    redis.call('HINCRBY', KEYS[1], 'ko:' .. string.match(ARGV[8], '^[^:]+'), ARGV[3])
  end
  redis.call('HSET', KEYS[4], ARGV[2], ARGV[8])
end
if ARGV[7] ~= '0' then
  redis.call('HINCRBY', KEYS[6], 't', ARGV[7])
  redis.call('EXPIRE', KEYS[6], 120)
end
if KEYS[7] then redis.call('SET', KEYS[7], ARGV[9], 'PX', ARGV[10]) end
return 1
"""
)
# OpenAI keeps a response for 30 days; so long it may be continued.
_REMEMBER_MS = 30 * 24 * 3600 * 1000


class UsageQueue:
    def __init__(
        self, redis: Redis, runner: ScriptRunner | ClusterScriptRunner | None = None
    ) -> None:
        """`runner`: run the script on a pipelined connection (the proxy's hot path)."""
        self._script = redis.register_script(_ENQUEUE)
        self._lua = LuaScript(_ENQUEUE)
        self._runner = runner

    async def enqueue(
        self,
        event: UsageEvent | EncodedUsageEvent,
        pending_units: int,
        rate_window: str | None = None,
        response_id: str | None = None,
        key_tag: str = "",
    ) -> None:
        """Append the event and make its hold a pending charge of `pending_units`;
        with `rate_window`, count its tokens against the key's per-minute limit;
        with `response_id`, remember the response's tokens for the holds of the
        requests that continue it; `key_tag` (`<key>:<period>`) for a key with a
        budget. Appending an event twice is harmless: settlement is idempotent."""
        user = event.user_id
        tokens = event.token_count if rate_window else 0
        keys = [
            *redis_keys.user_keys(user),
            redis_keys.user_usage_stream(user),
            rate_window or redis_keys.balance(user),
        ]
        args = [
            event.to_json(),
            event.request_id,
            str(pending_units),
            str(pending_units - event.hold_units),
            str(event.hold_units),
            str(int(time.time() * 1000) + _KEEP_MS),
            str(tokens),
            key_tag,
        ]
        if response_id is not None:
            keys.append(redis_keys.response_tokens(user, response_id))
            args += [str(event.token_count), str(_REMEMBER_MS)]
        if self._runner is not None:
            await self._runner.run(self._lua, keys, args)
        else:
            await self._script(keys=keys, args=args)


async def queue_depth(redis: Redis) -> tuple[int, int | None]:
    """Usage events queued and not settled yet, over every stream (entries are
    deleted once settled), and the epoch milliseconds of the oldest (stream ids
    start with them), or None. One round trip (one per node of a cluster)."""
    pipe = redis.pipeline(transaction=False)
    for stream in redis_keys.ALL_USAGE_STREAMS:
        pipe.xlen(stream)
        pipe.xrange(stream, count=1)
    answers = await pipe.execute()
    depth = sum(answers[::2])
    firsts = [int(first[0][0].split(b"-")[0]) for first in answers[1::2] if first]
    return depth, min(firsts) if firsts else None


async def pending_count(redis: Redis) -> int:
    """Entries read by a worker and not acknowledged yet, over every stream."""
    pipe = redis.pipeline(transaction=False)
    for stream in redis_keys.ALL_USAGE_STREAMS:
        pipe.xpending(stream, GROUP)
    total = 0
    for answer in await pipe.execute(raise_on_error=False):
        if isinstance(answer, dict):
            total += int(answer["pending"])
    return total


async def consumers(redis: Redis) -> list[dict]:
    """The group's consumers (workers' lanes) with their smallest idle time over
    every shard stream: one entry per consumer name."""
    pipe = redis.pipeline(transaction=False)
    for stream in redis_keys.USAGE_STREAMS:
        pipe.xinfo_consumers(stream, GROUP)
    seen: dict[bytes, dict] = {}
    for answer in await pipe.execute(raise_on_error=False):
        if isinstance(answer, Exception):
            continue
        for consumer in answer:
            name = consumer["name"]
            best = seen.get(name)
            if best is None or int(consumer["idle"]) < int(best["idle"]):
                seen[name] = consumer
    return list(seen.values())
