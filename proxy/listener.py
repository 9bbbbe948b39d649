"""Keeps in-process caches fresh: Redis pub/sub invalidation plus a periodic reload."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from redis.asyncio import Redis

from proxy.state import Gateway
from shared.invalidation import PROVIDERS_MESSAGE
from shared.redis_keys import INVALIDATE_CHANNEL

log = structlog.get_logger("meterway.listener")


async def listen_for_invalidations(gw: Gateway, redis: Redis) -> None:
    """Runs for the life of the app; reconnects, and clears caches when it does."""
    while True:
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(INVALIDATE_CHANNEL)
            gw.keys.clear()  # anything may have changed while we were not listening
            await gw.pool.load(gw.pg)
            async for message in pubsub.listen():
                data = message.get("data")
                text = data.decode() if isinstance(data, bytes) else str(data)
                if text.startswith("cool:"):
                    _, key_id, seconds = text.split(":")
                    gw.pool.cool_down(int(key_id), float(seconds))
                    continue
                gw.keys.invalidate(text)
                if text == PROVIDERS_MESSAGE or not text.startswith(("key:", "user:")):
                    await gw.pool.load(gw.pg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("invalidation_listener_error", error=str(exc))
            await asyncio.sleep(0.5)
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()


async def refresh_periodically(gw: Gateway, every: float) -> None:
    """A safety net for a missed message: reload provider state now and then."""
    while True:
        await asyncio.sleep(every)
        try:
            await gw.pool.load(gw.pg)
        except Exception as exc:
            log.warning("provider_refresh_failed", error=str(exc))
