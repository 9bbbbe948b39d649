"""Meterway on a local 3-master Redis Cluster (contract section 8): the key
layout puts every script in one slot, the pipelined runner talks to the master
of each slot and follows MOVED and ASK while a slot migrates, invalidations
published on one node reach a subscriber on another, and a proxy and a worker
on the cluster bill every request exactly once while the slots of busy users
move between masters. (The fault, concurrency and billing tests of sections
1-4 run on a cluster too: `TEST_REDIS_CLUSTER=1`, see `.ci/run`.)"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

from shared import invalidation, redis_keys
from shared.balance_view import BalanceView
from shared.cluster_runner import ClusterScriptRunner
from shared.events import UsageEvent
from shared.money import units_floor
from shared.redis_client import cluster_client
from shared.usage_queue import UsageQueue, consumers, pending_count, queue_depth
from tests.clients import anthropic_client
from tests.cluster import PrivateCluster, RedisClusterServer
from tests.conftest import Accounts, wait_settled
from tests.stack import Stack

HELLO = [{"role": "user", "content": "Say hello"}]


def test_a_user_and_its_usage_stream_share_one_slot():
    for user_id in [*range(200), 10**9 + 7]:
        slot = key_slot(redis_keys.user_usage_stream(user_id).encode())
        for key in [
            *redis_keys.user_keys(user_id),
            redis_keys.rate_window(user_id, 3, 29_000_000),
            redis_keys.response_tokens(user_id, "resp_1"),
        ]:
            assert key_slot(key.encode()) == slot, key
        assert redis_keys.user_id_of(redis_keys.hold_expiry(user_id)) == user_id
        assert redis_keys.user_id_of(redis_keys.redeem_tries(user_id)) == user_id
    # shard k's slot lies in the k-th sixteenth of the slot range: masters owning
    # contiguous ranges (as redis-cli --cluster create assigns them) get even shares
    slots = [key_slot(s.encode()) for s in redis_keys.USAGE_STREAMS]
    assert [slot * 16 // 16384 for slot in slots] == list(range(16))
    assert len(set(redis_keys.ALL_USAGE_STREAMS)) == 17


@pytest.fixture(scope="module")
async def cluster() -> AsyncIterator[RedisClusterServer]:
    server = RedisClusterServer()
    await server.start()
    yield server
    await server.destroy()


@pytest.fixture
async def rc(cluster: RedisClusterServer) -> AsyncIterator[Redis]:
    client = cluster_client(cluster.url)
    yield client
    await client.aclose()


@pytest.fixture
async def runner(cluster: RedisClusterServer) -> AsyncIterator[ClusterScriptRunner]:
    r = ClusterScriptRunner(cluster.url)
    yield r
    await r.close()


def _event(user_id: int, request_id: str, hold_units: int) -> UsageEvent:
    return UsageEvent(
        request_id=request_id,
        user_id=user_id,
        api_key_id=1,
        provider="anthropic",
        model="claude-haiku-4-5",
        endpoint="messages",
        stream=False,
        hold_units=hold_units,
        usage={"uncached_input_tokens": 10, "output_tokens": 5},
    )


async def _other_master(cluster: RedisClusterServer, slot: int) -> int:
    owner = await cluster.owner(slot)
    return next(p for p in cluster.ports if p != owner)


async def test_runner_sends_each_script_to_its_slots_master(cluster, rc, runner):
    view, queue = BalanceView(rc, runner), UsageQueue(rc, runner)
    users = list(range(1000, 1032))  # every shard twice: all three masters
    for user_id in users:
        await view.publish(user_id, Decimal("1"), 1)
    for user_id in users:
        placed = await view.hold(user_id, f"r{user_id}", 300, 60_000)
        assert placed.placed and placed.available_units == 10**9 - 300
        await queue.enqueue(_event(user_id, f"r{user_id}", 300), 120)
    for user_id in users:
        assert await view.held_units(user_id) == 120
        assert await rc.hget(redis_keys.holds(user_id), f"r{user_id}") == b"120"
    depth, _ = await queue_depth(rc)
    assert depth == len(users)
    owners = {await cluster.owner(key_slot(redis_keys.balance(u).encode())) for u in users}
    assert owners == set(cluster.ports)


async def test_runner_follows_a_slot_moved_between_calls(cluster, rc, runner):
    user_id = 2001
    view = BalanceView(rc, runner)
    await view.publish(user_id, Decimal("2"), 1)
    assert (await view.hold(user_id, "a", 100, 60_000)).placed  # the runner knows the map now
    slot = key_slot(redis_keys.balance(user_id).encode())
    target = await _other_master(cluster, slot)
    await cluster.move_slot(slot, target)
    assert await cluster.owner(slot) == target
    result = await view.hold(user_id, "b", 200, 60_000)  # MOVED, then the new master
    assert result.placed and result.available_units == 2 * 10**9 - 300
    assert runner.redirections["MOVED"] >= 1
    node = Redis(host="127.0.0.1", port=target)
    try:  # the keys and the new hold are on the new master
        assert await node.hget(redis_keys.balance(user_id), "held") == b"300"
        assert sorted(await node.hkeys(redis_keys.holds(user_id))) == [b"a", b"b"]
    finally:
        await node.aclose()


async def test_scripts_during_a_slot_migration_run_once_each(cluster, rc, runner):
    """Holds and enqueues keep running while the users' slot migrates key by key:
    each meets ASK or TRYAGAIN (or MOVED) and is sent again only where it did not
    run, so the totals are exact."""
    users = [3000 + 16 * i for i in range(6)]  # one shard: one slot
    view, queue = BalanceView(rc, runner), UsageQueue(rc, runner)
    for user_id in users:
        await view.publish(user_id, Decimal("5"), 1)
    slot = key_slot(redis_keys.balance(users[0]).encode())
    target = await _other_master(cluster, slot)
    done: list[tuple[int, str]] = []

    async def traffic(user_id: int) -> None:
        for n in range(40):
            rid = f"m{user_id}-{n}"
            assert (await view.hold(user_id, rid, 1000, 60_000)).placed
            await queue.enqueue(_event(user_id, rid, 1000), 700)
            done.append((user_id, rid))
            await asyncio.sleep(0.002)

    stream = redis_keys.user_usage_stream(users[0])
    before = await rc.xlen(stream)
    migration = asyncio.create_task(cluster.move_slot(slot, target, pause=0.01))
    await asyncio.gather(*(traffic(u) for u in users))
    await migration
    assert await cluster.owner(slot) == target
    assert len(done) == 40 * len(users)
    assert runner.redirections["ASK"] + runner.redirections["TRYAGAIN"] >= 1  # mid-migration
    for user_id in users:
        holds = await rc.hgetall(redis_keys.holds(user_id))
        assert len(holds) == 40 and set(holds.values()) == {b"700"}
        assert await view.held_units(user_id) == 40 * 700
    assert await rc.xlen(stream) - before == 40 * len(users)


async def test_invalidation_published_on_one_node_reaches_every_node(cluster, rc):
    subscribers = [Redis(host="127.0.0.1", port=p) for p in cluster.ports]
    pubsubs = [s.pubsub(ignore_subscribe_messages=True) for s in subscribers]
    try:
        for ps in pubsubs:
            await ps.subscribe(redis_keys.INVALIDATE_CHANNEL)
        message = f"user:{secrets.randbelow(10**6)}"
        await invalidation.publish(rc, message)
        for ps in pubsubs:
            got = None
            for _ in range(50):
                got = await ps.get_message(timeout=0.1)
                if got:
                    break
            assert got and got["data"] == message.encode()
    finally:
        for ps in pubsubs:
            await ps.aclose()
        for s in subscribers:
            await s.aclose()


# --- a proxy and a worker on a cluster whose slots move ------------------------------


@pytest.fixture
async def cluster_stack(database_url, upstream, catalog_path, pg):
    server = PrivateCluster()
    await server.start()
    client = cluster_client(server.url)
    s = Stack(database_url, server.url, upstream.base, str(catalog_path))
    s.extra_env = server.env
    yield s, server, client
    await s.stop_all()
    await client.aclose()
    await server.destroy()


@pytest.mark.usefixtures("provider_keys")
async def test_requests_billed_once_while_slots_move(cluster_stack, pg):
    stack, server, redis = cluster_stack
    books = Accounts(pg, redis)
    accounts = [await books.create("5") for _ in range(4)]
    _, url = await stack.proxy()
    await stack.worker()
    slots = sorted({key_slot(redis_keys.balance(a.user_id).encode()) for a in accounts})
    ids: list[str] = []

    async def traffic(acct) -> None:
        client = anthropic_client(url, acct.key)
        for _ in range(15):
            raw = await client.messages.with_raw_response.create(
                model="claude-haiku-4-5", max_tokens=20, messages=HELLO
            )
            ids.append(raw.headers["x-request-id"])

    async def reshard() -> None:
        for slot in slots:  # every busy user's slot moves to another master
            await asyncio.sleep(0.2)
            await server.cluster.move_slot(slot, await _other_master(server.cluster, slot))

    await asyncio.gather(reshard(), *(traffic(a) for a in accounts))
    await wait_settled(pg, ids, timeout=60)
    for acct in accounts:
        for _ in range(200):
            if await BalanceView(redis).held_units(acct.user_id) == 0:
                break
            await asyncio.sleep(0.1)
        assert await BalanceView(redis).held_units(acct.user_id) == 0
        charges = await pg.fetch(
            "SELECT request_id, amount_usd FROM ledger WHERE user_id = $1 AND kind = 'charge'",
            acct.user_id,
        )
        assert len(charges) == len({c["request_id"] for c in charges}) == 15
        spent = -sum((c["amount_usd"] for c in charges), Decimal(0))
        assert await books.balance(acct.user_id) == Decimal(5) - spent
        view = await redis.hget(redis_keys.balance(acct.user_id), "units")
        assert int(view) == units_floor(Decimal(5) - spent)  # the worker published it
    assert await pending_count(redis) == 0
    assert await queue_depth(redis) == (0, None)
    seen = await consumers(redis)  # the worker's lanes, on every shard's stream
    assert seen and min(int(c["idle"]) for c in seen) < 60_000
    code, out = await stack.reconcile()
    assert code == 0, out


async def test_a_master_lost_fails_its_users_only_and_the_runner_comes_back(cluster, rc, runner):
    """A master killed mid-traffic: its users' scripts fail at once with a
    connection error (never resent: the proxy answers 503), the other masters'
    users go on; once it is back (empty, as a Redis that lost its data), the
    runner reconnects and the view is reloaded like after a flush."""
    view = BalanceView(rc, runner)
    users = list(range(4000, 4016))  # every shard once
    for user_id in users:
        await view.publish(user_id, Decimal("1"), 1)
        assert (await view.hold(user_id, f"x{user_id}", 10, 60_000)).placed
    victim = await cluster.owner(key_slot(redis_keys.balance(users[0]).encode()))
    on_victim = [
        u for u in users if await cluster.owner(key_slot(redis_keys.balance(u).encode())) == victim
    ]
    await cluster.kill_node(victim)
    try:
        for user_id in users:
            if user_id in on_victim:
                with pytest.raises(RedisConnectionError):
                    await view.hold(user_id, f"y{user_id}", 10, 60_000)
            else:  # before the cluster marks the node failed (node timeout 5 s)
                assert (await view.hold(user_id, f"y{user_id}", 10, 60_000)).placed
    finally:
        await cluster.restart_node(victim)
    for user_id in on_victim:
        assert (await view.hold(user_id, f"z{user_id}", 10, 60_000)).missing_view
        await view.publish(user_id, Decimal("1"), 1)
        assert (await view.hold(user_id, f"z{user_id}", 10, 60_000)).placed
