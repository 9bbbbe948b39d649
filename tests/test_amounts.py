"""Balances stay inside the range the Redis view keeps exactly (CONTRACT.md
section 10): `users.change_balance` refuses a change that would take a balance
to 1e9 USD or beyond either way, with a one-line error the CLI and the
dashboard show, and changes nothing; reconcile reports a balance out there."""

from __future__ import annotations

import secrets
from decimal import Decimal

import pytest

from shared.db import users
from shared.money import MAX_BALANCE, AmountError, BalanceOutOfRange
from shared.reconcile import find_differences


async def new_user(pg) -> users.User:
    return await users.create(pg, f"amounts-{secrets.token_hex(5)}@example.com")


async def ledger_rows(pg, user_id: int) -> int:
    return await pg.fetchval("SELECT count(*) FROM ledger WHERE user_id = $1", user_id)


async def test_a_change_to_a_billion_or_more_is_refused_and_changes_nothing(pg):
    user = await new_user(pg)
    top = Decimal("999999999.999999999999")
    async with pg.acquire() as conn:
        async with conn.transaction():
            assert await users.change_balance(conn, user.id, top, kind="topup") == (top, 1)
        for amount in (Decimal("0.000000000001"), Decimal(1), Decimal("5e20")):
            with pytest.raises(BalanceOutOfRange) as refused:
                async with conn.transaction():
                    await users.change_balance(conn, user.id, amount, kind="topup")
            message = str(refused.value)
            assert "\n" not in message and "1000000000" in message, message
            assert isinstance(refused.value, AmountError | ValueError)
        assert await users.balance(conn, user.id) == (top, 1)
        assert await ledger_rows(conn, user.id) == 1

        # the other way: -999999999.999999999999 is as low as a balance goes
        async with conn.transaction():
            await users.change_balance(conn, user.id, -2 * top, kind="adjustment")
        with pytest.raises(BalanceOutOfRange):
            async with conn.transaction():
                await users.change_balance(
                    conn, user.id, Decimal("-0.000000000001"), kind="adjustment"
                )
        assert await users.balance(conn, user.id) == (-top, 2)
        # back into range from the edge is fine, to the last digit
        async with conn.transaction():
            balance, version = await users.change_balance(
                conn, user.id, top + Decimal("0.000000000001"), kind="topup"
            )
        assert (balance, version) == (Decimal("0.000000000001"), 3)
        assert await ledger_rows(conn, user.id) == 3


async def test_change_balance_refuses_floats_non_finite_and_unknown_users(pg):
    user = await new_user(pg)
    async with pg.acquire() as conn:
        for bad in (0.1, Decimal("NaN"), Decimal("Infinity"), "5"):
            with pytest.raises(TypeError):
                async with conn.transaction():
                    await users.change_balance(conn, user.id, bad, kind="topup")  # type: ignore[arg-type]
        with pytest.raises(LookupError):
            async with conn.transaction():
                await users.change_balance(conn, 2**62, Decimal(1), kind="topup")
        assert await users.balance(conn, user.id) == (Decimal(0), 0)
        assert await ledger_rows(conn, user.id) == 0


async def test_reconcile_reports_a_balance_outside_the_range(pg, redis):
    user = await new_user(pg)
    async with pg.acquire() as conn:
        await conn.execute(  # as a direct SQL edit could leave it
            "UPDATE users SET balance_usd = $2 WHERE id = $1", user.id, MAX_BALANCE
        )
        try:
            problems = [p for p in await find_differences(conn, redis) if user.email in p]
        finally:
            await conn.execute("UPDATE users SET balance_usd = 0 WHERE id = $1", user.id)
        assert any("outside the range" in p for p in problems), problems
        assert not [p for p in await find_differences(conn, redis) if user.email in p]
