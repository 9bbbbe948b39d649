"""The one place that opens Redis clients: a plain Redis, or a Redis Cluster.

With `REDIS_CLUSTER=1` the client is redis-py's asyncio `RedisCluster`, which
routes each command to the master of its key's slot and follows MOVED and ASK
redirections. After a connection error, a timeout or CLUSTERDOWN it reads the
slot map again and sends a single command once more (a pipeline: never; redis-py
runs no pipeline at all with zero attempts). The commands Meterway sends through
it that move money are idempotent scripts (release, publish, reap, load the
key's spend); the holds and enqueues, which are not, go through the runner,
which never sends a script twice after a lost reply. Every Lua script Meterway runs touches keys
of one slot (`shared.redis_keys`); commands without a key (PUBLISH, PING) go to
any node, and PUBLISH reaches subscribers on every node (the cluster bus
forwards it). The proxy's scripts go through `shared.script_runner` instead.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from shared.cluster_runner import ClusterScriptRunner
from shared.config import Settings
from shared.script_runner import ScriptRunner

AnyRedis = Redis | RedisCluster


def connect(settings: Settings, **options: Any) -> AnyRedis:
    """A client for `REDIS_URL` (a cluster when `REDIS_CLUSTER=1`)."""
    if settings.redis_cluster:
        return cluster_client(settings.redis_url, **options)
    return Redis.from_url(settings.redis_url, **options)


def cluster_client(url: str, **options: Any) -> RedisCluster:
    return RedisCluster.from_url(
        url, cluster_error_retry_attempts=1, connection_error_retry_attempts=0, **options
    )


def subscriber(settings: Settings, **options: Any) -> Redis:
    """A plain connection for SUBSCRIBE: on a cluster, the node REDIS_URL names
    (a message published on any node reaches it)."""
    return Redis.from_url(settings.redis_url, **options)


def script_runner(settings: Settings) -> ScriptRunner | ClusterScriptRunner:
    """The pipelined script runner of the proxy's hot path, for a single Redis or a cluster."""
    if settings.redis_cluster:
        return ClusterScriptRunner(settings.redis_url)
    return ScriptRunner(settings.redis_url)


def is_cluster(redis: object) -> bool:
    return isinstance(redis, RedisCluster)
