"""The Postgres statements of batch settlement: few round trips per batch.

Rows go to Postgres as one array of a row type (`settle_usage_row_v2`,
`settle_ledger_row`): asyncpg encodes that with less than half the CPU of one
array per column, and Postgres reads it faster too. Money goes as text
(`str(Decimal)`, exact) cast to NUMERIC by the statement: asyncpg's binary
NUMERIC encoder costs about five times more CPU per value.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import asyncpg
import structlog

from shared.events import UsageEvent
from shared.money import MAX_BALANCE, exact

log = structlog.get_logger("meterway.settle")


async def lock_users(conn: asyncpg.Connection, user_ids: list[int]) -> dict[int, asyncpg.Record]:
    rows = await conn.fetch(
        "SELECT id, email, rate_multiplier, daily_alert_usd, low_balance_usd, balance_usd,"
        " balance_version FROM users WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE",
        user_ids,
    )
    return {row["id"]: row for row in rows}


@dataclass(frozen=True, slots=True)
class Inserted:
    """The usage records a batch inserted: request id -> record id, and the
    batch id they carry for counting (None: nothing was new)."""

    records: dict[str, int]
    batch: int | None


_INSERT_USAGE = (
    "WITH b AS (SELECT nextval('uncounted_batches_id_seq') AS id)"
    " INSERT INTO usage_records (request_id, user_id, api_key_id, provider_key_id, provider,"
    " model, endpoint, stream, input_tokens, output_tokens, cache_read_tokens,"
    " cache_write_tokens, cache_write_1h_tokens, cost_usd, estimated, outcome,"
    " upstream_request_id, created_at, counted, count_batch, web_search_calls, service_tier,"
    " duration_ms, ttfb_ms)"
    " SELECT r.request_id, r.user_id, k.id, pk.id, r.provider, r.model, r.endpoint, r.stream,"
    " r.input_tokens, r.output_tokens, r.cache_read_tokens, r.cache_write_tokens,"
    " r.cache_write_1h_tokens, r.cost_usd::numeric, r.estimated, r.outcome,"
    " r.upstream_request_id, r.created_at, true, b.id, r.web_search_calls, r.service_tier,"
    " r.duration_ms, r.ttfb_ms"
    " FROM unnest($1::settle_usage_row_v2[]) AS r CROSS JOIN b"
    " LEFT JOIN api_keys k ON k.id = r.api_key_id"
    " LEFT JOIN provider_keys pk ON pk.id = r.provider_key_id"
    " ON CONFLICT (request_id) DO NOTHING RETURNING request_id, id, count_batch"
)


def _usage_rows(events: list[UsageEvent], costs: dict[str, Decimal]) -> list[tuple]:
    """`settle_usage_row_v2` values, in its column order."""
    return [
        (
            e.request_id,
            e.user_id,
            e.api_key_id,
            e.provider_key_id,
            e.provider,
            e.model,
            e.endpoint,
            e.stream,
            e.usage.input_tokens,
            e.usage.output_tokens,
            e.usage.cache_read_tokens,
            e.usage.cache_write_tokens,
            e.usage.cache_write_1h_tokens,
            str(costs[e.request_id]),
            e.estimated,
            e.outcome,
            e.upstream_request_id,
            e.created_at,
            e.usage.web_search_calls,
            e.usage.service_tier,
            e.duration_ms,
            e.ttfb_ms,
        )
        for e in events
    ]


async def insert_usage(
    conn: asyncpg.Connection, events: list[UsageEvent], costs: dict[str, Decimal]
) -> Inserted:
    """Insert the usage records (an event seen before inserts nothing) and, in the
    same transaction, the row that keeps the new ones to be counted."""
    rows = await conn.fetch(_INSERT_USAGE, _usage_rows(events, costs))
    if not rows:
        return Inserted({}, None)
    records = {row["request_id"]: row["id"] for row in rows}
    batch = rows[0]["count_batch"]
    await conn.execute(
        "INSERT INTO uncounted_batches (id, first_record, last_record) VALUES ($1, $2, $3)",
        batch,
        min(records.values()),
        max(records.values()),
    )
    return Inserted(records, batch)


async def charge(
    conn: asyncpg.Connection,
    charged: list[UsageEvent],
    costs: dict[str, Decimal],
    users: dict[int, asyncpg.Record],
) -> dict[int, tuple[Decimal, int]]:
    """Ledger charges and new balances for the new records; returns every locked
    user's balance and version after the batch."""
    balances = {uid: (row["balance_usd"], row["balance_version"]) for uid, row in users.items()}
    ledger: list[tuple[int, str, str, str]] = []
    with exact():  # never rounds: a digit lost here is a difference `meterway reconcile` sees
        for event in charged:
            balance, version = balances[event.user_id]
            cost = costs[event.request_id]
            balance -= cost
            balances[event.user_id] = (balance, version + 1)
            ledger.append((event.user_id, str(-cost), str(balance), event.request_id))
    if not ledger:
        return balances
    for uid, (balance, _) in balances.items():
        if abs(balance) >= MAX_BALANCE:  # settled all the same: a charge is never dropped
            log.error("balance_out_of_range", user_id=uid, balance_usd=str(balance))
    await conn.execute(
        "INSERT INTO ledger (user_id, kind, amount_usd, balance_after, request_id)"
        " SELECT t.user_id, 'charge', t.amount_usd::numeric, t.balance_after::numeric,"
        " t.request_id FROM unnest($1::settle_ledger_row[]) AS t",
        ledger,
    )
    moved = [(uid, b, v) for uid, (b, v) in balances.items() if v != users[uid]["balance_version"]]
    await conn.execute(
        "UPDATE users SET balance_usd = t.b, balance_version = t.v"
        " FROM unnest($1::bigint[], $2::numeric[], $3::bigint[]) AS t(id, b, v)"
        " WHERE users.id = t.id",
        *zip(*moved, strict=True),
    )
    last_used: dict[int, object] = {}
    for event in charged:
        last_used[event.api_key_id] = max(
            last_used.get(event.api_key_id, event.created_at), event.created_at
        )
    await conn.execute(
        "UPDATE api_keys SET last_used_at = GREATEST(last_used_at, t.at)"
        " FROM unnest($1::bigint[], $2::timestamptz[]) AS t(id, at) WHERE api_keys.id = t.id",
        list(last_used),
        list(last_used.values()),
    )
    return balances


async def alert_settings(pg: asyncpg.Pool, user_ids: list[int]) -> list[asyncpg.Record]:
    return await pg.fetch(
        "SELECT id, email, daily_alert_usd, low_balance_usd, balance_usd FROM users"
        " WHERE id = ANY($1::bigint[])",
        user_ids,
    )


async def claim_batch(pg: asyncpg.Pool, batch: int) -> bool:
    """Claim a settled batch's new records for counting; False when another
    worker (handling a redelivery) claimed them first."""
    return (
        await pg.fetchval("DELETE FROM uncounted_batches WHERE id = $1 RETURNING id", batch)
        is not None
    )


_CHARGE_COLUMNS = "user_id, provider, model, api_key_id, created_at, cost_usd, count_batch"


async def claim_redelivered(pg: asyncpg.Pool, request_ids: list[str]) -> list[asyncpg.Record]:
    """For events whose records existed already, claim what is still uncounted:
    the whole batches that inserted them, if no worker claimed those yet (theirs
    died between its commit and its count), and records marked `counted` = false
    (settled before batches were claimed). Returns the claimed records'
    counting columns."""
    async with pg.acquire() as conn, conn.transaction():
        batches = await conn.fetch(
            "WITH b AS (DELETE FROM uncounted_batches WHERE id IN (SELECT count_batch"
            " FROM usage_records WHERE request_id = ANY($1::text[]))"
            " RETURNING id, first_record, last_record)"
            f" SELECT {', '.join('u.' + c for c in _CHARGE_COLUMNS.split(', '))}"
            " FROM b JOIN usage_records u ON u.id BETWEEN b.first_record AND b.last_record"
            " AND u.count_batch = b.id",
            request_ids,
        )
        claimed = list({row["count_batch"] for row in batches})
        legacy = await conn.fetch(
            "UPDATE usage_records SET counted = true"
            " WHERE request_id = ANY($1::text[]) AND NOT counted"
            " AND (count_batch IS NULL OR count_batch <> ALL($2::bigint[]))"
            f" RETURNING {_CHARGE_COLUMNS}",
            request_ids,
            claimed,
        )
    return [*batches, *legacy]
