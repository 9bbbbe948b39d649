"""API-key controls on the request path (contract section 6), through real
proxies: budgets that hold under concurrency across two instances, exact
period spend, period rollover, model lists, expiry, and clearing each."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import aiohttp
import pytest

from proxy import key_controls
from proxy.hold_bound import request_bound
from proxy.providers import ADAPTERS
from shared import invalidation, redis_keys, usage_queue
from shared.catalog import load_catalog
from shared.db import api_keys
from shared.keys import hash_proxy_key
from shared.money import units_ceil, units_floor, units_to_usd
from shared.pricing import hold_usd
from tests.conftest import wait_holds_released, wait_settled
from tests.test_faults import assert_books_close

pytestmark = pytest.mark.usefixtures("provider_keys")

MODEL = "claude-haiku-4-5"
BODY = {"model": MODEL, "max_tokens": 300, "messages": [{"role": "user", "content": "hi there"}]}
RAW = json.dumps(BODY).encode()
K = 4


def hold_units_of(catalog_path) -> int:
    price = load_catalog(catalog_path).models[MODEL]
    bound = request_bound(ADAPTERS[("anthropic", "messages")], BODY, RAW, MODEL, price)
    return units_ceil(hold_usd(bound.input_tokens, bound.output_tokens, price, Decimal(1)))


async def set_controls(pg, redis, acct, **changes) -> None:
    await api_keys.set_controls(pg, acct.api_key_id, **changes)
    await invalidation.publish(redis, invalidation.key_message(hash_proxy_key(acct.key)))


async def post(http, url, key, *, body: bytes = RAW, headers: dict | None = None):
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json",
               "anthropic-version": "2023-06-01", **(headers or {})}  # fmt: skip
    async with http.post(f"{url}/v1/anthropic/v1/messages", data=body, headers=headers) as resp:
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.json()


async def key_document(http, url, key) -> dict:
    async with http.get(f"{url}/v1/account/key", headers={"Authorization": f"Bearer {key}"}) as r:
        assert r.status == 200
        return await r.json()


async def test_a_budget_for_k_holds_admits_k_of_4k_across_two_proxies(
    stack, books, pg, private_redis, upstream, catalog_path
):
    _, redis = private_redis
    await stack.worker()
    _, first = await stack.proxy()
    _, second = await stack.proxy()
    acct = await books.create("100")  # the balance is no limit here
    hold = hold_units_of(catalog_path)
    budget = units_to_usd(hold * K + hold // 2)  # room for K holds, not K + 1
    await set_controls(pg, redis, acct, budget_usd=budget, budget_period="day")
    seen = len(upstream.recorded())
    slow = {"x-sim-latency-ms": "600", "x-sim-chunks": "3"}
    async with aiohttp.ClientSession() as http:
        results = await asyncio.gather(
            *(post(http, (first, second)[i % 2], acct.key, headers=slow) for i in range(4 * K))
        )
    admitted = [h["x-request-id"] for status, h, _ in results if status == 200]
    refused = [(h, body) for status, h, body in results if status == 402]
    assert len(admitted) == K and len(refused) == 3 * K
    assert len(upstream.recorded()) - seen == K  # nothing upstream for a refusal
    headers, body = refused[0]
    assert body["error"]["type"] == "billing_error"
    assert "key_budget_exceeded" in body["error"]["message"]
    assert "API key budget exceeded" in body["error"]["message"]
    assert Decimal(headers["x-meterway-hold-usd"]) == units_to_usd(hold)
    assert Decimal(headers["x-meterway-available-usd"]) < units_to_usd(hold)

    await wait_settled(pg, admitted)
    await wait_holds_released(redis, acct.user_id)
    costs = await pg.fetch("SELECT cost_usd FROM usage_records WHERE user_id = $1", acct.user_id)
    spent = sum(r["cost_usd"] for r in costs)
    async with aiohttp.ClientSession() as http:
        document = await key_document(http, first, acct.key)
    assert Decimal(document["spend_period_usd"]) == spent  # exact, from Postgres
    assert Decimal(document["budget_usd"]) == budget and document["budget_period"] == "day"
    # Redis counts each settled request once, in whole units rounded up
    period = key_controls.budget_of(await owner_of(pg, acct)).period
    counted = await redis.hget(redis_keys.balance(acct.user_id), f"ks:{acct.api_key_id}:{period}")
    assert counted is not None and int(counted) == sum(units_ceil(r["cost_usd"]) for r in costs)
    await assert_books_close(pg, redis, stack, acct.user_id, Decimal(100))


async def owner_of(pg, acct):
    return await api_keys.owner_by_hash(pg, hash_proxy_key(acct.key))


async def test_a_worker_killed_and_a_duplicate_delivery_leave_the_period_spend_exact(
    stack, books, pg, private_redis, catalog_path
):
    _, redis = private_redis
    _, url = await stack.proxy()
    acct = await books.create("100")
    await set_controls(pg, redis, acct, budget_usd=Decimal(50), budget_period="month")
    ids = []
    async with aiohttp.ClientSession() as http:
        for _ in range(60):  # queued while no worker runs
            status, headers, _ = await post(http, url, acct.key)
            assert status == 200
            ids.append(headers["x-request-id"])
    worker = await stack.worker(SETTLE_BATCH_SIZE="5")
    for _ in range(500):
        done = await pg.fetchval(
            "SELECT count(*) FROM usage_records WHERE request_id = ANY($1::text[])", ids
        )
        if done >= 10:
            break
        await asyncio.sleep(0.01)
    await stack.kill(worker)
    await stack.worker()
    await wait_settled(pg, ids, timeout=40)
    await wait_holds_released(redis, acct.user_id)
    # a stream entry settled again (as when a claim races a slow worker) moves nothing
    from shared.events import UsageEvent
    from shared.usage_queue import UsageQueue

    row = await pg.fetchrow("SELECT * FROM usage_records WHERE request_id = $1", ids[0])
    replay = UsageEvent(
        request_id=ids[0], user_id=acct.user_id, api_key_id=acct.api_key_id,
        provider="anthropic", model=MODEL, endpoint="messages", stream=False,
        usage={"uncached_input_tokens": row["input_tokens"], "output_tokens": row["output_tokens"]},
    )  # fmt: skip
    await UsageQueue(redis).enqueue(replay, 0)
    for _ in range(50):
        if (await usage_queue.queue_depth(redis))[0] == 0:
            break
        await asyncio.sleep(0.1)
    costs = await pg.fetch("SELECT cost_usd FROM usage_records WHERE user_id = $1", acct.user_id)
    assert len(costs) == 60
    async with aiohttp.ClientSession() as http:
        document = await key_document(http, url, acct.key)
    assert Decimal(document["spend_period_usd"]) == sum(r["cost_usd"] for r in costs)
    period = key_controls.budget_of(await owner_of(pg, acct)).period
    counted = await redis.hget(redis_keys.balance(acct.user_id), f"ks:{acct.api_key_id}:{period}")
    assert int(counted) == sum(units_ceil(r["cost_usd"]) for r in costs)
    await assert_books_close(pg, redis, stack, acct.user_id, Decimal(100))


@pytest.mark.usefixtures("worker")
async def test_the_budget_resets_with_its_period(proxy_url, accounts, pg, redis, monkeypatch):
    """The clock is moved through the proxy's one clock for key controls; the
    day's spend is what Redis counts for that day."""
    acct = await accounts.create("10")
    budget = Decimal("0.002")
    await set_controls(pg, redis, acct, budget_usd=budget, budget_period="day")
    evening = datetime.now(UTC).replace(hour=23, minute=59, second=30, microsecond=0)
    spent_today = units_floor(budget) - 1000  # all but a millionth of a dollar
    field = f"ks:{acct.api_key_id}:d{evening:%Y%m%d}"
    await redis.hset(redis_keys.balance(acct.user_id), field, str(spent_today))
    monkeypatch.setattr(key_controls, "now", lambda: evening)
    async with aiohttp.ClientSession() as http:
        status, headers, body = await post(http, proxy_url, acct.key)
        assert status == 402 and "key_budget_exceeded" in body["error"]["message"]
        assert headers["x-meterway-available-usd"] == "0.000001"
        # a minute later it is the next UTC day: nothing spent in it, a fresh budget
        monkeypatch.setattr(key_controls, "now", lambda: evening + timedelta(seconds=60))
        status, headers, _ = await post(http, proxy_url, acct.key)
        assert status == 200
    await wait_settled(pg, [headers["x-request-id"]])
    await wait_holds_released(redis, acct.user_id)
    view = await redis.hgetall(redis_keys.balance(acct.user_id))
    assert field.encode() not in view  # the old day's counter is dropped


async def test_models_and_expiry_hold_on_both_proxies_and_clear_within_seconds(
    stack, books, pg, private_redis, upstream
):
    _, redis = private_redis
    await stack.worker()
    urls = [(await stack.proxy())[1], (await stack.proxy())[1]]
    acct = await books.create("10")
    other = {**BODY, "model": "claude-sonnet-4-5"}
    async with aiohttp.ClientSession() as http:
        for url in urls:  # both proxies have the owner cached, without controls
            assert (await post(http, url, acct.key))[0] == 200
        await set_controls(pg, redis, acct, models=(MODEL,))
        for url in urls:
            await wait_for(http, url, acct.key, 403, json.dumps(other).encode())
        seen = len(upstream.recorded())
        for url in urls:
            status, _, body = await post(http, url, acct.key, body=json.dumps(other).encode())
            assert status == 403 and body["error"]["type"] == "permission_error"
            assert "Model not allowed for this API key" in body["error"]["message"]
            assert (await post(http, url, acct.key))[0] == 200  # the listed model still works
        assert len(upstream.recorded()) - seen == 2  # nothing upstream for a refusal
        await set_controls(pg, redis, acct, models=None)
        for url in urls:
            await wait_for(http, url, acct.key, 200, json.dumps(other).encode())

        expires = datetime.now(UTC) + timedelta(seconds=2)
        await set_controls(pg, redis, acct, expires_at=expires)
        for url in urls:
            assert (await post(http, url, acct.key))[0] == 200
        await asyncio.sleep(max((expires - datetime.now(UTC)).total_seconds(), 0) + 0.2)
        for url in urls:  # within a second of the expiry, on both
            status, _, body = await post(http, url, acct.key)
            assert status == 401 and body["error"]["type"] == "authentication_error"
            assert "API key expired" in body["error"]["message"]
            assert "expired_api_key" in body["error"]["message"]
        await set_controls(pg, redis, acct, expires_at=None)
        for url in urls:
            await wait_for(http, url, acct.key, 200)

        await set_controls(pg, redis, acct, budget_usd=Decimal(0), budget_period="total")
        for url in urls:
            await wait_for(http, url, acct.key, 402)
        await set_controls(pg, redis, acct, budget_usd=None, budget_period=None)
        for url in urls:
            await wait_for(http, url, acct.key, 200)


async def wait_for(http, url, key, status, body: bytes = RAW, within: float = 5.0):
    """Post until the answer has `status`; a change must show within 5 s."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = await post(http, url, key, body=body)
        if result[0] == status:
            return result
        assert asyncio.get_running_loop().time() < deadline, f"still {result[0]}: {result[2]}"
        await asyncio.sleep(0.1)
