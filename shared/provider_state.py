"""Operator actions on providers that the CLI and the dashboard share."""

from __future__ import annotations

from redis.asyncio import Redis

from shared import daily, redis_keys
from shared.db import providers as db
from shared.db.users import Conn


async def cooling_key_ids(redis: Redis) -> set[int]:
    """Provider keys resting after an upstream 429, as every proxy sees them."""
    return {
        int(key.rsplit(b":", 1)[1])
        async for key in redis.scan_iter(match=redis_keys.COOLING_PATTERN)
    }


def key_status(stored: str, key_id: int, cooling: set[int]) -> str:
    """active, cooling or disabled."""
    return "cooling" if stored == "active" and key_id in cooling else stored


async def set_paused(pg: Conn, redis: Redis, provider: str, paused: bool) -> None:
    """Pause or resume by hand. A resume also marks today's spend as the point
    from which the stop threshold counts again; Redis failing that raises after
    the resume itself is done. Callers then tell the proxies (PROVIDERS_MESSAGE)."""
    await db.set_paused(pg, provider, paused, "paused by operator" if paused else None)
    if not paused:
        await daily.mark_resume(redis, provider)
