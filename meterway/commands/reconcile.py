"""`meterway reconcile`: print every difference, exit non-zero when there is one."""

from __future__ import annotations

from meterway.context import CommandError, Context
from shared.reconcile import find_differences


async def run(ctx: Context) -> None:
    problems = await find_differences(ctx.pg, ctx.redis)
    for problem in problems:
        print(problem)
    if problems:
        raise CommandError(f"{len(problems)} difference(s) found")
    print("ledger, usage records and Redis balances agree")
