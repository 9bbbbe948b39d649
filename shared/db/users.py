"""Queries on `users` and the balance-changing ledger writes."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import asyncpg

from shared.money import MAX_BALANCE, BalanceOutOfRange, add_exact, usd_str

Conn = asyncpg.Connection | asyncpg.Pool


@dataclass(frozen=True, slots=True)
class User:
    id: int
    email: str
    is_admin: bool
    disabled: bool
    rate_multiplier: Decimal
    balance_usd: Decimal
    balance_version: int
    daily_alert_usd: Decimal | None
    low_balance_usd: Decimal | None


_COLUMNS = (
    "id, email, is_admin, disabled, rate_multiplier, balance_usd, balance_version,"
    " daily_alert_usd, low_balance_usd"
)


def normalize_email(email: str) -> str:
    return email.strip().lower()


async def create(
    conn: Conn,
    email: str,
    *,
    is_admin: bool = False,
    password_hash: str | None = None,
    rate_multiplier: Decimal = Decimal(1),
) -> User:
    row = await conn.fetchrow(
        f"INSERT INTO users (email, is_admin, password_hash, rate_multiplier)"
        f" VALUES ($1, $2, $3, $4) RETURNING {_COLUMNS}",
        normalize_email(email),
        is_admin,
        password_hash,
        rate_multiplier,
    )
    return User(**dict(row))


async def by_email(conn: Conn, email: str) -> User | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM users WHERE email = $1", normalize_email(email)
    )
    return User(**dict(row)) if row else None


async def by_id(conn: Conn, user_id: int) -> User | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM users WHERE id = $1", user_id)
    return User(**dict(row)) if row else None


async def update(conn: Conn, user_id: int, **fields: object) -> None:
    allowed = {"rate_multiplier", "daily_alert_usd", "low_balance_usd", "disabled", "is_admin"}
    unknown = set(fields) - allowed
    if unknown:
        raise ValueError(f"cannot update {sorted(unknown)}")
    if not fields:
        return
    names = list(fields)
    assignments = ", ".join(f"{name} = ${i + 2}" for i, name in enumerate(names))
    await conn.execute(
        f"UPDATE users SET {assignments} WHERE id = $1", user_id, *[fields[n] for n in names]
    )


async def change_balance(
    conn: asyncpg.Connection,
    user_id: int,
    amount_usd: Decimal,
    *,
    kind: str,
    request_id: str | None = None,
    note: str | None = None,
    external_id: str | None = None,
) -> tuple[Decimal, int]:
    """Add `amount_usd` (negative for a charge) and write the ledger row.

    Must run inside the caller's transaction. Returns the new balance and version.
    Postgres does the sum (NUMERIC: exact). A change that would take the balance
    to MAX_BALANCE (1e9 USD) or beyond in absolute value raises BalanceOutOfRange
    and changes nothing; LookupError when there is no such user. `external_id`
    names the source of money in or out (a code, a Stripe session or refund);
    it is unique in the ledger, so a second row for it raises UniqueViolationError.
    """
    if isinstance(amount_usd, int) and not isinstance(amount_usd, bool):
        amount_usd = Decimal(amount_usd)
    if not isinstance(amount_usd, Decimal) or not amount_usd.is_finite():
        raise TypeError(f"a balance change must be a finite Decimal, got {amount_usd!r}")
    row = await conn.fetchrow(
        "UPDATE users SET balance_usd = balance_usd + $2, balance_version = balance_version + 1"
        " WHERE id = $1 AND abs(balance_usd + $2) < $3 RETURNING balance_usd, balance_version",
        user_id,
        amount_usd,
        MAX_BALANCE,
    )
    if row is None:
        current = await conn.fetchval("SELECT balance_usd FROM users WHERE id = $1", user_id)
        if current is None:
            raise LookupError(f"no user {user_id}")
        raise BalanceOutOfRange(
            f"refused: the balance would become {usd_str(add_exact(current, amount_usd))} USD;"
            f" a balance must stay below {usd_str(MAX_BALANCE)} USD in absolute value"
        )
    await conn.execute(
        "INSERT INTO ledger (user_id, kind, amount_usd, balance_after, request_id, note,"
        " external_id) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        user_id,
        kind,
        amount_usd,
        row["balance_usd"],
        request_id,
        note,
        external_id,
    )
    return row["balance_usd"], row["balance_version"]


async def balance(conn: Conn, user_id: int) -> tuple[Decimal, int] | None:
    row = await conn.fetchrow(
        "SELECT balance_usd, balance_version FROM users WHERE id = $1", user_id
    )
    return (row["balance_usd"], row["balance_version"]) if row else None
