"""shared.periods: UTC calendar periods of key budgets, and the api_keys queries
that use them (set_controls, spend_in_period) against real Postgres."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import asyncpg
import pytest

from shared.db import api_keys, users
from shared.key_view import iso_z, key_document, load_document, spend_period
from shared.keys import hash_proxy_key, new_proxy_key, visible_prefix
from shared.periods import PERIODS, period_end, period_id, period_start


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_day():
    at = utc(2026, 12, 1, 13, 45, 7, 123)
    assert period_start("day", at) == utc(2026, 12, 1)
    assert period_end("day", at) == utc(2026, 12, 2)
    assert period_id("day", at) == "d20261201"
    assert period_id("day", utc(2026, 12, 1, 23, 59, 59, 999999)) == "d20261201"
    assert period_id("day", utc(2026, 12, 2)) == "d20261202"
    assert period_end("day", utc(2026, 12, 31, 12)) == utc(2027, 1, 1)


def test_week_is_iso_from_monday():
    sunday_late = utc(2026, 12, 6, 23, 59, 59, 999999)  # Sunday
    monday = utc(2026, 12, 7)
    assert sunday_late.weekday() == 6 and monday.weekday() == 0
    assert period_start("week", sunday_late) == utc(2026, 11, 30)
    assert period_end("week", sunday_late) == monday
    assert period_start("week", monday) == monday
    assert period_end("week", monday) == utc(2026, 12, 14)
    assert period_id("week", sunday_late) == "w2026W49"
    assert period_id("week", monday) == "w2026W50"
    assert period_id("week", utc(2026, 12, 1)) == "w2026W49"


def test_year_end_iso_weeks():
    # 2026-12-31 is a Thursday: ISO week 53 of 2026, which runs to Sunday 2027-01-03
    assert period_id("week", utc(2026, 12, 31)) == "w2026W53"
    assert period_id("week", utc(2027, 1, 1)) == "w2026W53"
    assert period_id("week", utc(2027, 1, 3, 23, 59, 59)) == "w2026W53"
    assert period_id("week", utc(2027, 1, 4)) == "w2027W01"
    assert period_start("week", utc(2027, 1, 1)) == utc(2026, 12, 28)
    assert period_end("week", utc(2027, 1, 1)) == utc(2027, 1, 4)
    # 2024-12-30 (Monday) already belongs to ISO week 1 of 2025
    assert period_id("week", utc(2024, 12, 30)) == "w2025W01"
    assert period_id("week", utc(2024, 12, 29, 23, 59)) == "w2024W52"
    assert period_id("month", utc(2024, 12, 30)) == "m202412"


def test_month_ends():
    assert period_start("month", utc(2026, 12, 31, 23, 59, 59)) == utc(2026, 12, 1)
    assert period_end("month", utc(2026, 12, 31, 23, 59, 59)) == utc(2027, 1, 1)
    assert period_id("month", utc(2026, 12, 31, 23, 59, 59)) == "m202612"
    assert period_id("month", utc(2027, 1, 1)) == "m202701"
    assert period_end("month", utc(2028, 2, 29, 12)) == utc(2028, 3, 1)  # leap year
    assert period_end("month", utc(2026, 1, 31)) == utc(2026, 2, 1)
    assert period_start("month", utc(2026, 3, 1)) == utc(2026, 3, 1)


def test_total():
    at = utc(2026, 5, 5)
    assert period_start("total", at) is None and period_end("total", at) is None
    assert period_id("total", at) == "total"


def test_offsets_are_taken_as_utc():
    tokyo = timezone(timedelta(hours=9))
    # 2026-12-07 08:30 in Tokyo is Sunday 2026-12-06 23:30 UTC
    at = datetime(2026, 12, 7, 8, 30, tzinfo=tokyo)
    assert period_id("day", at) == "d20261206"
    assert period_id("week", at) == "w2026W49"
    assert period_start("day", at) == utc(2026, 12, 6)
    assert period_start("day", at).tzinfo == UTC
    new_york = timezone(timedelta(hours=-5))
    # 2026-12-31 20:00 in New York is 2027-01-01 01:00 UTC
    at = datetime(2026, 12, 31, 20, tzinfo=new_york)
    assert period_id("month", at) == "m202701"
    assert period_id("day", at) == "d20270101"
    assert period_end("month", at) == utc(2027, 2, 1)


def test_naive_and_unknown_are_refused():
    naive = datetime(2026, 12, 1, 12)
    for period in PERIODS:
        for fn in (period_start, period_end, period_id):
            with pytest.raises(ValueError):
                fn(period, naive)
    for fn in (period_start, period_end, period_id):
        with pytest.raises(ValueError):
            fn("year", utc(2026, 1, 1))
        with pytest.raises(TypeError):
            fn("day", "2026-01-01")  # type: ignore[arg-type]


def test_every_instant_of_a_period_has_its_id():
    # walk a year and a bit, hour by hour: start <= at < end, ids change exactly at starts
    at = utc(2026, 12, 20)
    for _ in range(24 * 40):
        for period in ("day", "week", "month"):
            start, end = period_start(period, at), period_end(period, at)
            assert start <= at < end
            assert period_id(period, start) == period_id(period, at)
            assert period_id(period, end - timedelta(microseconds=1)) == period_id(period, at)
            assert period_id(period, end) != period_id(period, at)
        at += timedelta(hours=1)


# --- api_keys: the new columns, set_controls, spend_in_period -------------------------------


async def _key(pg: asyncpg.Pool, **fields) -> api_keys.ApiKey:
    user = await users.create(pg, f"periods-{secrets.token_hex(5)}@example.com")
    secret = new_proxy_key()
    return await api_keys.create(
        pg, user.id, hash_proxy_key(secret), visible_prefix(secret), name="p", **fields
    )


async def _usage(pg: asyncpg.Pool, key: api_keys.ApiKey, cost: str, at: datetime) -> None:
    """A settled usage record of the key, with its ledger charge (the books reconcile)."""
    request_id = "req_" + secrets.token_hex(8)
    async with pg.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO usage_records (request_id, user_id, api_key_id, provider, model,"
            " endpoint, stream, input_tokens, output_tokens, cache_read_tokens,"
            " cache_write_tokens, cost_usd, created_at) VALUES ($1, $2, $3, 'openai', 'gpt-4o',"
            " 'chat/completions', false, 1, 1, 0, 0, $4, $5)",
            request_id,
            key.user_id,
            key.id,
            Decimal(cost),
            at,
        )
        await users.change_balance(
            conn, key.user_id, -Decimal(cost), kind="charge", request_id=request_id
        )


async def test_create_defaults_and_set_controls(pg: asyncpg.Pool):
    plain = await _key(pg)
    assert (plain.budget_usd, plain.budget_period, plain.models, plain.expires_at) == (None,) * 4
    expires = utc(2027, 1, 1, 12)
    key = await _key(pg, budget_usd=Decimal("5.5"), models=("gpt-4o", "gpt-4.1"),
                     expires_at=expires, rpm_limit=3)  # fmt: skip
    assert key.budget_usd == Decimal("5.5") and key.budget_period == "month"
    assert key.models == ("gpt-4o", "gpt-4.1") and key.expires_at == expires
    assert key.rpm_limit == 3 and key.tpm_limit is None
    assert await api_keys.get(pg, key.id) == key

    # only what is given changes
    changed = await api_keys.set_controls(pg, key.id, budget_period="day", tpm=100)
    assert changed is not None
    assert changed.budget_period == "day" and changed.budget_usd == Decimal("5.5")
    assert changed.models == key.models and changed.expires_at == expires
    assert changed.rpm_limit == 3 and changed.tpm_limit == 100
    changed = await api_keys.set_controls(pg, key.id, budget_usd=Decimal("7"))
    assert changed.budget_usd == 7 and changed.budget_period == "day"  # the period stays
    # clearing the budget clears its period; None clears each
    cleared = await api_keys.set_controls(
        pg, key.id, budget_usd=None, models=None, expires_at=None, rpm=None, tpm=None
    )
    assert cleared is not None
    assert (cleared.budget_usd, cleared.budget_period, cleared.models, cleared.expires_at,
            cleared.rpm_limit, cleared.tpm_limit) == (None,) * 6  # fmt: skip
    again = await api_keys.set_controls(pg, key.id, budget_usd=Decimal(0))
    assert again.budget_usd == 0 and again.budget_period == "month"
    assert await api_keys.set_controls(pg, key.id) == again
    assert await api_keys.set_controls(pg, 987654321, budget_usd=None) is None

    with pytest.raises(asyncpg.CheckViolationError):
        await api_keys.set_controls(pg, key.id, budget_usd=Decimal("-1"))
    with pytest.raises(asyncpg.CheckViolationError):
        await api_keys.set_controls(pg, key.id, budget_period="year")
    with pytest.raises(asyncpg.CheckViolationError):
        await api_keys.set_controls(pg, key.id, models=[])


async def test_owner_by_hash_carries_the_controls(pg: asyncpg.Pool):
    user = await users.create(pg, f"periods-{secrets.token_hex(5)}@example.com")
    secret = new_proxy_key()
    expires = utc(2030, 1, 1)
    key = await api_keys.create(pg, user.id, hash_proxy_key(secret), visible_prefix(secret),
                                budget_usd=Decimal("1.25"), budget_period="week",
                                models=["gpt-4o"], expires_at=expires)  # fmt: skip
    owner = await api_keys.owner_by_hash(pg, hash_proxy_key(secret))
    assert owner is not None and owner.api_key_id == key.id and owner.usable
    assert owner.budget_usd == Decimal("1.25") and owner.budget_period == "week"
    assert owner.models == ("gpt-4o",) and owner.expires_at == expires


async def test_spend_in_period_is_exact(pg: asyncpg.Pool):
    key = await _key(pg, budget_usd=Decimal(10), budget_period="week")
    other = await _key(pg)
    now = utc(2026, 12, 7, 0, 0, 0, 5)  # Monday just after midnight
    assert await api_keys.spend_in_period(pg, key.id, "week", now) == 0
    await _usage(pg, key, "0.000000000001", utc(2026, 12, 7))  # Monday 00:00: this week
    await _usage(pg, key, "0.1", utc(2026, 12, 7, 0, 0, 0, 1))
    await _usage(pg, key, "1000", utc(2026, 12, 6, 23, 59, 59, 999999))  # Sunday: last week
    await _usage(pg, key, "3", utc(2026, 11, 30, 8))  # last week, last month
    await _usage(pg, other, "55", utc(2026, 12, 7, 1))
    week = await api_keys.spend_in_period(pg, key.id, "week", now)
    assert week == Decimal("0.100000000001") and str(week) == "0.100000000001"
    assert await api_keys.spend_in_period(pg, key.id, "day", now) == Decimal("0.100000000001")
    assert await api_keys.spend_in_period(pg, key.id, "month", now) == Decimal("1000.100000000001")
    assert await api_keys.spend_in_period(pg, key.id, "total", now) == Decimal("1003.100000000001")
    last_week = utc(2026, 12, 6, 12)
    assert await api_keys.spend_in_period(pg, key.id, "week", last_week) == Decimal("1003")

    fresh = await api_keys.get(pg, key.id)
    assert fresh is not None
    doc = await load_document(pg, fresh, now)
    assert doc["spend_period_usd"] == "0.100000000001"
    assert doc["budget_usd"] == "10" and doc["budget_period"] == "week"


def test_key_document():
    created = utc(2026, 1, 2, 3, 4, 5)
    key = api_keys.ApiKey(1, 2, "n", "mw-abc", None, 60, created, None, None)
    doc = key_document(key, Decimal("0.0000425"))
    assert doc == {
        "id": 1, "name": "n", "prefix": "mw-abc", "created": created.isoformat(),
        "last_used": None, "revoked": False, "rpm": None, "tpm": 60, "budget_usd": None,
        "budget_period": None, "spend_period_usd": "0.0000425", "models": None,
        "expires_at": None,
    }  # fmt: skip
    assert spend_period(key) == "month"
    tokyo = timezone(timedelta(hours=9))
    key = api_keys.ApiKey(1, 2, "n", "mw-abc", 5, None, created, created, created,
                          Decimal("2.50"), "day", ("a", "b"),
                          datetime(2027, 1, 1, 9, tzinfo=tokyo))  # fmt: skip
    doc = key_document(key, Decimal(0))
    assert doc["budget_usd"] == "2.5" and doc["budget_period"] == "day"
    assert doc["models"] == ["a", "b"] and doc["expires_at"] == "2027-01-01T00:00:00Z"
    assert doc["spend_period_usd"] == "0" and doc["revoked"] is True and doc["rpm"] == 5
    assert spend_period(key) == "day"
    assert iso_z(utc(2026, 5, 1, 1, 2, 3, 4)) == "2026-05-01T01:02:03.000004Z"
