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
from shared.reconcile import find_differences
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


async def test_settled_balances_keep_every_digit_and_reconcile_is_clean(accounts, deps, pg, redis):
    """A balance of 21 digits minus costs of 21 digits after the point: 30 digits,
    past Python's default 28-digit context. The worker's `balance -= cost` rounded
    there (to ...8608), and `meterway reconcile` found the ledger off its balance."""
    precise = deps.catalog.models["gpt-4o"].model_copy(
        update={
            "input_per_mtok": Decimal("0.123456789"),
            "output_per_mtok": Decimal("0.987654321"),
            "cache_read_per_mtok": None,
            "multiplier": Decimal(1),
        }
    )
    catalog = deps.catalog.model_copy(
        update={"models": {**deps.catalog.models, "precise": precise}}
    )
    exact_deps = SettleDeps(deps.pg, catalog, deps.view, deps.redis, deps.settings)
    start = Decimal("123456789.123456789012")
    acct = await accounts.create(str(start))

    def event(uncached: int, output: int) -> UsageEvent:
        usage = TokenUsage(uncached_input_tokens=uncached, output_tokens=output)
        return _event(acct, model="precise").model_copy(
            update={"usage": usage, "rate_multiplier": Decimal("0.123457")}
        )

    first = [event(1234567, 7654321), event(7654321, 1234567)]  # one user twice in a batch
    second = [event(999_999, 3)]
    await settle_batch(exact_deps, first)
    await settle_batch(exact_deps, second)

    costs = [
        Decimal("0.952129876345989248628"),
        Decimal("0.267198395563571367132"),
        Decimal("0.015241955356486723518"),
    ]
    after = [
        Decimal("123456788.171326912666010751372"),
        Decimal("123456787.904128517102439384240"),
        Decimal("123456787.888886561745952660722"),
    ]
    assert await accounts.balance(acct.user_id) == after[-1]
    records = await pg.fetch(
        "SELECT r.request_id, r.cost_usd, l.amount_usd, l.balance_after FROM usage_records r"
        " JOIN ledger l ON l.request_id = r.request_id WHERE r.user_id = $1 ORDER BY l.id",
        acct.user_id,
    )
    assert [r["request_id"] for r in records] == [e.request_id for e in first + second]
    assert [r["cost_usd"] for r in records] == costs
    assert [r["amount_usd"] for r in records] == [-c for c in costs]
    assert [r["balance_after"] for r in records] == after
    ledger_sum = await pg.fetchval(
        "SELECT SUM(amount_usd) FROM ledger WHERE user_id = $1", acct.user_id
    )
    assert ledger_sum == after[-1]
    view = await redis.hget(redis_keys.balance(acct.user_id), "units")
    assert view == b"123456787888886561"  # floor(balance * 1e9)

    email = await pg.fetchval("SELECT email FROM users WHERE id = $1", acct.user_id)
    async with pg.acquire() as conn:
        problems = await find_differences(conn, redis)
    ids = [e.request_id for e in first + second]
    assert [p for p in problems if email in p or any(i in p for i in ids)] == []


async def test_a_cost_that_cannot_be_exact_is_set_aside_not_rounded(accounts, deps, pg, redis):
    """An event whose cost would need rounding even at 100 digits goes to the dead
    letters (the rest of its batch settles); it is never billed rounded."""
    huge = deps.catalog.models["gpt-4o"].model_copy(
        update={"input_per_mtok": Decimal("1." + "1" * 120), "cache_read_per_mtok": None}
    )
    catalog = deps.catalog.model_copy(update={"models": {**deps.catalog.models, "huge": huge}})
    odd_deps = SettleDeps(deps.pg, catalog, deps.view, deps.redis, deps.settings)
    acct = await accounts.create("5")
    good, bad = _event(acct), _event(acct, model="huge")
    entries = [(f"2-{i}".encode(), {b"e": e.to_json().encode()}) for i, e in enumerate([good, bad])]
    consumer = UsageConsumer(odd_deps, redis)
    await consumer._settle(entries)
    assert consumer.settled == 2
    settled = await pg.fetch(
        "SELECT request_id FROM usage_records WHERE user_id = $1", acct.user_id
    )
    assert [r["request_id"] for r in settled] == [good.request_id]
    assert await accounts.balance(acct.user_id) == Decimal("5") - Decimal("0.0035")
    dead = await redis.xrevrange(redis_keys.USAGE_DEAD_LETTERS, count=50)
    assert any(bad.request_id.encode() in f[b"e"] for _, f in dead)
