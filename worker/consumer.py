"""Reads the usage streams in batches and settles them; one per worker lane.

The queue is one stream per shard of users (`shared.redis_keys`), plus the
single stream of the layout before shards, drained for an upgrade. Entries are
read through the consumer group `settlers` of every stream: each entry goes
to one worker, and is acknowledged (and deleted) only after its batch is
committed in Postgres. A worker that dies leaves its entries pending; any live
worker claims entries idle for longer than `settle_claim_idle_seconds` (every
stream is looked at, at least every second) and settles them.

On a single Redis one XREADGROUP reads every stream and blocks until one has
entries. On a Redis Cluster each stream lives in its own slot, and a command
takes keys of one slot: the streams are read without blocking, in one
pipeline (one round trip per node), pausing a little longer after each empty
read (up to a quarter of a second).

A batch that fails (Postgres down) is retried with backoff; an event that
cannot be read or priced is moved to the dead-letter stream `mw:usage:dead`
(and logged) without blocking the others.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from shared.events import UsageEvent
from shared.redis_client import is_cluster
from shared.redis_keys import ALL_USAGE_STREAMS, USAGE_DEAD_LETTERS, USAGE_STREAM
from shared.usage_queue import GROUP
from worker.metrics import METRICS
from worker.settle import SettleDeps, UnpricedModel, settle_batch

log = structlog.get_logger("meterway.consumer")

Entry = tuple[str, bytes, dict[bytes, bytes]]  # stream, entry id, fields
Ref = tuple[str, bytes]  # stream, entry id
# Under a backlog (every read comes back full) batches double up to this many
# times `settle_batch_size`: Postgres spends much less per event in big batches.
GROWTH_LIMIT = 8
_MIN_PAUSE, _MAX_PAUSE = 0.02, 0.25  # between empty reads on a cluster


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
        self.streams = ALL_USAGE_STREAMS
        self.cluster = is_cluster(redis)
        self._claim_every = min(1.0, deps.settings.settle_claim_idle_seconds / 4)
        self._next_claim = 0.0
        self._pause = _MIN_PAUSE

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
        for stream in self.streams:
            try:
                await self.redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def _claim_stale(self) -> list[Entry]:
        """Entries another (dead) worker, or this one after a failure, left
        pending: every stream at least every second, at once again while there are."""
        now = time.monotonic()
        if now < self._next_claim:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for stream in self.streams:
            pipe.xautoclaim(stream, GROUP, self.name, self.claim_idle_ms, "0-0", count=self.batch)
        claimed = [
            (stream, entry_id, fields)
            for stream, (_, entries, *_) in zip(self.streams, await pipe.execute(), strict=True)
            for entry_id, fields in entries
            if fields
        ]
        self._next_claim = now if claimed else now + self._claim_every
        return claimed

    async def _read_new(self) -> list[Entry]:
        if not self.cluster:
            answer = await self.redis.xreadgroup(
                GROUP, self.name, dict.fromkeys(self.streams, ">"), count=self.batch, block=1000
            )
            return [(_name(s), i, f) for s, entries in answer or [] for i, f in entries]
        pipe = self.redis.pipeline(transaction=False)
        for stream in self.streams:
            pipe.xreadgroup(GROUP, self.name, {stream: ">"}, count=self.batch)
        read = [
            (_name(s), i, f)
            for answer in await pipe.execute()
            for s, entries in answer or []
            for i, f in entries
        ]
        if read:
            self._pause = _MIN_PAUSE
        else:
            await asyncio.sleep(self._pause)
            self._pause = min(self._pause * 2, _MAX_PAUSE)
        return read

    async def _settle(self, entries: list[Entry] | list[tuple[bytes, dict]]) -> None:
        """Settle entries read from the streams (an entry without its stream's name
        is one of the stream of the old layout)."""
        events: dict[Ref, UsageEvent] = {}
        done: list[Ref] = []
        for entry in entries:
            stream, entry_id, fields = entry if len(entry) == 3 else (USAGE_STREAM, *entry)
            try:
                events[(stream, entry_id)] = UsageEvent.from_json(fields[b"e"])
            except (KeyError, ValueError) as exc:
                await self._dead_letter((stream, entry_id), fields, f"unreadable event: {exc}")
                done.append((stream, entry_id))
        try:
            await settle_batch(self.deps, list(events.values()))
            done += list(events)
        except (UnpricedModel, LookupError):
            done += await self._settle_halves(events)
        if done:
            by_stream: dict[str, list[bytes]] = {}
            for stream, entry_id in done:
                by_stream.setdefault(stream, []).append(entry_id)
            pipe = self.redis.pipeline(transaction=False)
            for stream, ids in by_stream.items():
                pipe.xack(stream, GROUP, *ids)
                pipe.xdel(stream, *ids)
            await pipe.execute()
            self.settled += len(done)

    async def _settle_halves(self, events: dict[Ref, UsageEvent]) -> list[Ref]:
        """A batch holds an event that cannot be settled: settle each half, and
        split a half that fails again, down to the single event, which goes to
        the dead letters. A few transactions per bad event, not one per event."""
        items = list(events.items())
        half = len(items) // 2
        return await self._settle_apart(dict(items[:half])) + await self._settle_apart(
            dict(items[half:])
        )

    async def _settle_apart(self, events: dict[Ref, UsageEvent]) -> list[Ref]:
        try:
            await settle_batch(self.deps, list(events.values()))
            return list(events)
        except (UnpricedModel, LookupError) as exc:
            if len(events) > 1:
                return await self._settle_halves(events)
            ((ref, event),) = events.items()
            await self._dead_letter(ref, {b"e": event.to_json().encode()}, str(exc))
            return [ref]

    async def _dead_letter(self, ref: Ref, fields: dict, reason: str) -> None:
        """Keep an event that cannot be settled for the operator, out of the way of
        the others: `mw:usage:dead` in Redis, and an error in the log."""
        await self.redis.xadd(USAGE_DEAD_LETTERS, {**fields, b"reason": reason.encode()})
        METRICS.dead_letters.inc()
        stream, entry_id = ref
        log.error(
            "usage_event_dead_lettered", stream=stream, entry=entry_id.decode(), reason=reason
        )


def _name(stream: bytes | str) -> str:
    return stream.decode() if isinstance(stream, bytes) else stream
