"""The Redis balance view and its Lua scripts, against a real Redis server
(redis://127.0.0.1:6379/14, flushed around every test)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from redis.asyncio import Redis

from shared import redis_keys
from shared.balance_view import BalanceView, HoldResult
from shared.money import UNITS_PER_USD, units_to_usd

VIEW_REDIS_URL = os.environ.get("TEST_VIEW_REDIS_URL", "redis://127.0.0.1:6379/14")
TTL = 60_000
USER = 42


@pytest.fixture
async def view_redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(VIEW_REDIS_URL, decode_responses=False)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.flushdb()
        await client.aclose()


@pytest.fixture
def view(view_redis: Redis) -> BalanceView:
    return BalanceView(view_redis)


async def open_holds(client: Redis, user_id: int = USER) -> dict[bytes, bytes]:
    return await client.hgetall(redis_keys.holds(user_id))


async def expiries(client: Redis, user_id: int = USER) -> list[bytes]:
    return await client.zrange(redis_keys.hold_expiry(user_id), 0, -1)


# ---------------------------------------------------------------- key names


def test_user_keys_share_one_cluster_slot():
    keys = redis_keys.user_keys(USER)
    assert keys == (
        redis_keys.balance(USER),
        redis_keys.holds(USER),
        redis_keys.hold_expiry(USER),
        redis_keys.hold_keys(USER),
    )
    assert redis_keys.user_keys(USER) is keys  # built once per user, then cached
    assert len(set(keys)) == 4
    for key in keys:  # the user's shard's hash tag: one slot with its usage stream
        assert key.startswith(f"mw:{{{redis_keys.USAGE_SHARD_TAGS[42 % 16]}}}:u:42:")
    assert redis_keys.balance(4) != redis_keys.balance(42)
    assert redis_keys.HOLD_EXPIRY_PATTERN == "mw:{q*}:u:*:holdexp"
    assert redis_keys.user_id_of(redis_keys.hold_expiry(42)) == 42


# ---------------------------------------------------------------- holds


async def test_hold_refused_without_a_balance_view(view, view_redis):
    result = await view.hold(USER, "req_1", 1, TTL)
    assert result == HoldResult(placed=False, missing_view=True, available_units=0)
    # nothing was written
    assert await view_redis.keys("*") == []
    assert await view.held_units(USER) == 0


async def test_hold_exactly_at_the_boundary(view, view_redis):
    assert await view.publish(USER, Decimal("1.5"), 1) is True
    units = 1_500_000_000
    assert await view_redis.hget(redis_keys.balance(USER), "units") == str(units).encode()

    # one unit more than available: refused, nothing held
    too_much = await view.hold(USER, "req_big", units + 1, TTL)
    assert too_much == HoldResult(placed=False, missing_view=False, available_units=units)
    assert await view.held_units(USER) == 0
    assert await open_holds(view_redis) == {}

    # exactly what is available: placed, nothing left
    fits = await view.hold(USER, "req_all", units, TTL)
    assert fits == HoldResult(placed=True, missing_view=False, available_units=0)
    assert await view.held_units(USER) == units

    # now not even one unit fits
    one = await view.hold(USER, "req_one", 1, TTL)
    assert one == HoldResult(placed=False, missing_view=False, available_units=0)


async def test_holds_add_up_and_release_gives_back(view, view_redis):
    await view.publish(USER, Decimal(10), 3)
    first = await view.hold(USER, "req_a", 3 * UNITS_PER_USD, TTL)
    second = await view.hold(USER, "req_b", 4 * UNITS_PER_USD, TTL)
    assert first.placed and first.available_units == 7 * UNITS_PER_USD
    assert second.placed and second.available_units == 3 * UNITS_PER_USD
    assert await view.held_units(USER) == 7 * UNITS_PER_USD
    assert await open_holds(view_redis) == {
        b"req_a": str(3 * UNITS_PER_USD).encode(),
        b"req_b": str(4 * UNITS_PER_USD).encode(),
    }
    assert sorted(await expiries(view_redis)) == [b"req_a", b"req_b"]

    assert await view.release(USER, "req_a") == 3 * UNITS_PER_USD
    assert await view.held_units(USER) == 4 * UNITS_PER_USD
    assert await expiries(view_redis) == [b"req_b"]
    # released twice: the second time is a no-op
    assert await view.release(USER, "req_a") == 0
    assert await view.held_units(USER) == 4 * UNITS_PER_USD

    after = await view.hold(USER, "req_c", 6 * UNITS_PER_USD, TTL)
    assert after.placed and after.available_units == 0


async def test_release_of_unknown_request_is_a_no_op(view, view_redis):
    assert await view.release(USER, "req_nobody") == 0  # no view at all
    await view.publish(USER, Decimal(2), 1)
    await view.hold(USER, "req_a", 5, TTL)
    before = await view_redis.hgetall(redis_keys.balance(USER))
    assert await view.release(USER, "req_nobody") == 0
    assert await view_redis.hgetall(redis_keys.balance(USER)) == before
    assert await view.held_units(USER) == 5
    assert await open_holds(view_redis) == {b"req_a": b"5"}


async def test_users_do_not_share_a_view(view):
    await view.publish(1, Decimal(1), 1)
    assert (await view.hold(1, "req_x", UNITS_PER_USD, TTL)).placed
    other = await view.hold(2, "req_x", 1, TTL)
    assert other.missing_view and not other.placed
    await view.publish(2, Decimal(1), 1)
    assert (await view.hold(2, "req_x", UNITS_PER_USD, TTL)).placed
    assert await view.release(1, "req_x") == UNITS_PER_USD
    assert await view.held_units(2) == UNITS_PER_USD


# ---------------------------------------------------------------- publish


async def test_publish_only_newer_versions(view, view_redis):
    bal = redis_keys.balance(USER)
    assert await view.publish(USER, Decimal(5), 10) is True
    # equal version: not applied
    assert await view.publish(USER, Decimal(7), 10) is False
    # older version: not applied
    assert await view.publish(USER, Decimal(9), 9) is False
    assert await view_redis.hmget(bal, "units", "ver") == [b"5000000000", b"10"]
    # newer version: applied
    assert await view.publish(USER, Decimal(3), 11) is True
    assert await view_redis.hmget(bal, "units", "ver") == [b"3000000000", b"11"]
    held = await view.hold(USER, "req_a", 3 * UNITS_PER_USD + 1, TTL)
    assert not held.placed and held.available_units == 3 * UNITS_PER_USD


async def test_publish_rounds_the_balance_down(view, view_redis):
    await view.publish(USER, Decimal("0.0000000019"), 1)
    assert await view_redis.hget(redis_keys.balance(USER), "units") == b"1"
    await view.publish(USER, Decimal("-0.0000000011"), 2)
    assert await view_redis.hget(redis_keys.balance(USER), "units") == b"-2"
    refused = await view.hold(USER, "req_a", 1, TTL)
    assert refused == HoldResult(placed=False, missing_view=False, available_units=-2)


async def test_publish_keeps_holds(view):
    await view.publish(USER, Decimal(10), 1)
    await view.hold(USER, "req_a", 4 * UNITS_PER_USD, TTL)
    await view.publish(USER, Decimal(5), 2)  # settled elsewhere: balance lowered
    assert await view.held_units(USER) == 4 * UNITS_PER_USD
    result = await view.hold(USER, "req_b", UNITS_PER_USD + 1, TTL)
    assert result == HoldResult(placed=False, missing_view=False, available_units=UNITS_PER_USD)


async def test_publish_releases_the_settled_hold(view, view_redis):
    await view.publish(USER, Decimal(10), 1)
    await view.hold(USER, "req_a", 2 * UNITS_PER_USD, TTL)
    await view.hold(USER, "req_b", 3 * UNITS_PER_USD, TTL)
    # req_a settled at 1.25 USD: balance 8.75, version 2, its hold released
    assert await view.publish(USER, Decimal("8.75"), 2, release_request_id="req_a") is True
    assert await view.held_units(USER) == 3 * UNITS_PER_USD
    assert await open_holds(view_redis) == {b"req_b": str(3 * UNITS_PER_USD).encode()}
    assert await expiries(view_redis) == [b"req_b"]
    result = await view.hold(USER, "req_c", 5_750_000_000, TTL)
    assert result == HoldResult(placed=True, missing_view=False, available_units=0)


async def test_stale_publish_still_releases_its_hold(view, view_redis):
    await view.publish(USER, Decimal(10), 5)
    await view.hold(USER, "req_a", UNITS_PER_USD, TTL)
    # a settlement whose balance is older than the view: balance kept, hold released
    assert await view.publish(USER, Decimal(1), 4, release_request_id="req_a") is False
    assert await view.held_units(USER) == 0
    assert await open_holds(view_redis) == {}
    assert await expiries(view_redis) == []
    assert await view_redis.hget(redis_keys.balance(USER), "units") == b"10000000000"


async def test_publish_releasing_an_unknown_hold(view):
    await view.publish(USER, Decimal(1), 1)
    await view.hold(USER, "req_a", 10, TTL)
    assert await view.publish(USER, Decimal(2), 2, release_request_id="req_gone") is True
    assert await view.held_units(USER) == 10


# ---------------------------------------------------------------- expiry


async def test_expired_holds_are_released_by_the_reaper(view, view_redis):
    await view.publish(USER, Decimal(1), 1)
    await view.hold(USER, "req_old1", 300_000_000, 50)
    await view.hold(USER, "req_old2", 200_000_000, 50)
    await view.hold(USER, "req_live", 100_000_000, TTL)
    assert await view.held_units(USER) == 600_000_000
    await asyncio.sleep(0.1)
    # holds do not lapse by themselves: an expired hold still counts until reaped
    assert not (await view.hold(USER, "req_big", 900_000_000, TTL)).placed
    reaped = await view.reap_expired(USER)
    assert sorted(reaped) == [("req_old1", 300_000_000), ("req_old2", 200_000_000)]
    result = await view.hold(USER, "req_new", 900_000_000, TTL)
    # the expired 0.5 USD came back: 1 - 0.1 (live) = 0.9 available, all of it taken
    assert result == HoldResult(placed=True, missing_view=False, available_units=0)
    assert await view.held_units(USER) == 1_000_000_000
    assert set(await open_holds(view_redis)) == {b"req_live", b"req_new"}
    assert set(await expiries(view_redis)) == {b"req_live", b"req_new"}
    # a late release of an expired hold does not give its units back twice
    assert await view.release(USER, "req_old1") == 0
    assert await view.held_units(USER) == 1_000_000_000
    assert await view.reap_expired(USER) == []


async def test_hold_expiry_is_set_from_the_ttl(view, view_redis):
    await view.publish(USER, Decimal(1), 1)
    seconds, micros = await view_redis.time()
    now_ms = seconds * 1000 + micros // 1000
    await view.hold(USER, "req_a", 1, 90_000)
    score = await view_redis.zscore(redis_keys.hold_expiry(USER), "req_a")
    assert now_ms + 90_000 <= score <= now_ms + 90_000 + 5_000


# ---------------------------------------------------------------- large amounts


async def test_large_balances_stay_exact(view, view_redis):
    balance = Decimal("5000000.123456789")  # 5,000,000,123,456,789 units
    units = 5_000_000_123_456_789
    await view.publish(USER, balance, 1)
    assert await view_redis.hget(redis_keys.balance(USER), "units") == str(units).encode()

    first = await view.hold(USER, "req_a", 4_999_999_999_999_999, TTL)
    assert first == HoldResult(placed=True, missing_view=False, available_units=123_456_790)
    refused = await view.hold(USER, "req_b", 123_456_791, TTL)
    assert refused == HoldResult(placed=False, missing_view=False, available_units=123_456_790)
    exact = await view.hold(USER, "req_b", 123_456_790, TTL)
    assert exact == HoldResult(placed=True, missing_view=False, available_units=0)
    assert await view.held_units(USER) == units
    assert units_to_usd(await view.held_units(USER)) == balance

    assert await view.release(USER, "req_a") == 4_999_999_999_999_999
    assert await view.held_units(USER) == 123_456_790
    left = await view.hold(USER, "req_c", 4_999_999_999_999_999, TTL)
    assert left == HoldResult(placed=True, missing_view=False, available_units=0)


# ---------------------------------------------------------------- zero holds


async def test_zero_unit_hold_can_be_released(view):
    await view.publish(USER, Decimal(5), 1)
    assert (await view.hold(USER, "req_free", 0, TTL)).placed
    assert await view.release(USER, "req_free") == 0
    assert await view.held_units(USER) == 0


async def test_expired_zero_unit_hold_can_be_reaped(view):
    await view.publish(USER, Decimal(5), 1)
    await view.hold(USER, "req_free", 0, 1)
    await asyncio.sleep(0.02)
    assert await view.reap_expired(USER) == [("req_free", 0)]
    result = await view.hold(USER, "req_next", UNITS_PER_USD, TTL)
    assert result.placed


async def test_publish_releasing_a_zero_unit_hold(view, view_redis):
    await view.publish(USER, Decimal(5), 1)
    await view.hold(USER, "req_free", 0, TTL)
    assert await view.publish(USER, Decimal(5), 2, release_request_id="req_free") is True
    assert await view_redis.hget(redis_keys.balance(USER), "ver") == b"2"
