"""The Postgres statements of batch settlement: few round trips per batch."""

from __future__ import annotations

from decimal import Decimal

import asyncpg

from shared.events import UsageEvent


async def lock_users(conn: asyncpg.Connection, user_ids: list[int]) -> dict[int, asyncpg.Record]:
    rows = await conn.fetch(
        "SELECT id, email, rate_multiplier, daily_alert_usd, low_balance_usd, balance_usd,"
        " balance_version FROM users WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE",
        user_ids,
    )
    return {row["id"]: row for row in rows}


async def insert_usage(
    conn: asyncpg.Connection, events: list[UsageEvent], costs: dict[str, Decimal]
) -> set[str]:
    """Insert the usage records; returns the request ids that were new."""
    columns = list(
        zip(
            *(
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
                    costs[e.request_id],
                    e.estimated,
                    e.outcome,
                    e.upstream_request_id,
                    e.created_at,
                )
                for e in events
            ),
            strict=True,
        )
    )
    rows = await conn.fetch(
        "INSERT INTO usage_records (request_id, user_id, api_key_id, provider_key_id, provider,"
        " model, endpoint, stream, input_tokens, output_tokens, cache_read_tokens,"
        " cache_write_tokens, cache_write_1h_tokens, cost_usd, estimated, outcome,"
        " upstream_request_id, created_at)"
        " SELECT r.request_id, r.user_id, k.id, pk.id, r.provider, r.model, r.endpoint, r.stream,"
        " r.input_tokens, r.output_tokens, r.cache_read_tokens, r.cache_write_tokens,"
        " r.cache_write_1h_tokens, r.cost_usd, r.estimated, r.outcome, r.upstream_request_id,"
        " r.created_at"
        " FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[],"
        " $6::text[], $7::text[], $8::bool[], $9::bigint[], $10::bigint[], $11::bigint[],"
        " $12::bigint[], $13::bigint[], $14::numeric[], $15::bool[], $16::text[], $17::text[],"
        " $18::timestamptz[]) AS r(request_id, user_id, api_key_id, provider_key_id, provider,"
        " model, endpoint, stream, input_tokens, output_tokens, cache_read_tokens,"
        " cache_write_tokens, cache_write_1h_tokens, cost_usd, estimated, outcome,"
        " upstream_request_id, created_at)"
        " LEFT JOIN api_keys k ON k.id = r.api_key_id"
        " LEFT JOIN provider_keys pk ON pk.id = r.provider_key_id"
        " ON CONFLICT (request_id) DO NOTHING RETURNING request_id",
        *columns,
    )
    return {row["request_id"] for row in rows}


async def charge(
    conn: asyncpg.Connection,
    charged: list[UsageEvent],
    costs: dict[str, Decimal],
    users: dict[int, asyncpg.Record],
) -> dict[int, tuple[Decimal, int]]:
    """Ledger charges and new balances for the new records; returns every locked
    user's balance and version after the batch."""
    balances = {uid: (row["balance_usd"], row["balance_version"]) for uid, row in users.items()}
    ledger: list[tuple[int, Decimal, Decimal, str]] = []
    for event in charged:
        balance, version = balances[event.user_id]
        balance -= costs[event.request_id]
        balances[event.user_id] = (balance, version + 1)
        ledger.append((event.user_id, -costs[event.request_id], balance, event.request_id))
    if not ledger:
        return balances
    await conn.execute(
        "INSERT INTO ledger (user_id, kind, amount_usd, balance_after, request_id)"
        " SELECT u, 'charge', a, b, r FROM unnest($1::bigint[], $2::numeric[], $3::numeric[],"
        " $4::text[]) AS t(u, a, b, r)",
        *zip(*ledger, strict=True),
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


async def claim_counting(pg: asyncpg.Pool, request_ids: list[str]) -> dict[str, Decimal]:
    """Mark records as counted; returns those not counted before, with their cost."""
    rows = await pg.fetch(
        "UPDATE usage_records SET counted = true"
        " WHERE request_id = ANY($1::text[]) AND NOT counted RETURNING request_id, cost_usd",
        request_ids,
    )
    return {row["request_id"]: row["cost_usd"] for row in rows}
