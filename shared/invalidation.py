"""Cache invalidation messages from writers (CLI, dashboard, worker) to proxies.

Proxies cache key lookups and provider state in process and drop entries when a
message arrives on one Redis pub/sub channel (on a cluster, a proxy subscribes
on one node; a message published on any node reaches it). Messages are short strings:
`key:<sha256 hex>`, `user:<id>`, `providers`, `cool:<provider key id>:<seconds>`.
"""

from __future__ import annotations

from redis.asyncio import Redis

from shared.redis_keys import INVALIDATE_CHANNEL


async def publish(redis: Redis, *messages: str) -> None:
    """On a Redis Cluster the message goes to any node, and the cluster bus hands
    it to the subscribers of every node (redis-py's cluster client has no
    `publish`: the command is sent as it is)."""
    for message in messages:
        await redis.execute_command("PUBLISH", INVALIDATE_CHANNEL, message)


def key_message(key_hash: bytes) -> str:
    return f"key:{key_hash.hex()}"


def user_message(user_id: int) -> str:
    return f"user:{user_id}"


PROVIDERS_MESSAGE = "providers"


def cooling_message(provider_key_id: int, seconds: float) -> str:
    return f"cool:{provider_key_id}:{seconds:.3f}"
