"""Everything one proxy instance shares between requests."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field

import asyncpg
from aiohttp import web
from redis.asyncio import Redis

from proxy.auth import KeyCache
from proxy.holds import Holds
from proxy.keypool import KeyPool
from proxy.metrics import Metrics
from proxy.upstream import UpstreamClient
from shared.catalog import Catalog
from shared.config import Settings
from shared.usage_queue import UsageQueue


@dataclass(slots=True)
class Gateway:
    settings: Settings
    catalog: Catalog
    redis: Redis
    pg: asyncpg.Pool
    upstream: UpstreamClient
    keys: KeyCache
    holds: Holds
    pool: KeyPool
    queue: UsageQueue
    metrics: Metrics
    background: set[asyncio.Task] = field(default_factory=set)

    def finish_in_background(self, work: Coroutine) -> None:
        """Run `work` to its end even though the request that needed it is gone;
        shutdown waits for it (see `proxy.app`)."""
        task = asyncio.create_task(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)


GATEWAY = web.AppKey("gateway", Gateway)
SETTINGS = web.AppKey("settings", Settings)
REQUEST_ID = web.RequestKey("request_id", str)
