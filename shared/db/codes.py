"""Redemption codes: create (only a hash is stored), list, redeem exactly once."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg

from shared.db import users
from shared.db.users import Conn

CODE_PREFIX = "mwc-"
MAX_CODE_LENGTH = 200


def new_code() -> str:
    """192 random bits, URL-safe: `mwc-` + 32 characters."""
    return CODE_PREFIX + secrets.token_urlsafe(24)


def hash_code(code: str) -> bytes:
    """Codes are high-entropy random strings: one SHA-256 is the right hash."""
    return hashlib.sha256(code.strip().encode("utf-8", "surrogatepass")).digest()


def external_id(code_id: int) -> str:
    return f"code:{code_id}"


@dataclass(frozen=True, slots=True)
class CodeRow:
    id: int
    amount_usd: Decimal
    state: str
    redeemed_by: str | None
    redeemed_at: datetime | None
    expires_at: datetime | None
    note: str | None
    created_at: datetime


async def create_batch(
    conn: asyncpg.Connection,
    amount: Decimal,
    count: int,
    *,
    expires_at: datetime | None,
    note: str | None,
    created_by: str,
) -> list[tuple[int, str]]:
    """Makes `count` codes in one transaction; returns (id, code) pairs. The codes
    themselves exist only in this return value."""
    codes = [new_code() for _ in range(count)]
    async with conn.transaction():
        rows = await conn.fetch(
            "INSERT INTO redemption_codes (code_hash, amount_usd, expires_at, note, created_by)"
            " SELECT h, $2, $3, $4, $5 FROM unnest($1::bytea[]) WITH ORDINALITY AS t(h, n)"
            " ORDER BY n RETURNING id",
            [hash_code(c) for c in codes],
            amount,
            expires_at,
            note,
            created_by,
        )
    return [(r["id"], code) for r, code in zip(rows, codes, strict=True)]


async def list_codes(conn: Conn, limit: int = 10_000) -> list[CodeRow]:
    rows = await conn.fetch(
        "SELECT c.id, c.amount_usd, c.redeemed_at, c.expires_at, c.note, c.created_at,"
        " u.email AS redeemed_by,"
        " CASE WHEN c.redeemed_by IS NOT NULL THEN 'redeemed'"
        " WHEN c.expires_at IS NOT NULL AND c.expires_at <= now() THEN 'expired'"
        " ELSE 'open' END AS state"
        " FROM redemption_codes c LEFT JOIN users u ON u.id = c.redeemed_by"
        " ORDER BY c.id DESC LIMIT $1",
        limit,
    )
    return [CodeRow(**dict(r)) for r in rows]


class CodeRefused(Exception):
    """`reason` is `invalid_code` (unknown or expired) or `code_already_redeemed`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def redeem(conn: asyncpg.Connection, user_id: int, code: str) -> tuple[Decimal, Decimal, int]:
    """Credits the code to the user, once: the UPDATE takes the code's row lock,
    so of many racing transactions (any instance) exactly one finds it open.
    Returns (credited, new balance, balance version); raises CodeRefused."""
    code_hash = hash_code(code)
    async with conn.transaction():
        row = await conn.fetchrow(
            "UPDATE redemption_codes SET redeemed_by = $2, redeemed_at = now()"
            " WHERE code_hash = $1 AND redeemed_by IS NULL"
            " AND (expires_at IS NULL OR expires_at > now()) RETURNING id, amount_usd",
            code_hash,
            user_id,
        )
        if row is None:
            found = await conn.fetchrow(
                "SELECT redeemed_by FROM redemption_codes WHERE code_hash = $1", code_hash
            )
            if found is not None and found["redeemed_by"] is not None:
                raise CodeRefused("code_already_redeemed")
            raise CodeRefused("invalid_code")
        balance, version = await users.change_balance(
            conn,
            user_id,
            row["amount_usd"],
            kind="redemption",
            note=f"redemption code #{row['id']}",
            external_id=external_id(row["id"]),
        )
    return row["amount_usd"], balance, version
