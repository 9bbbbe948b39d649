"""Queries on `api_keys`: proxy keys, stored only as a SHA-256 hash."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from shared.db.users import Conn


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: int
    user_id: int
    name: str
    prefix: str
    rpm_limit: int | None
    tpm_limit: int | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class KeyOwner:
    """What the proxy needs to know about a key and its user, in one lookup."""

    api_key_id: int
    user_id: int
    email: str
    rate_multiplier: Decimal
    rpm_limit: int | None
    tpm_limit: int | None
    usable: bool


_COLUMNS = "id, user_id, name, prefix, rpm_limit, tpm_limit, created_at, last_used_at, revoked_at"


async def create(
    conn: Conn,
    user_id: int,
    key_hash: bytes,
    prefix: str,
    *,
    name: str = "",
    rpm_limit: int | None = None,
    tpm_limit: int | None = None,
) -> ApiKey:
    row = await conn.fetchrow(
        f"INSERT INTO api_keys (user_id, key_hash, prefix, name, rpm_limit, tpm_limit)"
        f" VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_COLUMNS}",
        user_id,
        key_hash,
        prefix,
        name,
        rpm_limit,
        tpm_limit,
    )
    return ApiKey(**dict(row))


async def list_for_user(conn: Conn, user_id: int) -> list[ApiKey]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM api_keys WHERE user_id = $1 ORDER BY id", user_id
    )
    return [ApiKey(**dict(r)) for r in rows]


async def get(conn: Conn, key_id: int) -> ApiKey | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM api_keys WHERE id = $1", key_id)
    return ApiKey(**dict(row)) if row else None


async def hash_of(conn: Conn, key_id: int) -> bytes | None:
    return await conn.fetchval("SELECT key_hash FROM api_keys WHERE id = $1", key_id)


async def revoke_by_hash(conn: Conn, key_hash: bytes) -> int | None:
    """Revoke; returns the key id, or None when no such key exists."""
    return await conn.fetchval(
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now())"
        " WHERE key_hash = $1 RETURNING id",
        key_hash,
    )


async def owner_by_hash(conn: Conn, key_hash: bytes) -> KeyOwner | None:
    row = await conn.fetchrow(
        "SELECT k.id AS api_key_id, k.user_id, u.email, u.rate_multiplier, k.rpm_limit,"
        " k.tpm_limit, (k.revoked_at IS NULL AND NOT u.disabled) AS usable"
        " FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.key_hash = $1",
        key_hash,
    )
    return KeyOwner(**dict(row)) if row else None


async def touch_last_used(conn: Conn, key_ids: list[int]) -> None:
    await conn.execute(
        "UPDATE api_keys SET last_used_at = now() WHERE id = ANY($1::bigint[])", key_ids
    )
