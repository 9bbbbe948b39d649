"""`meterway reconcile`: print every difference, exit non-zero when there is one."""

from __future__ import annotations

from meterway.context import CommandError, Context
from shared import redis_client
from shared.reconcile import find_differences


async def run(ctx: Context) -> None:
    # the CLI's client is a plain one; a cluster's balance views need the cluster client
    redis = redis_client.connect(ctx.settings) if ctx.settings.redis_cluster else ctx.redis
    try:
        problems = await find_differences(ctx.pg, redis)
    finally:
        if redis is not ctx.redis:
            await redis.aclose()
    for problem in problems:
        print(problem)
    if problems:
        raise CommandError(f"{len(problems)} difference(s) found")
    print("ledger, usage records and Redis balances agree")
