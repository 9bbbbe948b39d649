"""Queries on `providers` (pause state, thresholds) and `provider_keys`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from shared.db.users import Conn


@dataclass(frozen=True, slots=True)
class ProviderRow:
    name: str
    paused: bool
    paused_reason: str | None
    warn_usd: Decimal | None
    stop_usd: Decimal | None


@dataclass(frozen=True, slots=True)
class ProviderKeyRow:
    id: int
    provider: str
    name: str
    prefix: str
    status: str
    created_at: datetime
    secret_enc: bytes


async def list_providers(conn: Conn) -> list[ProviderRow]:
    rows = await conn.fetch(
        "SELECT name, paused, paused_reason, warn_usd, stop_usd FROM providers ORDER BY name"
    )
    return [ProviderRow(**dict(r)) for r in rows]


async def set_paused(conn: Conn, name: str, paused: bool, reason: str | None = None) -> bool:
    result = await conn.execute(
        "UPDATE providers SET paused = $2, paused_reason = $3,"
        " paused_at = CASE WHEN $2 THEN now() ELSE NULL END, updated_at = now()"
        " WHERE name = $1",
        name,
        paused,
        reason if paused else None,
    )
    return result.endswith(" 1")


async def set_thresholds(
    conn: Conn, name: str, *, warn_usd: Decimal | None, stop_usd: Decimal | None
) -> None:
    await conn.execute(
        "UPDATE providers SET warn_usd = COALESCE($2, warn_usd),"
        " stop_usd = COALESCE($3, stop_usd), updated_at = now() WHERE name = $1",
        name,
        warn_usd,
        stop_usd,
    )


async def add_key(conn: Conn, provider: str, name: str, prefix: str, secret_enc: bytes) -> int:
    return await conn.fetchval(
        "INSERT INTO provider_keys (provider, name, prefix, secret_enc)"
        " VALUES ($1, $2, $3, $4) RETURNING id",
        provider,
        name,
        prefix,
        secret_enc,
    )


async def list_keys(conn: Conn, provider: str | None = None) -> list[ProviderKeyRow]:
    rows = await conn.fetch(
        "SELECT id, provider, name, prefix, status, created_at, secret_enc FROM provider_keys"
        " WHERE $1::text IS NULL OR provider = $1 ORDER BY id",
        provider,
    )
    return [ProviderKeyRow(**dict(r)) for r in rows]


async def set_key_status(conn: Conn, key_id: int, status: str, reason: str | None = None) -> bool:
    result = await conn.execute(
        "UPDATE provider_keys SET status = $2, status_reason = $3, updated_at = now()"
        " WHERE id = $1",
        key_id,
        status,
        reason,
    )
    return result.endswith(" 1")


async def remove_key(conn: Conn, key_id: int) -> bool:
    result = await conn.execute("DELETE FROM provider_keys WHERE id = $1", key_id)
    return result.endswith(" 1")
