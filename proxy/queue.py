"""Hands usage events to the metering worker through the arq queue."""

from __future__ import annotations

from datetime import timedelta

from arq.connections import ArqRedis

from shared.events import SETTLE_JOB, UsageEvent

# An event waits this long for a worker before arq drops it: far past any outage.
_KEEP_UNSETTLED = timedelta(days=30)


class UsageQueue:
    def __init__(self, redis: ArqRedis, queue_name: str) -> None:
        self._redis = redis
        self._queue_name = queue_name

    async def enqueue(self, event: UsageEvent) -> None:
        """One job per request; the request id is the job id, so a repeat is a no-op."""
        await self._redis.enqueue_job(
            SETTLE_JOB,
            event.to_json(),
            _job_id=event.request_id,
            _queue_name=self._queue_name,
            _expires=_KEEP_UNSETTLED,
        )
