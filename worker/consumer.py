"""Reads the usage stream in batches and settles them; one per worker process.

Entries are read through the consumer group `settlers`: each entry goes to one
worker, and is acknowledged (and deleted) only after its batch is committed in
Postgres. A worker that dies leaves its entries pending; any live worker
claims entries idle for longer than `settle_claim_idle_seconds` and settles
them. A batch that fails (Postgres down) is retried with backoff; an event
that cannot be read or priced is moved to the dead-letter stream `mw:usage:dead`
(and logged) without blocking the others.
"""

from __future__ import annotations

import asyncio
import os
import socket

import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from shared.events import UsageEvent
from shared.redis_keys import USAGE_DEAD_LETTERS, USAGE_STREAM
from shared.usage_queue import GROUP
from worker.metrics import METRICS
from worker.settle import SettleDeps, UnpricedModel, settle_batch

log = structlog.get_logger("meterway.consumer")

Entry = tuple[bytes, dict[bytes, bytes]]
# Under a backlog (every read comes back full) batches double up to this many
# times `settle_batch_size`: Postgres spends much less per event in big batches.
GROWTH_LIMIT = 8


class UsageConsumer:
    def __init__(self, deps: SettleDeps, redis: Redis, lane: int = 0) -> None:
        self.deps = deps
        self.redis = redis
        self.name = f"{socket.gethostname()}-{os.getpid()}-{lane}"
        self.base_batch = deps.settings.settle_batch_size
        self.max_batch = self.base_batch * GROWTH_LIMIT
        self.batch = self.base_batch
        self.claim_idle_ms = int(deps.settings.settle_claim_idle_seconds * 1000)
        self.settled = 0
        self.stopping = False

    def stop(self) -> None:
        """Shutdown: finish the batch in hand, read no more (`run` returns). A batch
        that cannot be settled now (Postgres away) is left pending, and another
        worker claims it after `settle_claim_idle_seconds`."""
        self.stopping = True

    async def run(self) -> None:
        backoff = 0.1
        ready = False
        while not self.stopping:
            try:
                if not ready:
                    await self._ensure_group()
                    ready = True
                entries = await self._claim_stale() or await self._read_new()
                self._adapt(len(entries))
                if entries:
                    await self._settle(entries)
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Postgres or Redis away: wait and go on
                if "NOGROUP" in str(exc):  # Redis was flushed or restarted empty
                    ready = False
                    continue
                log.warning("settle_batch_failed", error=str(exc), retry_in=backoff)
                if self.stopping:
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _adapt(self, read: int) -> None:
        """Read twice as many next time after a full read, up to `max_batch`;
        back to `settle_batch_size` once the backlog is gone."""
        self.batch = min(self.batch * 2, self.max_batch) if read >= self.batch else self.base_batch

    async def _ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(USAGE_STREAM, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _claim_stale(self) -> list[Entry]:
        """Entries another (dead) worker, or this one after a failure, left pending."""
        _, entries, *_ = await self.redis.xautoclaim(
            USAGE_STREAM, GROUP, self.name, self.claim_idle_ms, "0-0", count=self.batch
        )
        return [e for e in entries if e[1]]

    async def _read_new(self) -> list[Entry]:
        answer = await self.redis.xreadgroup(
            GROUP, self.name, {USAGE_STREAM: ">"}, count=self.batch, block=1000
        )
        return answer[0][1] if answer else []

    async def _settle(self, entries: list[Entry]) -> None:
        events: dict[bytes, UsageEvent] = {}
        done: list[bytes] = []
        for entry_id, fields in entries:
            try:
                events[entry_id] = UsageEvent.from_json(fields[b"e"])
            except (KeyError, ValueError) as exc:
                await self._dead_letter(entry_id, fields, f"unreadable event: {exc}")
                done.append(entry_id)
        try:
            await settle_batch(self.deps, list(events.values()))
            done += list(events)
        except (UnpricedModel, LookupError):
            done += await self._settle_halves(events)
        if done:
            pipe = self.redis.pipeline(transaction=False)
            pipe.xack(USAGE_STREAM, GROUP, *done)
            pipe.xdel(USAGE_STREAM, *done)
            await pipe.execute()
            self.settled += len(done)

    async def _settle_halves(self, events: dict[bytes, UsageEvent]) -> list[bytes]:
        """A batch holds an event that cannot be settled: settle each half, and
        split a half that fails again, down to the single event, which goes to
        the dead letters. A few transactions per bad event, not one per event."""
        items = list(events.items())
        half = len(items) // 2
        return await self._settle_apart(dict(items[:half])) + await self._settle_apart(
            dict(items[half:])
        )

    async def _settle_apart(self, events: dict[bytes, UsageEvent]) -> list[bytes]:
        try:
            await settle_batch(self.deps, list(events.values()))
            return list(events)
        except (UnpricedModel, LookupError) as exc:
            if len(events) > 1:
                return await self._settle_halves(events)
            ((entry_id, event),) = events.items()
            await self._dead_letter(entry_id, {b"e": event.to_json().encode()}, str(exc))
            return [entry_id]

    async def _dead_letter(self, entry_id: bytes, fields: dict, reason: str) -> None:
        """Keep an event that cannot be settled for the operator, out of the way of
        the others: `mw:usage:dead` in Redis, and an error in the log."""
        await self.redis.xadd(USAGE_DEAD_LETTERS, {**fields, b"reason": reason.encode()})
        METRICS.dead_letters.inc()
        log.error("usage_event_dead_lettered", entry=entry_id.decode(), reason=reason)
