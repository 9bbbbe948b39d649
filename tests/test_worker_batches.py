"""Batched settlement internals: the one-script-per-user publish, counting
claimed per batch (also across a worker that died between commit and count),
the batch daily counters, and a bad event in a big batch."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import fakeredis
import pytest

from shared import daily, redis_keys
from shared.balance_view import BalanceView
from shared.catalog import load_catalog
from shared.events import TokenUsage, UsageEvent
from worker import batch_sql
from worker.alerts import Charge, record_daily
from worker.consumer import UsageConsumer
from worker.settle import SettleDeps, settle_batch


def _event(acct, model: str = "gpt-4o", tokens: int = 1000) -> UsageEvent:
    return UsageEvent(
        request_id=f"req_wb_{secrets.token_hex(6)}",
        user_id=acct.user_id,
        api_key_id=acct.api_key_id,
        provider="openai",
        model=model,
        endpoint="chat/completions",
        stream=False,
        usage=TokenUsage(uncached_input_tokens=tokens, output_tokens=100),
    )


@pytest.fixture
def deps(pg, redis, settings) -> SettleDeps:
    return SettleDeps(pg, load_catalog(settings.model_catalog), BalanceView(redis), redis, settings)


async def test_batch_publish_releases_every_hold_and_keeps_the_newest_balance(accounts, redis):
    acct = await accounts.create("5")
    view = BalanceView(redis)
    for rid, units in (("r1", 1000), ("r2", 0), ("r3", 250)):
        assert (await view.hold(acct.user_id, rid, units, 60_000)).placed
    bal_key = redis_keys.balance(acct.user_id)
    version = int(await redis.hget(bal_key, "ver"))
    await view.publish_many(
        {acct.user_id: ["r1", "r2", "unknown"]}, {acct.user_id: (Decimal("4.5"), version + 1)}
    )
    assert await view.held_units(acct.user_id) == 250
    assert await redis.hkeys(redis_keys.holds(acct.user_id)) == [b"r3"]
    assert await redis.zrange(redis_keys.hold_expiry(acct.user_id), 0, -1) == [b"r3"]
    assert await redis.hget(bal_key, "units") == b"4500000000"
    # an older version releases its holds but leaves the newer balance alone
    await view.publish_many({acct.user_id: ["r3"]}, {acct.user_id: (Decimal("9"), version)})
    assert await view.held_units(acct.user_id) == 0
    assert await redis.hget(bal_key, "units") == b"4500000000"


async def test_a_batch_whose_worker_died_before_counting_is_counted_once(
    accounts, deps, pg, redis, monkeypatch
):
    acct = await accounts.create("5")
    events = [_event(acct) for _ in range(3)]

    async def died(*_args):
        raise ConnectionError("worker died between commit and count")

    with monkeypatch.context() as patch:
        patch.setattr(batch_sql, "claim_batch", died)
        await settle_batch(deps, events)
    assert await daily.requests(redis, "user", acct.user_id) == 0
    # one of the three events comes back alone (XAUTOCLAIM regroups entries):
    # it claims the whole batch its record was committed with
    await settle_batch(deps, events[1:2])
    assert await daily.requests(redis, "user", acct.user_id) == 3
    assert await daily.requests(redis, "key", acct.api_key_id) == 3
    assert await daily.spend(redis, "user", acct.user_id) == Decimal("0.0105")
    await settle_batch(deps, events)
    await settle_batch(deps, [_event(acct)])
    assert await daily.requests(redis, "user", acct.user_id) == 4
    charges = await pg.fetchval(
        "SELECT count(*) FROM ledger WHERE user_id = $1 AND kind = 'charge'", acct.user_id
    )
    assert charges == 4
    assert await accounts.balance(acct.user_id) == Decimal("5") - Decimal("0.014")


async def test_batch_counters_match_daily_record():
    """Same counters as `daily.record`, each cost rounded to pico-USD on its own."""
    now = datetime.now(UTC)
    charges = [
        Charge(user, provider, model, key, now - timedelta(days=day), Decimal(cost))
        for user, provider, model, key, day, cost in (
            (1, "openai", "gpt-4o", 11, 0, "0.0000000000014"),
            (1, "openai", "gpt-4o", 11, 0, "0.0000000000014"),
            (1, "openai", "gpt-4o-mini", 12, 1, "0.123456789012345"),
            (2, "anthropic", "claude-haiku-4-5", 21, 0, "3.5"),
            (2, "openai", "gpt-4o", 22, 0, "0.00000000000049"),
        )
    ]
    ours, theirs = fakeredis.FakeAsyncRedis(), fakeredis.FakeAsyncRedis()
    got = await record_daily(ours, charges)
    # a Charge has the event fields daily.record reads
    expected = await daily.record(theirs, [(c, c.cost_usd) for c in charges])
    assert got == expected
    keys = sorted(await theirs.keys("*"))
    assert sorted(await ours.keys("*")) == keys
    for key in keys:
        assert await ours.hgetall(key) == await theirs.hgetall(key)
        assert await ours.ttl(key) == await theirs.ttl(key)


async def test_one_unpriced_event_in_a_big_batch_goes_alone_to_the_dead_letters(
    accounts, deps, pg, redis
):
    acct = await accounts.create("5")
    events = [_event(acct, tokens=10 + i) for i in range(20)]
    bad = _event(acct, model="no-such-model")
    events.insert(7, bad)
    entries = [(f"1-{i}".encode(), {b"e": e.to_json().encode()}) for i, e in enumerate(events)]
    consumer = UsageConsumer(deps, redis)
    await consumer._settle(entries)
    assert consumer.settled == 21
    settled = await pg.fetchval(
        "SELECT count(*) FROM usage_records WHERE user_id = $1", acct.user_id
    )
    assert settled == 20
    dead = await redis.xrevrange(redis_keys.USAGE_DEAD_LETTERS, count=50)
    mine = [f for _, f in dead if bad.request_id.encode() in f[b"e"]]
    assert len(mine) == 1 and b"no-such-model" in mine[0][b"reason"]


def test_batches_grow_under_a_backlog_and_shrink_after_it():
    settings = type("S", (), {"settle_batch_size": 500, "settle_claim_idle_seconds": 30})()
    deps = type("D", (), {"settings": settings})()
    consumer = UsageConsumer(deps, redis=None)  # type: ignore[arg-type]
    sizes = []
    for _ in range(5):  # every read comes back full
        consumer._adapt(consumer.batch)
        sizes.append(consumer.batch)
    assert sizes == [1000, 2000, 4000, 4000, 4000]
    consumer._adapt(12)  # the backlog is gone
    assert consumer.batch == 500
