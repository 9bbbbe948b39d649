"""Queries on `usage_records`: one row per billed request, unique by request id."""

from __future__ import annotations

from datetime import UTC, datetime, time
from decimal import Decimal

import asyncpg

from shared.db.users import Conn

_LIST_COLUMNS = (
    "request_id, created_at, provider, model, endpoint, stream, input_tokens, output_tokens,"
    " cache_read_tokens, cache_write_tokens, cost_usd, estimated, status, web_search_calls,"
    " service_tier"
)


async def recent_for_user(conn: Conn, user_id: int, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT {_LIST_COLUMNS} FROM usage_records WHERE user_id = $1"
        " ORDER BY created_at DESC, id DESC LIMIT $2",
        user_id,
        limit,
    )


def start_of_utc_day(now: datetime | None = None) -> datetime:
    now = now or datetime.now(UTC)
    return datetime.combine(now.date(), time.min, tzinfo=UTC)


async def spend_since(conn: Conn, user_id: int, since: datetime) -> Decimal:
    value = await conn.fetchval(
        "SELECT COALESCE(SUM(cost_usd), 0) FROM usage_records"
        " WHERE user_id = $1 AND created_at >= $2",
        user_id,
        since,
    )
    return Decimal(value)


async def account_snapshot(
    conn: Conn, user_id: int, since: datetime
) -> tuple[int, str, Decimal, Decimal] | None:
    """(id, email, balance, spend since `since`) read in one statement, so in one
    snapshot: the spend counts exactly the settled records the balance reflects."""
    row = await conn.fetchrow(
        "SELECT u.id, u.email, u.balance_usd,"
        " (SELECT COALESCE(SUM(r.cost_usd), 0) FROM usage_records r"
        "  WHERE r.user_id = u.id AND r.created_at >= $2) AS spend"
        " FROM users u WHERE u.id = $1",
        user_id,
        since,
    )
    if row is None:
        return None
    return row["id"], row["email"], row["balance_usd"], Decimal(row["spend"])
