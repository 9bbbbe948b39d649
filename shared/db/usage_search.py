"""The operators' usage search across users (by user, key, model, day range and
request id) and one request's detail with its ledger charge."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import asyncpg

from shared.db.dashboard import aggregate, day_bounds, like_pattern
from shared.db.users import Conn

SEARCH_COLUMNS = (
    "r.request_id, r.created_at, r.provider, r.model, r.endpoint, r.stream, r.input_tokens,"
    " r.output_tokens, r.cache_read_tokens, r.cache_write_tokens, r.cost_usd, r.estimated,"
    " r.status, r.outcome, r.user_id, u.email, r.api_key_id, k.name AS key_name,"
    " k.prefix AS key_prefix"
)


def usage_search_filter(
    *,
    user: str | None = None,
    user_id: int | None = None,
    user_ids: list[int] | None = None,
    key: str | None = None,
    model: str | None = None,
    start: date | None = None,
    end: date | None = None,
    request_id: str | None = None,
) -> tuple[str, list]:
    """WHERE clause over usage_records r JOIN users u LEFT JOIN api_keys k. `user`:
    an email substring (`user_ids`: the ids it matches, from `matching_users`); `key`: a key
    id or a prefix / name substring; `end` inclusive."""
    clauses, args = ["TRUE"], []

    def add(clause: str, *values: object) -> None:
        for value in values:
            args.append(value)
            clause = clause.replace("?", f"${len(args)}", 1)
        clauses.append(clause)

    if request_id:
        add("r.request_id = ?", request_id)
    if user_id is not None:
        add("r.user_id = ?", user_id)
    if user_ids is not None:  # one user: their records come by the (user_id, created_at) index
        if len(user_ids) == 1:
            add("r.user_id = ?", user_ids[0])
        else:
            add("r.user_id = ANY(?::bigint[])", list(user_ids))
    if user:
        add("u.email LIKE ?", like_pattern(user.lower()))
    if key:
        if key.isascii() and key.isdigit() and len(key) <= 18:
            add("r.api_key_id = ?", int(key))
        else:
            add("(k.prefix LIKE ? OR k.name ILIKE ?)", like_pattern(key), like_pattern(key))
    if model:
        add("r.model = ?", model)
    if start is not None:
        add("r.created_at >= ?", day_bounds(start)[0])
    if end is not None:
        add("r.created_at < ?", day_bounds(end)[1])
    return " AND ".join(clauses), args


async def matching_users(conn: Conn, text: str, limit: int = 1000) -> list[int] | None:
    """The ids of the users whose email contains `text` (None: more than `limit`)."""
    rows = await conn.fetch(
        "SELECT id FROM users WHERE email LIKE $1 ORDER BY id LIMIT $2",
        like_pattern(text.strip().lower()),
        limit + 1,
    )
    return None if len(rows) > limit else [r["id"] for r in rows]


_SEARCH_FROM = (
    " FROM usage_records r JOIN users u ON u.id = r.user_id"
    " LEFT JOIN api_keys k ON k.id = r.api_key_id"
)


async def usage_search(
    conn: Conn, where: str, args: list, *, limit: int, offset: int, by_time: bool = True
) -> list[asyncpg.Record]:
    """One page of matching records, newest first (one query; ask limit+1 to know
    more): by request time, or (`by_time=False`, across every user) by settlement
    order, which the primary key serves without reading every record."""
    n = len(args)
    order = "r.created_at DESC, r.id DESC" if by_time else "r.id DESC"
    return await conn.fetch(
        f"SELECT {SEARCH_COLUMNS}{_SEARCH_FROM} WHERE {where}"
        f" ORDER BY {order} LIMIT ${n + 1} OFFSET ${n + 2}",
        *args,
        limit,
        offset,
    )


async def usage_search_totals(conn: Conn, where: str, args: list) -> asyncpg.Record:
    """Count, exact cost and tokens of every matching record."""
    rows = await aggregate(
        conn,
        "SELECT count(*) AS n, COALESCE(SUM(r.cost_usd), 0) AS cost,"
        " COALESCE(SUM(r.input_tokens), 0) AS input_tokens,"
        f" COALESCE(SUM(r.output_tokens), 0) AS output_tokens{_SEARCH_FROM} WHERE {where}",
        *args,
    )
    return rows[0]


async def request_detail(conn: Conn, request_id: str) -> asyncpg.Record | None:
    """One usage record with its user, key and provider key names (one query)."""
    return await conn.fetchrow(
        "SELECT r.*, u.email, u.rate_multiplier AS user_rate_multiplier, k.name AS key_name,"
        " k.prefix AS key_prefix, pk.name AS provider_key_name,"
        " pk.prefix AS provider_key_prefix"
        " FROM usage_records r JOIN users u ON u.id = r.user_id"
        " LEFT JOIN api_keys k ON k.id = r.api_key_id"
        " LEFT JOIN provider_keys pk ON pk.id = r.provider_key_id"
        " WHERE r.request_id = $1",
        request_id,
    )


async def ledger_charge(conn: Conn, request_id: str) -> Decimal | None:
    """The ledger's charge of one request (negative), where it has one."""
    return await conn.fetchval(
        "SELECT amount_usd FROM ledger WHERE request_id = $1 AND kind = 'charge'", request_id
    )
