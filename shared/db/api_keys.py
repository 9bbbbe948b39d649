"""Queries on `api_keys`: proxy keys, stored only as a SHA-256 hash."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

import asyncpg

from shared.db.users import Conn
from shared.periods import period_end, period_start


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
    # CONTRACT.md section 6; None: no budget (then no period), every model, never expires
    budget_usd: Decimal | None = None
    budget_period: str | None = None
    models: tuple[str, ...] | None = None
    expires_at: datetime | None = None


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
    # the key's controls; expiry is the proxy's to check against its clock
    budget_usd: Decimal | None = None
    budget_period: str | None = None
    models: tuple[str, ...] | None = None
    expires_at: datetime | None = None


_COLUMNS = (
    "id, user_id, name, prefix, rpm_limit, tpm_limit, created_at, last_used_at, revoked_at,"
    " budget_usd, budget_period, models, expires_at"
)


class _Unset:
    """The type of `UNSET`, the sentinel of `set_controls`: a field not given
    is left as it is (None clears it)."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()


def _fields(row: asyncpg.Record) -> dict[str, Any]:
    values = dict(row)
    if values.get("models") is not None:
        values["models"] = tuple(values["models"])
    return values


def _key(row: asyncpg.Record) -> ApiKey:
    return ApiKey(**_fields(row))


async def create(
    conn: Conn,
    user_id: int,
    key_hash: bytes,
    prefix: str,
    *,
    name: str = "",
    rpm_limit: int | None = None,
    tpm_limit: int | None = None,
    budget_usd: Decimal | None = None,
    budget_period: str | None = None,
    models: tuple[str, ...] | list[str] | None = None,
    expires_at: datetime | None = None,
) -> ApiKey:
    """A new key. A budget without a period gets `month`; a period without a
    budget is dropped (both by the database)."""
    row = await conn.fetchrow(
        "INSERT INTO api_keys (user_id, key_hash, prefix, name, rpm_limit, tpm_limit,"
        " budget_usd, budget_period, models, expires_at)"
        f" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {_COLUMNS}",
        user_id,
        key_hash,
        prefix,
        name,
        rpm_limit,
        tpm_limit,
        budget_usd,
        budget_period,
        list(models) if models is not None else None,
        expires_at,
    )
    return _key(row)


async def set_controls(
    conn: Conn,
    key_id: int,
    *,
    budget_usd: Decimal | _Unset | None = UNSET,
    budget_period: str | _Unset | None = UNSET,
    models: tuple[str, ...] | list[str] | _Unset | None = UNSET,
    expires_at: datetime | _Unset | None = UNSET,
    rpm: int | _Unset | None = UNSET,
    tpm: int | _Unset | None = UNSET,
) -> ApiKey | None:
    """Change only the controls given (None clears one); returns the updated
    key, or None when there is no such key. Clearing the budget clears its
    period; a budget set without a period keeps the key's period, or `month`."""
    changes: dict[str, object] = {}
    for column, value in (
        ("budget_usd", budget_usd),
        ("budget_period", budget_period),
        ("expires_at", expires_at),
        ("rpm_limit", rpm),
        ("tpm_limit", tpm),
    ):
        if value is not UNSET:
            changes[column] = value
    if models is not UNSET:
        changes["models"] = list(models) if models is not None else None
    if not changes:
        row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM api_keys WHERE id = $1", key_id)
        return _key(row) if row else None
    sets = ", ".join(f"{column} = ${i}" for i, column in enumerate(changes, start=2))
    row = await conn.fetchrow(
        f"UPDATE api_keys SET {sets} WHERE id = $1 RETURNING {_COLUMNS}",
        key_id,
        *changes.values(),
    )
    return _key(row) if row else None


async def spend_in_period(conn: Conn, key_id: int, period: str, at: datetime) -> Decimal:
    """The exact settled spend of a key in the period (`day`, `week`, `month`,
    `total`) containing `at`: the sum of its usage records created in it."""
    start, end = period_start(period, at), period_end(period, at)
    if start is None:
        value = await conn.fetchval(
            "SELECT COALESCE(SUM(cost_usd), 0) FROM usage_records WHERE api_key_id = $1", key_id
        )
    else:
        value = await conn.fetchval(
            "SELECT COALESCE(SUM(cost_usd), 0) FROM usage_records"
            " WHERE api_key_id = $1 AND created_at >= $2 AND created_at < $3",
            key_id,
            start,
            end,
        )
    return Decimal(value)


async def spend_and_version(
    conn: Conn, key_id: int, period: str, at: datetime
) -> tuple[Decimal, int] | None:
    """`spend_in_period` and its owner's balance version, in one statement (one
    snapshot): the spend includes exactly the settlements up to that version."""
    start, end = period_start(period, at), period_end(period, at)
    row = await conn.fetchrow(
        "SELECT u.balance_version,"
        " (SELECT COALESCE(SUM(r.cost_usd), 0) FROM usage_records r WHERE r.api_key_id = k.id"
        "  AND ($2::timestamptz IS NULL OR (r.created_at >= $2 AND r.created_at < $3))) AS spend"
        " FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.id = $1",
        key_id,
        start,
        end,
    )
    return (Decimal(row["spend"]), row["balance_version"]) if row else None


async def list_for_user(conn: Conn, user_id: int) -> list[ApiKey]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM api_keys WHERE user_id = $1 ORDER BY id", user_id
    )
    return [_key(r) for r in rows]


async def get(conn: Conn, key_id: int) -> ApiKey | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM api_keys WHERE id = $1", key_id)
    return _key(row) if row else None


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
        " k.tpm_limit, (k.revoked_at IS NULL AND NOT u.disabled) AS usable,"
        " k.budget_usd, k.budget_period, k.models, k.expires_at"
        " FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.key_hash = $1",
        key_hash,
    )
    return KeyOwner(**_fields(row)) if row else None


async def touch_last_used(conn: Conn, key_ids: list[int]) -> None:
    await conn.execute(
        "UPDATE api_keys SET last_used_at = now() WHERE id = ANY($1::bigint[])", key_ids
    )
