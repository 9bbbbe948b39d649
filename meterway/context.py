"""What CLI commands share: settings, a Postgres connection, a Redis client."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import structlog
from redis.asyncio import Redis

from shared import invalidation, redis_client
from shared.balance_view import BalanceView
from shared.config import Settings

log = structlog.get_logger("meterway.cli")


class CommandError(Exception):
    """A user-facing failure: printed as one line on stderr, exit status 1."""


@dataclass(slots=True)
class Context:
    settings: Settings
    pg: asyncpg.Connection
    redis: Redis

    async def notify(self, *messages: str) -> None:
        """Tell running proxies to drop cached state; Redis being down is not fatal."""
        try:
            await invalidation.publish(self.redis, *messages)
        except Exception as exc:
            log.warning("invalidation_not_sent", error=str(exc))

    async def publish_balance(self, user_id: int, balance, version: int) -> None:
        try:
            await BalanceView(self.redis).publish(user_id, balance, version)
        except Exception as exc:
            log.warning("balance_view_not_updated", error=str(exc))


@contextlib.asynccontextmanager
async def open_context(settings: Settings) -> AsyncIterator[Context]:
    try:
        pg = await asyncpg.connect(settings.database_url)
    except (OSError, asyncpg.PostgresError) as exc:
        raise CommandError(f"cannot connect to Postgres at DATABASE_URL: {exc}") from exc
    redis = redis_client.connect(settings)  # a cluster when REDIS_CLUSTER=1
    try:
        yield Context(settings, pg, redis)
    finally:
        await pg.close()
        await redis.aclose()
