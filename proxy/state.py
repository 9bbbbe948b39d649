"""Everything one proxy instance shares between requests."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
import asyncpg
from aiohttp import web
from arq.connections import ArqRedis

from proxy.auth import KeyCache
from proxy.holds import Holds
from proxy.keypool import KeyPool
from proxy.metrics import Metrics
from proxy.queue import UsageQueue
from shared.catalog import Catalog
from shared.config import Settings


@dataclass(slots=True)
class Gateway:
    settings: Settings
    catalog: Catalog
    redis: ArqRedis
    pg: asyncpg.Pool
    http: aiohttp.ClientSession
    keys: KeyCache
    holds: Holds
    pool: KeyPool
    queue: UsageQueue
    metrics: Metrics


GATEWAY = web.AppKey("gateway", Gateway)
SETTINGS = web.AppKey("settings", Settings)
REQUEST_ID = web.RequestKey("request_id", str)
