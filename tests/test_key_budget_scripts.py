"""An API key's budget inside the hold script (contract section 6), against a
real Redis server: the key's period spend + open holds and pending charges +
the new hold must fit; settled spend moves into the period counter exactly once.
(redis://127.0.0.1:6379/12, flushed around every test)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from redis.asyncio import Redis

from shared import redis_keys
from shared.balance_view import BalanceView, KeyBudget
from shared.events import TokenUsage, UsageEvent
from shared.money import UNITS_PER_USD
from shared.usage_queue import UsageQueue

REDIS_URL = os.environ.get("TEST_BUDGET_REDIS_URL", "redis://127.0.0.1:6379/12")
TTL = 60_000
USER = 7
KEY = 31
BUDGET = KeyBudget(KEY, "d20261201", 1000)


@pytest.fixture
async def client() -> AsyncIterator[Redis]:
    redis = Redis.from_url(REDIS_URL)
    await redis.flushdb()
    try:
        yield redis
    finally:
        await redis.flushdb()
        await redis.aclose()


@pytest.fixture
async def view(client: Redis) -> BalanceView:
    view = BalanceView(client)
    await view.publish(USER, Decimal(1), 1)  # $1: far more than the budget
    return view


async def field(client: Redis, name: str) -> int | None:
    value = await client.hget(redis_keys.balance(USER), name)
    return None if value is None else int(value)


def event(request_id: str, hold_units: int) -> UsageEvent:
    return UsageEvent(
        request_id=request_id, user_id=USER, api_key_id=KEY, provider="openai",
        model="gpt-4o", endpoint="chat/completions", stream=False,
        usage=TokenUsage(uncached_input_tokens=1), hold_units=hold_units,
    )  # fmt: skip


async def test_the_period_spend_is_loaded_before_the_first_hold(view, client):
    result = await view.hold(USER, "r1", 100, TTL, budget=BUDGET)
    assert result.missing_key_spend and not result.placed
    assert await client.hlen(redis_keys.holds(USER)) == 0  # nothing written
    assert await view.load_key_spend(USER, BUDGET, 250, 1) == 1
    assert await view.load_key_spend(USER, BUDGET, 999, 1) == 0  # only where Redis has none
    assert await field(client, "ks:31:d20261201") == 250
    result = await view.hold(USER, "r1", 100, TTL, budget=BUDGET)
    assert result.placed
    assert await field(client, "ko:31") == 100


async def test_spend_plus_open_holds_plus_the_new_hold_must_fit(view, client):
    await view.load_key_spend(USER, BUDGET, 400, 1)
    assert (await view.hold(USER, "a", 300, TTL, budget=BUDGET)).placed
    assert (await view.hold(USER, "b", 300, TTL, budget=BUDGET)).placed  # exactly 1000
    over = await view.hold(USER, "c", 1, TTL, budget=BUDGET)
    assert over.over_budget and not over.placed and over.available_units == 0
    assert await field(client, "held") == 600  # the balance saw only a and b
    await view.release(USER, "a")
    assert await field(client, "ko:31") == 300
    assert (await view.hold(USER, "c", 300, TTL, budget=BUDGET)).placed
    # the balance is checked too, after the budget
    poor = KeyBudget(KEY, BUDGET.period, 10 * UNITS_PER_USD)
    assert not (await view.hold(USER, "d", 2 * UNITS_PER_USD, TTL, budget=poor)).placed


async def test_settled_spend_moves_into_the_counter_exactly_once(view, client):
    queue = UsageQueue(client)
    await view.load_key_spend(USER, BUDGET, 0, 1)
    assert (await view.hold(USER, "r1", 500, TTL, budget=BUDGET)).placed
    await queue.enqueue(event("r1", 500), 120, key_tag=BUDGET.tag)  # hold -> pending 120
    assert await field(client, "ko:31") == 120 and await field(client, "held") == 120
    for _ in range(2):  # a redelivered batch releases nothing twice
        await view.publish_many({USER: ["r1"]}, {USER: (Decimal(1), 2)})
    assert await field(client, "ks:31:d20261201") == 120
    assert await field(client, "ko:31") is None and await field(client, "held") == 0
    assert await client.hlen(redis_keys.hold_keys(USER)) == 0


async def test_a_request_ending_in_the_next_period_is_counted_there(view, client):
    await view.load_key_spend(USER, BUDGET, 0, 1)
    assert (await view.hold(USER, "r1", 500, TTL, budget=BUDGET)).placed
    await UsageQueue(client).enqueue(event("r1", 500), 70, key_tag=f"{KEY}:d20261202")
    await view.publish_many({USER: ["r1"]}, {USER: (Decimal(1), 2)})
    assert await field(client, "ks:31:d20261201") == 0
    # the next period's counter is not in Redis yet: it is loaded from Postgres,
    # where this request's cost already is, on the key's next request
    assert await field(client, "ks:31:d20261202") is None
    nxt = KeyBudget(KEY, "d20261202", 1000)
    await view.load_key_spend(USER, nxt, 70, 2)
    assert await field(client, "ks:31:d20261201") is None  # the old period is dropped
    assert await field(client, "ks:31:d20261202") == 70


async def test_expired_and_lost_holds_leave_no_open_total(view, client):
    await view.load_key_spend(USER, BUDGET, 0, 1)
    assert (await view.hold(USER, "r1", 400, 1, budget=BUDGET)).placed
    await asyncio.sleep(0.01)
    assert await view.reap_expired(USER) == [("r1", 400)]
    assert await field(client, "ko:31") is None
    # a hold lost to a flush comes back as a pending charge, counted once
    await UsageQueue(client).enqueue(event("r2", 0), 90, key_tag=BUDGET.tag)
    assert await field(client, "ko:31") == 90 and await field(client, "held") == 90


async def test_a_budget_removed_while_a_request_runs_drops_its_open_total(view, client):
    await view.load_key_spend(USER, BUDGET, 0, 1)
    assert (await view.hold(USER, "r1", 400, TTL, budget=BUDGET)).placed
    await UsageQueue(client).enqueue(event("r1", 400), 90)  # no budget any more
    assert await field(client, "ko:31") is None
    await view.publish_many({USER: ["r1"]}, {USER: (Decimal(1), 2)})
    assert await field(client, "ks:31:d20261201") == 0  # not a budgeted request now


async def test_a_spend_read_at_another_version_is_refused_and_never_counted_twice(view, client):
    # read before the view's version (a settlement landed since): refused, read again
    assert await view.load_key_spend(USER, BUDGET, 0, 0) == -1
    assert await field(client, "ks:31:d20261201") is None
    assert (await view.hold(USER, "r1", 500, TTL, budget=BUDGET)).missing_key_spend
    await view.publish(USER, Decimal(1), 2)  # a charge settled: version 2
    # Postgres read at version 2 already holds r1's 120: the release adds nothing
    assert await view.load_key_spend(USER, BUDGET, 120, 2) == 1
    await client.hset(redis_keys.holds(USER), "r1", "120")  # r1's pending charge
    await client.hset(redis_keys.hold_keys(USER), "r1", BUDGET.tag)
    await view.publish_many({USER: ["r1"]}, {USER: (Decimal(1), 2)})
    assert await field(client, "ks:31:d20261201") == 120
