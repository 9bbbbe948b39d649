"""OpenAI Chat Completions and Responses through the proxy with the official SDK:
answers unchanged, usage metered, money settled exactly."""

from __future__ import annotations

import asyncio
import itertools
from decimal import Decimal

import pytest

from tests.clients import openai_client
from tests.conftest import wait_holds_released, wait_settled
from tests.expected import expected_cost

pytestmark = pytest.mark.usefixtures("worker")

MESSAGES = [{"role": "user", "content": "Say hello to the meter."}]


client = openai_client


async def test_chat_non_streaming_is_billed_exactly(proxy_url, accounts, pg, redis, catalog_path):
    acct = await accounts.create("10")
    raw = await client(proxy_url, acct.key).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MESSAGES
    )
    completion = raw.parse()
    request_id = raw.headers["x-request-id"]
    assert request_id.startswith("req_")
    assert raw.headers["x-upstream-request-id"].startswith("req_")
    assert completion.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4 "
    usage = completion.usage
    await wait_settled(pg, [request_id])
    cost = expected_cost(
        catalog_path, "gpt-4o", uncached=usage.prompt_tokens, output=usage.completion_tokens
    )
    assert cost > 0
    assert await accounts.balance(acct.user_id) == Decimal("10") - cost
    await wait_holds_released(redis, acct.user_id)
    record = await pg.fetchrow("SELECT * FROM usage_records WHERE request_id = $1", request_id)
    assert record["cost_usd"] == cost
    assert record["input_tokens"] == usage.prompt_tokens
    assert record["output_tokens"] == usage.completion_tokens
    assert record["stream"] is False and record["estimated"] is False


async def test_chat_stream_without_include_usage_hides_the_usage_chunk(
    proxy_url, accounts, pg, catalog_path, upstream
):
    acct = await accounts.create("10")
    raw = await client(proxy_url, acct.key).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MESSAGES, stream=True
    )
    chunks = [chunk async for chunk in raw.parse()]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "tok0 tok1 tok2 tok3 tok4 "
    )
    assert all(c.usage is None for c in chunks), "the usage-only chunk must not reach the client"
    assert all(c.choices for c in chunks)
    # the proxy asked upstream for usage itself
    sent = upstream.recorded()[-1]["body"]
    assert sent["stream_options"] == {"include_usage": True}
    request_id = raw.headers["x-request-id"]
    await wait_settled(pg, [request_id])
    record = await pg.fetchrow("SELECT * FROM usage_records WHERE request_id = $1", request_id)
    assert record["estimated"] is False and record["stream"] is True
    assert record["output_tokens"] == 5
    cost = expected_cost(
        catalog_path, "gpt-4o", uncached=record["input_tokens"], output=record["output_tokens"]
    )
    assert await accounts.balance(acct.user_id) == Decimal("10") - cost


async def test_chat_stream_with_include_usage_passes_usage_through(
    proxy_url, accounts, pg, catalog_path
):
    acct = await accounts.create("10")
    stream = await client(
        proxy_url, acct.key, **{"x-sim-cached-tokens": "3"}
    ).chat.completions.create(
        model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    assert usage.prompt_tokens_details.cached_tokens == 3
    request_id = stream.response.headers["x-request-id"]
    await wait_settled(pg, [request_id])
    cost = expected_cost(
        catalog_path,
        "gpt-4o",
        uncached=usage.prompt_tokens - 3,
        cache_read=3,
        output=usage.completion_tokens,
    )
    assert await accounts.balance(acct.user_id) == Decimal("10") - cost
    record = await pg.fetchrow("SELECT * FROM usage_records WHERE request_id = $1", request_id)
    assert record["cache_read_tokens"] == 3
    assert record["input_tokens"] == usage.prompt_tokens


async def test_cached_tokens_are_priced_at_the_cache_read_price(
    proxy_url, accounts, pg, catalog_path
):
    acct = await accounts.create("10")
    headers = {"x-sim-cached-tokens": "5", "x-sim-input-tokens": "2000", "x-sim-chunks": "7"}
    raw = await client(proxy_url, acct.key, **headers).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    usage = raw.parse().usage
    assert usage.prompt_tokens == 2000 and usage.prompt_tokens_details.cached_tokens == 5
    await wait_settled(pg, [raw.headers["x-request-id"]])
    cost = expected_cost(catalog_path, "gpt-4o-mini", uncached=1995, cache_read=5, output=7)
    # 1995 * 0.15 + 5 * 0.075 + 7 * 0.6 = 303.825 -> per million
    assert cost == Decimal("0.000303825")
    assert await accounts.balance(acct.user_id) == Decimal("10") - cost


async def test_rate_multiplier_and_model_multiplier(proxy_url, accounts, pg, catalog_path):
    acct = await accounts.create("10", rate_multiplier="1.25")
    headers = {"x-sim-input-tokens": "1000", "x-sim-chunks": "10"}
    raw = await client(proxy_url, acct.key, **headers).chat.completions.with_raw_response.create(
        model="gpt-4o-markup", messages=MESSAGES
    )
    await wait_settled(pg, [raw.headers["x-request-id"]])
    cost = expected_cost(catalog_path, "gpt-4o-markup", uncached=1000, output=10, rate="1.25")
    # (1000 * 2.5 + 10 * 10) / 1e6 * 1.25 * 1.5
    assert cost == Decimal("0.004875")
    assert await accounts.balance(acct.user_id) == Decimal("10") - cost


async def test_responses_non_streaming_and_streaming(proxy_url, accounts, pg, catalog_path):
    acct = await accounts.create("10")
    c = client(proxy_url, acct.key, **{"x-sim-cached-tokens": "2"})
    raw = await c.responses.with_raw_response.create(model="gpt-4.1", input="Hello there")
    response = raw.parse()
    assert response.output_text == "tok0 tok1 tok2 tok3 tok4 "
    ids = [raw.headers["x-request-id"]]
    costs = [
        expected_cost(
            catalog_path,
            "gpt-4.1",
            uncached=response.usage.input_tokens - 2,
            cache_read=2,
            output=response.usage.output_tokens,
        )
    ]
    stream = await c.responses.create(model="gpt-4.1", input="Hello there", stream=True)
    events = [event async for event in stream]
    assert [e.type for e in events][-1] == "response.completed"
    final = events[-1].response
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "tok0 tok1 tok2 tok3 tok4 "
    ids.append(stream.response.headers["x-request-id"])
    costs.append(
        expected_cost(
            catalog_path,
            "gpt-4.1",
            uncached=final.usage.input_tokens - 2,
            cache_read=2,
            output=final.usage.output_tokens,
        )
    )
    await wait_settled(pg, ids)
    assert await accounts.balance(acct.user_id) == Decimal("10") - sum(costs)
    rows = await pg.fetch(  # in request order (a whole answer is sent before its enqueue)
        "SELECT endpoint, stream, cost_usd FROM usage_records WHERE request_id = ANY($1::text[])"
        " ORDER BY array_position($1::text[], request_id)",
        ids,
    )
    assert [(r["endpoint"], r["stream"]) for r in rows] == [
        ("responses", False),
        ("responses", True),
    ]
    assert [r["cost_usd"] for r in rows] == costs


async def test_models_list_in_openai_format(proxy_url, accounts):
    acct = await accounts.create("1")
    models = [m.id async for m in client(proxy_url, acct.key).models.list()]
    assert "gpt-4o" in models and "gpt-4.1" in models
    assert not any(m.startswith("claude") for m in models)


async def test_account_and_usage_endpoints(proxy_url, accounts, pg, catalog_path):
    import aiohttp

    acct = await accounts.create("3.5")
    raw = await client(proxy_url, acct.key).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MESSAGES
    )
    request_id = raw.headers["x-request-id"]
    usage = raw.parse().usage
    await wait_settled(pg, [request_id])
    cost = expected_cost(
        catalog_path, "gpt-4o", uncached=usage.prompt_tokens, output=usage.completion_tokens
    )
    headers = {"Authorization": f"Bearer {acct.key}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(f"{proxy_url}/v1/account") as resp:
            assert resp.status == 200
            assert resp.headers["x-request-id"].startswith("req_")
            account = await resp.json()
        async with http.get(f"{proxy_url}/v1/account/usage?limit=5") as resp:
            records = (await resp.json())["data"]
        async with http.get(f"{proxy_url}/v1/account/usage?limit=5000") as resp:
            assert resp.status == 400
    assert account["email"] == acct.email
    assert Decimal(account["balance_usd"]) == Decimal("3.5") - cost
    assert Decimal(account["spend_today_usd"]) == cost
    assert Decimal(account["held_usd"]) == 0
    assert Decimal(account["available_usd"]) == Decimal("3.5") - cost
    assert len(records) == 1
    rec = records[0]
    assert rec["request_id"] == request_id
    assert Decimal(rec["cost_usd"]) == cost
    assert rec["endpoint"] == "chat/completions" and rec["provider"] == "openai"
    assert rec["status"] == "settled" and rec["estimated"] is False
    assert rec["input_tokens"] == usage.prompt_tokens


async def test_stream_events_reach_the_client_as_upstream_sends_them(proxy_url, accounts, pg):
    """Never buffered: with 300 ms between upstream events, each content chunk
    reaches the SDK about 300 ms after the previous one, not all at the end."""
    acct = await accounts.create("10")
    slow = client(proxy_url, acct.key, **{"x-sim-chunks": "4", "x-sim-delay-ms": "300"})
    loop = asyncio.get_running_loop()
    stream = await slow.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    arrivals = [
        loop.time() async for chunk in stream if chunk.choices and chunk.choices[0].delta.content
    ]
    assert len(arrivals) == 4
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert all(gap > 0.2 for gap in gaps), gaps
