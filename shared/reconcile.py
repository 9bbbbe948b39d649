"""Checks the ledger, the usage records and the Redis balance view against each other."""

from __future__ import annotations

import asyncpg
from redis.asyncio import Redis

from shared import redis_keys
from shared.money import MAX_BALANCE, units_floor, usd_str


async def find_differences(pg: asyncpg.Connection, redis: Redis) -> list[str]:
    problems: list[str] = []
    for row in await pg.fetch(
        "SELECT u.id, u.email, u.balance_usd, COALESCE(SUM(l.amount_usd), 0) AS ledger_sum"
        " FROM users u LEFT JOIN ledger l ON l.user_id = u.id GROUP BY u.id ORDER BY u.id"
    ):
        if row["balance_usd"] != row["ledger_sum"]:
            balance, ledger_sum = row["balance_usd"], row["ledger_sum"]
            problems.append(f"user {row['email']}: balance {balance} != ledger sum {ledger_sum}")
    for row in await pg.fetch(
        "SELECT r.request_id, r.cost_usd, l.amount_usd FROM usage_records r"
        " LEFT JOIN ledger l ON l.request_id = r.request_id"
        " WHERE l.id IS NULL OR l.amount_usd <> -r.cost_usd OR l.user_id <> r.user_id"
    ):
        cost, charge = row["cost_usd"], row["amount_usd"]
        problems.append(f"usage {row['request_id']}: cost {cost} but ledger charge {charge}")
    for row in await pg.fetch(
        "SELECT l.request_id FROM ledger l LEFT JOIN usage_records r"
        " ON r.request_id = l.request_id WHERE l.kind = 'charge' AND r.id IS NULL"
    ):
        problems.append(f"ledger charge {row['request_id']} has no usage record")
    for row in await pg.fetch("SELECT id, email, balance_usd, balance_version FROM users"):
        if abs(row["balance_usd"]) >= MAX_BALANCE:
            problems.append(
                f"user {row['email']}: balance {usd_str(row['balance_usd'])} USD is outside"
                f" the range the Redis view keeps exactly (below {usd_str(MAX_BALANCE)} either way)"
            )
        problems.extend(await _check_view(redis, row))
    return problems


async def _check_view(redis: Redis, row: asyncpg.Record) -> list[str]:
    user_id, email = row["id"], row["email"]
    view = await redis.hgetall(redis_keys.balance(user_id))
    if not view or b"units" not in view:
        return []  # no view yet: the proxy loads it from Postgres on first use
    problems = []
    version = int(view[b"ver"])
    if version != row["balance_version"]:
        problems.append(
            f"user {email}: Redis balance version {version} != Postgres {row['balance_version']}"
        )
    elif int(view[b"units"]) != units_floor(row["balance_usd"]):
        problems.append(
            f"user {email}: Redis balance {int(view[b'units'])} units"
            f" != Postgres {units_floor(row['balance_usd'])}"
        )
    holds = await redis.hvals(redis_keys.holds(user_id))
    held = int(view.get(b"held", 0))
    if held != sum(int(h) for h in holds):
        problems.append(f"user {email}: held total {held} != sum of holds {sum(map(int, holds))}")
    return problems
