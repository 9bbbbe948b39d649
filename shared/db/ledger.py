"""A user's ledger as a statement: every top-up, redemption, adjustment and
refund on its own line, usage charges rolled up per UTC day, each line with the
balance after it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal

from shared.db.users import Conn


@dataclass(frozen=True, slots=True)
class Line:
    day: date
    kind: str
    description: str
    amount_usd: Decimal
    balance_usd: Decimal


def month_bounds(year: int, month: int) -> tuple[datetime, datetime]:
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def _describe(kind: str, n: int, note: str | None, external_id: str | None) -> str:
    source, _, ident = (external_id or "").partition(":")
    if kind == "charge":
        return f"Usage: {n} request{'' if n == 1 else 's'}"
    if source == "code":
        return f"Redemption code #{ident}"
    if source == "stripe_session":
        return f"Card payment (Stripe {ident})"
    if source == "stripe_refund":
        return f"Card refund (Stripe {ident})"
    label = "Credit" if kind == "topup" else "Adjustment"
    return f"{label}: {note}" if note else label


async def lines(conn: Conn, user_id: int, start: datetime, end: datetime) -> list[Line]:
    """The statement lines in [start, end), oldest first."""
    rows = await conn.fetch(
        "WITH g AS (SELECT kind, min(created_at) AS first_at, sum(amount_usd) AS amount_usd,"
        " count(*) AS n, min(id) AS first_id, max(id) AS last_id"
        " FROM ledger WHERE user_id = $1 AND created_at >= $2 AND created_at < $3"
        " GROUP BY kind, CASE WHEN kind = 'charge'"
        " THEN (created_at AT TIME ZONE 'UTC')::date::text ELSE id::text END)"
        " SELECT g.kind, (g.first_at AT TIME ZONE 'UTC')::date AS day, g.amount_usd, g.n,"
        " g.last_id, lb.balance_after, lf.note, lf.external_id"
        " FROM g JOIN ledger lb ON lb.id = g.last_id JOIN ledger lf ON lf.id = g.first_id"
        " ORDER BY g.last_id",
        user_id,
        start,
        end,
    )
    return [
        Line(
            r["day"],
            r["kind"],
            _describe(r["kind"], r["n"], r["note"], r["external_id"]),
            r["amount_usd"],
            r["balance_after"],
        )
        for r in rows
    ]


async def balance_before(conn: Conn, user_id: int, when: datetime) -> Decimal:
    """The balance after the last ledger entry before `when` (0 before the first)."""
    value = await conn.fetchval(
        "SELECT balance_after FROM ledger WHERE user_id = $1 AND created_at < $2"
        " ORDER BY id DESC LIMIT 1",
        user_id,
        when,
    )
    return value if value is not None else Decimal(0)


async def months(conn: Conn, user_id: int, now: datetime | None = None) -> list[str]:
    """`YYYY-MM` of every month from the user's first ledger entry to now, newest
    first (one index lookup, whatever the length of the history)."""
    first = await conn.fetchval(
        "SELECT created_at FROM ledger WHERE user_id = $1 ORDER BY id LIMIT 1", user_id
    )
    if first is None:
        return []
    first, last = first.astimezone(UTC), (now or datetime.now(UTC)).astimezone(UTC)
    out, year, month = [], last.year, last.month
    while (year, month) >= (first.year, first.month) and len(out) < 1200:
        out.append(f"{year:04d}-{month:02d}")
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return out
