"""Stripe top-ups and refunds in Postgres: each credited once per Checkout Session
id, each refund debited once per refund id (ledger `external_id` is unique too)."""

from __future__ import annotations

from decimal import Decimal

import asyncpg

from shared.db import users


def session_external_id(session_id: str) -> str:
    return f"stripe_session:{session_id}"


def refund_external_id(refund_id: str) -> str:
    return f"stripe_refund:{refund_id}"


def cents_to_usd(cents: int) -> Decimal:
    return Decimal(cents).scaleb(-2)


async def credit_session(
    conn: asyncpg.Connection,
    *,
    session_id: str,
    user_id: int,
    payment_intent: str | None,
    amount_usd: Decimal,
    event_id: str | None,
) -> tuple[Decimal, int] | None:
    """Credits a paid Checkout Session once; None when it was credited before."""
    async with conn.transaction():
        inserted = await conn.fetchval(
            "INSERT INTO stripe_payments (session_id, user_id, payment_intent, amount_usd,"
            " event_id) VALUES ($1, $2, $3, $4, $5)"
            " ON CONFLICT (session_id) DO NOTHING RETURNING session_id",
            session_id,
            user_id,
            payment_intent,
            amount_usd,
            event_id,
        )
        if inserted is None:
            return None
        return await users.change_balance(
            conn,
            user_id,
            amount_usd,
            kind="topup",
            note=f"Stripe payment {session_id}",
            external_id=session_external_id(session_id),
        )


async def payment_of_intent(conn: asyncpg.Connection | asyncpg.Pool, payment_intent: str):
    return await conn.fetchrow(
        "SELECT session_id, user_id, amount_usd FROM stripe_payments WHERE payment_intent = $1",
        payment_intent,
    )


async def debit_refunds(
    conn: asyncpg.Connection,
    *,
    session_id: str,
    user_id: int,
    charge_id: str | None,
    refunds: list[tuple[str, Decimal]],
    event_id: str | None,
) -> tuple[Decimal, int] | None:
    """Debits each (refund id, amount) not debited before; returns the last new
    (balance, version), None when every refund was known already."""
    result = None
    async with conn.transaction():
        for refund_id, amount in refunds:
            inserted = await conn.fetchval(
                "INSERT INTO stripe_refunds (refund_id, session_id, user_id, charge_id,"
                " amount_usd, event_id) VALUES ($1, $2, $3, $4, $5, $6)"
                " ON CONFLICT (refund_id) DO NOTHING RETURNING refund_id",
                refund_id,
                session_id,
                user_id,
                charge_id,
                amount,
                event_id,
            )
            if inserted is None:
                continue
            result = await users.change_balance(
                conn,
                user_id,
                -amount,
                kind="refund",
                note=f"Stripe refund {refund_id} of payment {session_id}",
                external_id=refund_external_id(refund_id),
            )
    return result


async def session_credit(conn, session_id: str, user_id: int) -> Decimal | None:
    """What a session credited to this user, None when not (yet)."""
    return await conn.fetchval(
        "SELECT amount_usd FROM stripe_payments WHERE session_id = $1 AND user_id = $2",
        session_id,
        user_id,
    )
