"""Fault tests: real proxy and worker processes, a private Redis server, real
Postgres and the upstream simulator. Each scenario injects a fault and then
checks the books: every admitted request billed exactly once, the ledger and
usage records agree, no hold left behind, and `meterway reconcile` is clean."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import aiohttp
import anthropic
import openai
import pytest
from redis.asyncio import Redis

from shared import usage_queue
from shared.balance_view import BalanceView
from tests.clients import anthropic_client, openai_client
from tests.conftest import wait_settled
from tests.stack import PgRelay, Stack

pytestmark = pytest.mark.usefixtures("provider_keys")

HELLO = [{"role": "user", "content": "Tell me a long story"}]


async def held(redis: Redis, user_id: int) -> int:
    return await BalanceView(redis).held_units(user_id)


async def assert_books_close(pg, redis: Redis, stack: Stack, user_id: int, start: Decimal):
    """Everything settles, nothing is held, money adds up, reconcile is clean."""
    for _ in range(300):
        if await held(redis, user_id) == 0:
            break
        await asyncio.sleep(0.1)
    assert await held(redis, user_id) == 0, "a hold was left behind"
    usage = await pg.fetch(
        "SELECT request_id, cost_usd FROM usage_records WHERE user_id = $1", user_id
    )
    charges = await pg.fetch(
        "SELECT request_id, amount_usd FROM ledger WHERE user_id = $1 AND kind = 'charge'", user_id
    )
    assert sorted(r["request_id"] for r in usage) == sorted(r["request_id"] for r in charges)
    assert len({r["request_id"] for r in charges}) == len(charges)  # none charged twice
    spent = sum((r["cost_usd"] for r in usage), Decimal(0))
    balance = await pg.fetchval("SELECT balance_usd FROM users WHERE id = $1", user_id)
    assert start - balance == spent == -sum((r["amount_usd"] for r in charges), Decimal(0))
    code, out = await stack.reconcile()
    assert code == 0, out
    return usage


async def read_some_and_leave(url: str, key: str, path: str, body: dict, headers: dict, n: int):
    """Read n SSE events of a stream, then drop the connection."""
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            f"{url}{path}", json=body, headers={"Authorization": f"Bearer {key}", **headers}
        )
        request_id = resp.headers["x-request-id"]
        seen = 0
        async for line in resp.content:
            if line.startswith(b"data:"):
                seen += 1
                if seen >= n:
                    break
        resp.close()
    return request_id


@pytest.mark.parametrize("policy", ["abort", "finish"])
async def test_client_disconnects_mid_stream(stack, books, pg, private_redis, policy):
    _, redis = private_redis
    await stack.worker()
    _, url = await stack.proxy(CLIENT_DISCONNECT_POLICY=policy)
    acct = await books.create("5")
    body = {"model": "claude-haiku-4-5", "max_tokens": 100, "stream": True, "messages": HELLO}
    sim = {"x-sim-chunks": "30", "x-sim-delay-ms": "30"}
    request_id = await read_some_and_leave(url, acct.key, "/v1/anthropic/v1/messages", body, sim, 4)
    await wait_settled(pg, [request_id], timeout=20)
    record = await pg.fetchrow("SELECT * FROM usage_records WHERE request_id = $1", request_id)
    if policy == "abort":
        # input is exact (message_start), output is an estimate of what was generated
        assert record["estimated"] is True
        assert 1 <= record["output_tokens"] < 30
    else:
        assert record["estimated"] is False and record["output_tokens"] == 30
    assert record["outcome"] == "client_disconnected"
    await assert_books_close(pg, redis, stack, acct.user_id, Decimal(5))


async def test_openai_client_disconnect_without_usage_is_estimated(stack, books, pg, private_redis):
    _, redis = private_redis
    await stack.worker()
    _, url = await stack.proxy()
    acct = await books.create("5")
    body = {"model": "gpt-4o-mini", "stream": True, "messages": HELLO}
    sim = {"x-sim-chunks": "40", "x-sim-delay-ms": "20"}
    request_id = await read_some_and_leave(
        url, acct.key, "/v1/openai/chat/completions", body, sim, 5
    )
    await wait_settled(pg, [request_id], timeout=20)
    record = await pg.fetchrow("SELECT * FROM usage_records WHERE request_id = $1", request_id)
    assert record["estimated"] is True and record["input_tokens"] > 0
    assert 1 <= record["output_tokens"] < 40
    await assert_books_close(pg, redis, stack, acct.user_id, Decimal(5))


async def test_upstream_breaks_mid_stream(stack, books, pg, private_redis):
    _, redis = private_redis
    await stack.worker()
    _, url = await stack.proxy()
    acct = await books.create("5")
    ids = []
    # a connection reset: the client gets the provider's own error event, cleanly
    client = anthropic_client(url, acct.key, **{"x-sim-break-after": "3", "x-sim-chunks": "10"})
    raw = await client.messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=50, messages=HELLO, stream=True
    )
    ids.append(raw.headers["x-request-id"])
    with pytest.raises(anthropic.APIStatusError) as err:
        async for _ in await raw.parse():
            pass
    assert "ended unexpectedly" in str(err.value)
    # an error event inside the stream is passed through as it is
    client = openai_client(url, acct.key, **{"x-sim-error-event-after": "2"})
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO, stream=True
    )
    ids.append(raw.headers["x-request-id"])
    with pytest.raises(openai.APIError):
        async for _ in raw.parse():
            pass
    await wait_settled(pg, ids, timeout=20)
    # in the order the requests were made: the first one's event may be enqueued
    # after the second's (its client saw the error event before the enqueue)
    rows = await pg.fetch(
        "SELECT outcome, estimated, output_tokens FROM usage_records"
        " WHERE request_id = ANY($1::text[]) ORDER BY array_position($1::text[], request_id)",
        ids,
    )
    assert [r["outcome"] for r in rows] == ["upstream_broken", "upstream_error_event"]
    assert all(r["estimated"] for r in rows)
    assert [r["output_tokens"] for r in rows] == [3, 2]
    await assert_books_close(pg, redis, stack, acct.user_id, Decimal(5))


async def test_missing_usage_is_estimated_and_counted(stack, books, pg, private_redis):
    _, redis = private_redis
    await stack.worker()
    _, url = await stack.proxy()
    acct = await books.create("5")
    client = openai_client(url, acct.key, **{"x-sim-no-usage": "1", "x-sim-chunks": "6"})
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO, stream=True
    )
    chunks = [c async for c in raw.parse()]
    assert chunks
    await wait_settled(pg, [raw.headers["x-request-id"]], timeout=20)
    record = await pg.fetchrow(
        "SELECT * FROM usage_records WHERE request_id = $1", raw.headers["x-request-id"]
    )
    assert record["estimated"] is True and record["output_tokens"] == 6
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as resp:
        metrics = await resp.text()
    assert 'meterway_estimated_usage_total{provider="openai"} 1' in metrics
    await assert_books_close(pg, redis, stack, acct.user_id, Decimal(5))


async def test_worker_killed_mid_batch_and_duplicate_delivery(stack, books, pg, private_redis):
    _, redis = private_redis
    _, url = await stack.proxy()
    acct = await books.create("5")
    client = anthropic_client(url, acct.key)
    ids = []
    for _ in range(120):  # queued while no worker runs
        raw = await client.messages.with_raw_response.create(
            model="claude-haiku-4-5", max_tokens=20, messages=HELLO
        )
        ids.append(raw.headers["x-request-id"])
    worker = await stack.worker(SETTLE_BATCH_SIZE="5")
    for _ in range(500):  # kill it while it is settling
        done = await pg.fetchval(
            "SELECT count(*) FROM usage_records WHERE request_id = ANY($1::text[])", ids
        )
        if done >= 10:
            break
        await asyncio.sleep(0.01)
    await stack.kill(worker)
    assert done < 120, "the worker finished before it could be killed"
    await stack.worker()  # a restarted worker picks up the rest, the killed jobs included
    await wait_settled(pg, ids, timeout=40)

    # the same event delivered again (a re-enqueue) changes nothing
    from shared.events import UsageEvent
    from shared.usage_queue import UsageQueue

    row = await pg.fetchrow("SELECT * FROM usage_records WHERE request_id = $1", ids[0])
    replay = UsageEvent(
        request_id=ids[0],
        user_id=acct.user_id,
        api_key_id=acct.api_key_id,
        provider="anthropic",
        model="claude-haiku-4-5",
        endpoint="messages",
        stream=False,
        usage={"uncached_input_tokens": row["input_tokens"], "output_tokens": row["output_tokens"]},
    )
    queue = UsageQueue(redis)
    await queue.enqueue(replay, 0)
    await queue.enqueue(replay, 0)
    for _ in range(50):  # both copies consumed
        if (await usage_queue.queue_depth(redis))[0] == 0:
            break
        await asyncio.sleep(0.1)
    assert (await usage_queue.queue_depth(redis))[0] == 0
    assert await pg.fetchval("SELECT count(*) FROM ledger WHERE request_id = $1", ids[0]) == 1
    await assert_books_close(pg, redis, stack, acct.user_id, Decimal(5))


async def test_worker_down_then_back(stack, books, pg, private_redis):
    _, redis = private_redis
    _, url = await stack.proxy()
    acct = await books.create("1")
    client = openai_client(url, acct.key)
    ids = []
    for _ in range(10):
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=HELLO, max_tokens=50
        )
        ids.append(raw.headers["x-request-id"])
    # unsettled requests keep their (priced) pending charges: spend stays bounded
    pending = await held(redis, acct.user_id)
    assert pending > 0
    assert (
        await pg.fetchval("SELECT count(*) FROM usage_records WHERE user_id = $1", acct.user_id)
        == 0
    )
    await stack.worker()
    await wait_settled(pg, ids, timeout=30)
    usage = await assert_books_close(pg, redis, stack, acct.user_id, Decimal(1))
    # the pending charge was the exact cost, rounded up to a nano-dollar
    assert pending >= sum(int(r["cost_usd"] * 10**9) for r in usage)


async def test_proxy_killed_mid_request_releases_its_hold(stack, books, pg, private_redis):
    _, redis = private_redis
    await stack.worker()
    proc, url = await stack.proxy(HOLD_TTL_SECONDS="2")
    acct = await books.create("5")
    client = anthropic_client(url, acct.key, **{"x-sim-latency-ms": "3000"})
    task = asyncio.create_task(
        client.messages.create(model="claude-haiku-4-5", max_tokens=100, messages=HELLO)
    )
    await asyncio.sleep(0.5)
    assert await held(redis, acct.user_id) > 0
    await stack.kill(proc)
    with pytest.raises(anthropic.APIConnectionError):
        await task
    orphan = None
    for _ in range(200):  # expiry (2 s) + the reaper's 5 s cadence; it records after releasing
        orphan = await pg.fetchrow("SELECT * FROM orphaned_holds WHERE user_id = $1", acct.user_id)
        if orphan is not None and await held(redis, acct.user_id) == 0:
            break
        await asyncio.sleep(0.1)
    assert orphan is not None and orphan["held_usd"] > 0
    await assert_books_close(pg, redis, stack, acct.user_id, Decimal(5))
    assert await pg.fetchval("SELECT balance_usd FROM users WHERE id = $1", acct.user_id) == 5


async def test_redis_flushed_and_redis_down(stack, books, pg, private_redis):
    server, redis = private_redis
    await stack.worker()
    _, url = await stack.proxy()
    acct = await books.create("5")
    client = openai_client(url, acct.key)
    slow = openai_client(url, acct.key, **{"x-sim-latency-ms": "1500"})
    await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    in_flight = asyncio.create_task(
        slow.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HELLO)
    )
    await asyncio.sleep(0.5)
    await redis.flushall()  # balances and holds gone; Postgres still knows
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO
    )
    ids = [raw.headers["x-request-id"], (await in_flight).headers["x-request-id"]]
    await wait_settled(pg, ids, timeout=20)
    await assert_books_close(pg, redis, stack, acct.user_id, Decimal(5))

    await server.stop()  # Redis unreachable: refuse, never serve unmetered
    with pytest.raises(openai.InternalServerError) as err:
        await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert err.value.status_code == 503
    await server.start()
    await asyncio.sleep(1.0)
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO
    )
    await wait_settled(pg, [raw.headers["x-request-id"]], timeout=30)
    await assert_books_close(pg, redis, stack, acct.user_id, Decimal(5))


async def test_postgres_unreachable_for_the_worker(stack, books, pg, private_redis, database_url):
    _, redis = private_redis
    relay = PgRelay()
    await relay.restore()
    relayed = database_url.replace(":5432/", f":{relay.port}/")
    await stack.worker(DATABASE_URL=relayed)
    _, url = await stack.proxy()
    acct = await books.create("5")
    client = openai_client(url, acct.key)
    await relay.cut()
    ids = []
    for _ in range(5):
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=HELLO
        )
        ids.append(raw.headers["x-request-id"])
    await asyncio.sleep(2.0)
    assert (
        await pg.fetchval(
            "SELECT count(*) FROM usage_records WHERE request_id = ANY($1::text[])", ids
        )
        == 0
    )
    await relay.restore()
    await wait_settled(pg, ids, timeout=60)
    await assert_books_close(pg, redis, stack, acct.user_id, Decimal(5))
    await relay.cut()


async def test_overrun_is_bounded_and_then_refused(stack, books, pg, private_redis):
    _, redis = private_redis
    await stack.worker()
    _, url = await stack.proxy()
    acct = await books.create("0.01")
    # the prompt estimate is tiny, but upstream reports 20,000 input tokens: $0.02
    big = anthropic_client(url, acct.key, **{"x-sim-input-tokens": "20000", "x-sim-chunks": "1"})
    raw = await big.messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=10, messages=HELLO
    )
    request_id = raw.headers["x-request-id"]
    await wait_settled(pg, [request_id], timeout=20)
    cost = await pg.fetchval("SELECT cost_usd FROM usage_records WHERE request_id = $1", request_id)
    assert cost == Decimal("0.020005")  # (20000 x 1 + 1 x 5) / 1e6
    balance = await pg.fetchval("SELECT balance_usd FROM users WHERE id = $1", acct.user_id)
    assert balance == Decimal("0.01") - cost < 0
    with pytest.raises(anthropic.PaymentRequiredError):
        await anthropic_client(url, acct.key).messages.create(
            model="claude-haiku-4-5", max_tokens=10, messages=HELLO
        )
    await assert_books_close(pg, redis, stack, acct.user_id, Decimal("0.01"))


async def test_rate_multiplier_of_the_request_time_is_billed(stack, books, pg, private_redis):
    _, redis = private_redis
    _, url = await stack.proxy()
    acct = await books.create("5", rate_multiplier="2")
    client = anthropic_client(url, acct.key, **{"x-sim-input-tokens": "1000", "x-sim-chunks": "1"})
    raw = await client.messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=10, messages=HELLO
    )
    # the operator changes the rate before the (late) worker settles the request
    await pg.execute("UPDATE users SET rate_multiplier = 3 WHERE id = $1", acct.user_id)
    await stack.worker()
    await wait_settled(pg, [raw.headers["x-request-id"]], timeout=20)
    cost = await pg.fetchval(
        "SELECT cost_usd FROM usage_records WHERE request_id = $1", raw.headers["x-request-id"]
    )
    assert cost == Decimal("0.00201")  # (1000 x 1 + 1 x 5) / 1e6 x 2, the rate at request time
    await assert_books_close(pg, redis, stack, acct.user_id, Decimal(5))
