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
    problems.extend(await money_in_differences(pg))
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


# Money in (contract section 7): each source of money is credited once and only once.
_SOURCES = [
    # (what, source rows with their ledger external id, user and signed amount)
    (
        "redemption code",
        "SELECT 'code:' || id AS ext, redeemed_by AS user_id, amount_usd AS amount"
        " FROM redemption_codes WHERE redeemed_by IS NOT NULL",
    ),
    (
        "Stripe session",
        "SELECT 'stripe_session:' || session_id AS ext, user_id, amount_usd AS amount"
        " FROM stripe_payments",
    ),
    (
        "Stripe refund",
        "SELECT 'stripe_refund:' || refund_id AS ext, user_id, -amount_usd AS amount"
        " FROM stripe_refunds",
    ),
]


async def money_in_differences(pg: asyncpg.Connection) -> list[str]:
    """Every external id in the ledger once; every redeemed code, credited Stripe
    session and debited refund with exactly one matching ledger entry (and the
    reverse); and the ledger's top-ups (every entry that is not a usage charge)
    equal codes redeemed + Stripe credits (net of refunds) + operator adjustments
    (the entries without an external id)."""
    problems: list[str] = []
    for row in await pg.fetch(
        "SELECT external_id, count(*) AS n FROM ledger WHERE external_id IS NOT NULL"
        " GROUP BY external_id HAVING count(*) > 1 ORDER BY external_id"
    ):
        problems.append(f"external id {row['external_id']} is in the ledger {row['n']} times")
    for what, source in _SOURCES:
        for row in await pg.fetch(
            f"SELECT s.ext, s.user_id, s.amount, count(l.id) AS n,"
            f" bool_and(l.user_id = s.user_id AND l.amount_usd = s.amount) AS same"
            f" FROM ({source}) s LEFT JOIN ledger l ON l.external_id = s.ext"
            f" GROUP BY s.ext, s.user_id, s.amount"
            f" HAVING count(l.id) <> 1 OR NOT bool_and(l.user_id = s.user_id"
            f" AND l.amount_usd = s.amount) ORDER BY s.ext"
        ):
            if row["n"] != 1:
                problems.append(f"{what} {row['ext']}: {row['n']} ledger entries, not 1")
            else:
                problems.append(f"{what} {row['ext']}: ledger entry differs in user or amount")
    sources = " UNION ALL ".join(f"({q})" for _, q in _SOURCES)
    for row in await pg.fetch(
        f"SELECT l.external_id FROM ledger l LEFT JOIN ({sources}) s ON s.ext = l.external_id"
        " WHERE l.external_id IS NOT NULL AND s.ext IS NULL ORDER BY l.id"
    ):
        problems.append(f"ledger entry {row['external_id']} has no code, session or refund")
    totals = await pg.fetchrow(
        "SELECT"
        " (SELECT COALESCE(sum(amount_usd), 0) FROM ledger WHERE kind <> 'charge') AS topups,"
        " (SELECT COALESCE(sum(amount_usd), 0) FROM redemption_codes"
        "  WHERE redeemed_by IS NOT NULL) AS codes,"
        " (SELECT COALESCE(sum(amount_usd), 0) FROM stripe_payments)"
        "  - (SELECT COALESCE(sum(amount_usd), 0) FROM stripe_refunds) AS stripe,"
        " (SELECT COALESCE(sum(amount_usd), 0) FROM ledger WHERE external_id IS NULL"
        "  AND kind IN ('topup', 'adjustment')) AS operator"
    )
    expected = totals["codes"] + totals["stripe"] + totals["operator"]
    if totals["topups"] != expected:
        problems.append(
            f"ledger top-ups {usd_str(totals['topups'])} != codes redeemed"
            f" {usd_str(totals['codes'])} + Stripe {usd_str(totals['stripe'])}"
            f" + operator adjustments {usd_str(totals['operator'])}"
        )
    return problems
