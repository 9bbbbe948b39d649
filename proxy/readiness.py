"""`GET /readyz` (contract section 8): can this proxy take new requests?

Ready means Redis answers (the hot path needs nothing else: Postgres does not
count) and the process is not draining. Redis is pinged in the background
every `PING_EVERY` seconds with a `PING_TIMEOUT`, so an unreachable Redis
turns readiness off within about three seconds, and a load balancer polling
`/readyz` costs no Redis command. SIGTERM turns it off at once (`drain()`),
and from then on every answer carries `Connection: close`, so that a load
balancer's kept-alive connections move to other proxies before the listening
socket closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

import structlog
from aiohttp import web
from redis.asyncio import Redis

log = structlog.get_logger("meterway.readiness")

PING_EVERY = 1.0
PING_TIMEOUT = 2.0


class Readiness:
    __slots__ = ("_lost", "_task", "draining", "redis_ok")

    def __init__(self) -> None:
        self.draining = False
        self.redis_ok = False
        self._lost = False  # Redis was unreachable once (its return is then logged)
        self._task: asyncio.Task | None = None

    @property
    def ready(self) -> bool:
        return self.redis_ok and not self.draining

    def drain(self) -> None:
        if not self.draining:
            self.draining = True
            log.info("readiness_draining")

    def start(self, redis: Redis) -> None:
        self._task = asyncio.create_task(self._watch(redis))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _watch(self, redis: Redis) -> None:
        while True:
            try:
                async with asyncio.timeout(PING_TIMEOUT):
                    await redis.ping()
                ok = True
            except asyncio.CancelledError:
                raise
            except Exception:
                ok = False
            if ok != self.redis_ok:
                if not ok:
                    log.warning("readiness_redis", reachable=False)
                elif self._lost:  # back after an outage (the first answer is not news)
                    log.info("readiness_redis", reachable=True)
                self._lost = self._lost or not ok
                self.redis_ok = ok
            await asyncio.sleep(PING_EVERY)

    def answer(self) -> web.Response:
        body = {
            "ready": self.ready,
            "redis": self.redis_ok,
            "draining": self.draining,
            "pid": os.getpid(),
        }
        return web.json_response(body, status=200 if self.ready else 503)


READINESS = web.AppKey("readiness", Readiness)


async def readyz(request: web.Request) -> web.Response:
    return request.app[READINESS].answer()
