"""Read queries and password writes the dashboard needs beyond the per-table modules."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import asyncpg

from shared.db.users import Conn, normalize_email


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time.min, tzinfo=UTC)
    return start, start + timedelta(days=1)


# --- passwords -------------------------------------------------------------------------------


async def login_row(conn: Conn, email: str) -> asyncpg.Record | None:
    """id, password_hash and disabled of the user with this email."""
    return await conn.fetchrow(
        "SELECT id, password_hash, disabled FROM users WHERE email = $1", normalize_email(email)
    )


async def set_password_hash(conn: Conn, user_id: int, password_hash: str) -> bool:
    result = await conn.execute(
        "UPDATE users SET password_hash = $2 WHERE id = $1", user_id, password_hash
    )
    return result.endswith(" 1")


# --- usage -----------------------------------------------------------------------------------


def _usage_filter(
    user_id: int, start: date | None, end: date | None, model: str | None,
    key_id: int | None = None,
) -> tuple[str, list]:  # fmt: skip
    """A user's records from day `start` to day `end` (both included, UTC)."""
    clauses = ["r.user_id = $1"]
    args: list = [user_id]
    if start is not None:
        args.append(day_bounds(start)[0])
        clauses.append(f"r.created_at >= ${len(args)}")
    if end is not None:
        args.append(day_bounds(end)[1])
        clauses.append(f"r.created_at < ${len(args)}")
    if model:
        args.append(model)
        clauses.append(f"r.model = ${len(args)}")
    if key_id is not None:
        args.append(key_id)
        clauses.append(f"r.api_key_id = ${len(args)}")
    return " AND ".join(clauses), args


_OWN_COLUMNS = (
    "r.request_id, r.created_at, r.provider, r.model, r.endpoint, r.stream, r.input_tokens,"
    " r.output_tokens, r.cache_read_tokens, r.cache_write_tokens, r.cost_usd, r.estimated,"
    " r.status, r.api_key_id, k.name AS key_name, k.prefix AS key_prefix"
)
_OWN_FROM = " FROM usage_records r LEFT JOIN api_keys k ON k.id = r.api_key_id"


async def usage_page(
    conn: Conn, user_id: int, *, day: date | None = None, model: str | None = None,
    limit: int, offset: int, start: date | None = None, end: date | None = None,
    key_id: int | None = None,
) -> tuple[list[asyncpg.Record], int]:  # fmt: skip
    """One page of a user's usage records (with the key's name), newest first,
    and the total count. `day` is start = end = day."""
    if day is not None:
        start = end = day
    where, args = _usage_filter(user_id, start, end, model, key_id)
    n = len(args)
    rows = await conn.fetch(
        f"SELECT {_OWN_COLUMNS}{_OWN_FROM} WHERE {where}"
        f" ORDER BY r.created_at DESC, r.id DESC LIMIT ${n + 1} OFFSET ${n + 2}",
        *args,
        limit,
        offset,
    )
    total = await conn.fetchval(f"SELECT count(*) FROM usage_records r WHERE {where}", *args)
    return rows, int(total)


async def usage_rows(
    conn: Conn, user_id: int, *, start: date | None, end: date | None, model: str | None,
    key_id: int | None, limit: int, offset: int,
) -> list[asyncpg.Record]:  # fmt: skip
    """One page of a user's records, newest first: the page's ids are found on the
    (user_id, created_at, id) index alone, then only those rows are read."""
    where, args = _usage_filter(user_id, start, end, model, key_id)
    n = len(args)
    return await conn.fetch(
        f"WITH page AS (SELECT r.id FROM usage_records r WHERE {where}"
        f" ORDER BY r.created_at DESC, r.id DESC LIMIT ${n + 1} OFFSET ${n + 2})"
        f" SELECT {_OWN_COLUMNS}{_OWN_FROM} JOIN page p ON p.id = r.id"
        " ORDER BY r.created_at DESC, r.id DESC",
        *args,
        limit,
        offset,
    )


async def aggregate(conn: Conn, sql: str, *args: object) -> list[asyncpg.Record]:
    """An aggregate over many usage records, with room to sort and hash in memory
    and without JIT compilation (which costs more than it saves on these sizes);
    the settings last for this one transaction."""
    pool_or_conn = conn
    if isinstance(pool_or_conn, asyncpg.Pool):
        async with pool_or_conn.acquire() as c, c.transaction():
            await c.execute(AGGREGATE_SETTINGS)
            return await c.fetch(sql, *args)
    async with conn.transaction():  # type: ignore[union-attr]
        await conn.execute(AGGREGATE_SETTINGS)
        return await conn.fetch(sql, *args)


AGGREGATE_SETTINGS = "SET LOCAL jit = off; SET LOCAL work_mem = '32MB'"


@dataclass(frozen=True, slots=True)
class Summary:
    """A user's usage over a filter, from one scan: the total, per model, per key
    (rows of model or api_key_id, requests, spend, input_tokens, output_tokens;
    biggest spend first) and the spend per UTC day."""

    requests: int
    spend: Decimal
    by_model: list[dict]
    by_key: list[dict]
    by_day: dict[date, Decimal]


def _rollup(rows: list[asyncpg.Record], name: str) -> list[dict]:
    out: dict[object, dict] = {}
    for r in rows:
        acc = out.setdefault(r[name], {name: r[name], "requests": 0, "spend": Decimal(0),
                                       "input_tokens": 0, "output_tokens": 0})  # fmt: skip
        acc["requests"] += r["requests"]
        acc["spend"] += r["spend"]
        acc["input_tokens"] += r["input_tokens"]
        acc["output_tokens"] += r["output_tokens"]
    return sorted(out.values(), key=lambda a: (-a["spend"], str(a[name])))


async def usage_summary(
    conn: Conn, user_id: int, *, start: date | None, end: date | None, model: str | None,
    key_id: int | None,
) -> Summary:  # fmt: skip
    """Requests, tokens and exact spend per model, per API key and per UTC day,
    and in all, over the filter: one statement and one pass over the records,
    grouped by (day, model, key) in Postgres (a few thousand groups at most for
    a month) and rolled up here, exactly (Decimal)."""
    where, args = _usage_filter(user_id, start, end, model, key_id)
    rows = await aggregate(
        conn,
        "SELECT (r.created_at AT TIME ZONE 'UTC')::date AS day, r.model, r.api_key_id,"
        " count(*) AS requests, SUM(r.cost_usd) AS spend, SUM(r.input_tokens) AS input_tokens,"
        f" SUM(r.output_tokens) AS output_tokens FROM usage_records r WHERE {where}"
        " GROUP BY 1, 2, 3",
        *args,
    )
    by_day: dict[date, Decimal] = {}
    for r in rows:
        by_day[r["day"]] = by_day.get(r["day"], Decimal(0)) + r["spend"]
    return Summary(
        requests=sum(r["requests"] for r in rows),
        spend=sum(by_day.values(), Decimal(0)),
        by_model=_rollup(rows, "model"),
        by_key=_rollup(rows, "api_key_id"),
        by_day=by_day,
    )


# --- operators -------------------------------------------------------------------------------


async def search_users(
    conn: Conn, query: str, limit: int = 100, offset: int = 0
) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id, email, is_admin, disabled, rate_multiplier, balance_usd, created_at,"
        " (password_hash IS NOT NULL) AS has_password FROM users"
        " WHERE email LIKE $1 ORDER BY email LIMIT $2 OFFSET $3",
        like_pattern(query.strip().lower()),
        limit,
        offset,
    )


async def recent_ledger(conn: Conn, user_id: int, limit: int = 20) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT kind, amount_usd, balance_after, note, created_at FROM ledger"
        " WHERE user_id = $1 AND kind <> 'charge' ORDER BY id DESC LIMIT $2",
        user_id,
        limit,
    )


async def provider_spend_since(conn: Conn, since: datetime) -> dict[str, Decimal]:
    rows = await conn.fetch(
        "SELECT provider, SUM(cost_usd) AS spend FROM usage_records WHERE settled_at >= $1"
        " GROUP BY provider",
        since,
    )
    return {r["provider"]: Decimal(r["spend"]) for r in rows}


async def paused_for(conn: Conn, user_id: int, everyone: bool) -> list[str]:
    """The paused providers a banner names: for an operator (`everyone`) all of
    them; for a user those among their latest 1000 requests of the last 7 days
    (all of them when there are none). One statement; nothing is read from
    usage_records unless a provider is paused."""
    rows = await conn.fetch(
        "WITH recent AS (SELECT DISTINCT provider FROM (SELECT provider FROM usage_records"
        "  WHERE user_id = $1 AND created_at > now() - interval '7 days'"
        "  ORDER BY created_at DESC LIMIT 1000) s)"
        " SELECT name, $2 OR NOT EXISTS (SELECT 1 FROM recent)"
        "  OR name IN (SELECT provider FROM recent) AS shown"
        " FROM providers WHERE paused AND removed_at IS NULL ORDER BY name",
        user_id,
        everyone,
    )
    return [r["name"] for r in rows if r["shown"]]


async def recent_alerts(conn: Conn, limit: int = 200) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT id, rule, subject, day, message, recipients, created_at, emailed_at, email_error,"
        " webhook_state, webhook_attempts, webhook_error"
        " FROM alerts ORDER BY id DESC LIMIT $1",
        limit,
    )


async def system_stats(conn: Conn, since: datetime) -> asyncpg.Record:
    return await conn.fetchrow(
        "SELECT (SELECT count(*) FROM spooled_events) AS spooled,"
        " (SELECT min(created_at) FROM spooled_events) AS oldest_spooled,"
        " (SELECT count(*) FROM usage_records WHERE estimated AND created_at >= $1)"
        "   AS estimated_today,"
        " (SELECT count(*) FROM usage_records WHERE created_at >= $1) AS records_today,"
        " (SELECT count(*) FROM orphaned_holds WHERE released_at >= $1) AS orphaned_today",
        since,
    )


# --- a bill end to end: keys' spend, usage search, one request -----------------------------


async def key_spends(
    conn: Conn, spans: list[tuple[int, datetime | None, datetime | None]]
) -> dict[int, tuple[Decimal, int]]:
    """Spend and request count of each key in its own span [start, end) (None:
    all time), in one query: {key_id: (spend, requests)}."""
    if not spans:
        return {}
    rows = await conn.fetch(
        "SELECT s.key_id, t.spend, t.requests"
        " FROM unnest($1::bigint[], $2::timestamptz[], $3::timestamptz[]) AS s(key_id, s0, s1)"
        " CROSS JOIN LATERAL (SELECT COALESCE(SUM(r.cost_usd), 0) AS spend, count(*) AS requests"
        "  FROM usage_records r WHERE r.api_key_id = s.key_id"  # a range of its index per key
        "  AND r.created_at >= COALESCE(s.s0, '-infinity')"
        "  AND r.created_at < COALESCE(s.s1, 'infinity')) t",
        [k for k, _, _ in spans],
        [s for _, s, _ in spans],
        [e for _, _, e in spans],
    )
    return {r["key_id"]: (Decimal(r["spend"]), int(r["requests"])) for r in rows}


def like_pattern(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
