"""The usage-event queue: arq's job format, written by the proxy in one script.

The proxy enqueues an arq job (`settle_usage`, one argument: the event JSON)
and, in the same atomic Lua script, turns the request's hold into a *pending
charge*: its amount becomes the request's priced cost and it no longer
expires, so admitted spend stays bounded however long the workers take. Only
settlement (or an operator) releases it. Jobs are JSON, not pickle, so that
the script can build them; the worker is configured with the same codec.
"""

from __future__ import annotations

import time
from datetime import timedelta

import orjson
from arq.constants import job_key_prefix, result_key_prefix
from redis.asyncio import Redis

from shared import redis_keys
from shared.events import SETTLE_JOB, UsageEvent

# An event waits this long for a worker before arq drops it: far past any outage.
KEEP_UNSETTLED = timedelta(days=30)
_KEEP_MS = int(KEEP_UNSETTLED.total_seconds() * 1000)


def job_serializer(data: dict) -> bytes:
    return orjson.dumps(data)


def job_deserializer(data: bytes) -> dict:
    return orjson.loads(data)


# KEYS: job, result, queue, bal, holds, holdexp, rate window.
# ARGV: job id, job payload, job ttl ms, score ms, pending units, units - placed, placed,
#       tokens to count against the key's per-minute token limit ('0': none).
# Returns 1 when the job was added, 0 when a job with this id existed already.
_ENQUEUE = """
local added = 0
if redis.call('EXISTS', KEYS[1], KEYS[2]) == 0 then
  redis.call('PSETEX', KEYS[1], ARGV[3], ARGV[2])
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
  added = 1
end
local old = redis.call('HGET', KEYS[5], ARGV[1])
redis.call('HSET', KEYS[5], ARGV[1], ARGV[5])
redis.call('ZADD', KEYS[6], tonumber(ARGV[4]) + tonumber(ARGV[3]), ARGV[1])
if old == ARGV[7] then
  if ARGV[6] ~= '0' then redis.call('HINCRBY', KEYS[4], 'held', ARGV[6]) end
elseif old then
  redis.call('HINCRBY', KEYS[4], 'held', tostring(tonumber(ARGV[5]) - tonumber(old)))
elseif ARGV[5] ~= '0' then
  redis.call('HINCRBY', KEYS[4], 'held', ARGV[5])
end
if ARGV[8] ~= '0' then
  redis.call('HINCRBY', KEYS[7], 't', ARGV[8])
  redis.call('EXPIRE', KEYS[7], 120)
end
return added
"""


class UsageQueue:
    def __init__(self, redis: Redis, queue_name: str) -> None:
        self._script = redis.register_script(_ENQUEUE)
        self._queue_name = queue_name

    async def enqueue(
        self, event: UsageEvent, pending_units: int, rate_window: str | None = None
    ) -> bool:
        """Enqueue the event (the request id is the job id) and make its hold a
        pending charge of `pending_units`; with `rate_window`, count its tokens
        against the key's per-minute token limit. Repeating an event is a no-op."""
        now_ms = int(time.time() * 1000)
        payload = job_serializer(
            {"t": None, "f": SETTLE_JOB, "a": [event.to_json()], "k": {}, "et": now_ms}
        )
        user = event.user_id
        added = await self._script(
            keys=[
                job_key_prefix + event.request_id,
                result_key_prefix + event.request_id,
                self._queue_name,
                *redis_keys.user_keys(user),
                rate_window or redis_keys.balance(user),
            ],
            args=[
                event.request_id,
                payload,
                str(_KEEP_MS),
                str(now_ms),
                str(pending_units),
                str(pending_units - event.hold_units),
                str(event.hold_units),
                str(event.usage.input_tokens + event.usage.output_tokens if rate_window else 0),
            ],
        )
        return bool(added)
