"""Anthropic Messages through the proxy with the official SDK: both auth headers,
both paths, streaming, and cache reads and writes priced exactly."""

from __future__ import annotations

from decimal import Decimal

import aiohttp
import pytest

from tests.clients import anthropic_client
from tests.conftest import wait_holds_released, wait_settled
from tests.expected import expected_cost

pytestmark = pytest.mark.usefixtures("worker")

MESSAGES = [{"role": "user", "content": "Hello, Claude"}]


client = anthropic_client


async def test_messages_non_streaming(proxy_url, accounts, pg, redis, catalog_path, upstream):
    acct = await accounts.create("5")
    raw = await client(proxy_url, acct.key).messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=100, messages=MESSAGES
    )
    message = await raw.parse()
    assert message.content[0].text == "tok0 tok1 tok2 tok3 tok4 "
    request_id = raw.headers["x-request-id"]
    assert upstream.recorded()[-1]["path"] == "/anthropic/v1/messages"
    await wait_settled(pg, [request_id])
    cost = expected_cost(
        catalog_path,
        "claude-haiku-4-5",
        uncached=message.usage.input_tokens,
        output=message.usage.output_tokens,
    )
    assert await accounts.balance(acct.user_id) == Decimal("5") - cost
    await wait_holds_released(redis, acct.user_id)


async def test_messages_streaming_with_cache_reads_and_writes(
    proxy_url, accounts, pg, catalog_path
):
    acct = await accounts.create("5")
    headers = {
        "x-sim-cached-tokens": "100",
        "x-sim-cache-write-tokens": "50",
        "x-sim-cache-write-1h-tokens": "20",
        "x-sim-chunks": "8",
    }
    async with client(proxy_url, acct.key, **headers).messages.stream(
        model="claude-haiku-4-5", max_tokens=100, messages=MESSAGES
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
        request_id = stream.response.headers["x-request-id"]
    assert text == "".join(f"tok{i} " for i in range(8))
    usage = final.usage
    assert usage.cache_read_input_tokens == 100 and usage.cache_creation_input_tokens == 50
    await wait_settled(pg, [request_id])
    cost = expected_cost(
        catalog_path,
        "claude-haiku-4-5",
        uncached=usage.input_tokens,
        cache_read=100,
        cache_write_5m=30,
        cache_write_1h=20,
        output=8,
    )
    # e.g. 30 x 3.75 (5-minute writes) + 20 x 6 (1-hour writes) are in there
    assert await accounts.balance(acct.user_id) == Decimal("5") - cost
    record = await pg.fetchrow("SELECT * FROM usage_records WHERE request_id = $1", request_id)
    assert record["input_tokens"] == usage.input_tokens + 150
    assert (record["cache_read_tokens"], record["cache_write_tokens"]) == (100, 50)
    assert record["cost_usd"] == cost and record["estimated"] is False


async def test_missing_cache_prices_fall_back_to_input_price(proxy_url, accounts, pg):
    acct = await accounts.create("5")
    headers = {
        "x-sim-input-tokens": "1000",
        "x-sim-cached-tokens": "200",
        "x-sim-cache-write-tokens": "300",
        "x-sim-chunks": "4",
    }
    raw = await client(proxy_url, acct.key, **headers).messages.with_raw_response.create(
        model="claude-plain", max_tokens=50, messages=MESSAGES
    )
    await wait_settled(pg, [raw.headers["x-request-id"]])
    # (1000 + 200 + 300) x 0.8 + 4 x 4 = 1216 -> per million
    assert await accounts.balance(acct.user_id) == Decimal("5") - Decimal("0.001216")


async def test_x_api_key_header_and_plain_path(proxy_url, accounts, pg):
    acct = await accounts.create("5")
    body = {"model": "claude-haiku-4-5", "max_tokens": 20, "messages": MESSAGES}
    headers = {"x-api-key": acct.key, "anthropic-version": "2023-06-01"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{proxy_url}/v1/anthropic/messages", json=body, headers=headers) as r:
            assert r.status == 200
            data = await r.json()
            request_id = r.headers["x-request-id"]
        # x-api-key is not accepted on OpenAI paths
        async with http.post(
            f"{proxy_url}/v1/openai/chat/completions",
            json={"model": "gpt-4o", "messages": MESSAGES},
            headers={"x-api-key": acct.key},
        ) as r:
            assert r.status == 401
    assert data["type"] == "message"
    await wait_settled(pg, [request_id])


async def test_client_headers_are_passed_on(proxy_url, accounts, upstream):
    acct = await accounts.create("5")
    await client(proxy_url, acct.key, **{"anthropic-beta": "test-beta-1"}).messages.create(
        model="claude-haiku-4-5", max_tokens=10, messages=MESSAGES
    )
    sent = upstream.recorded()[-1]["headers"]
    assert sent["anthropic-beta"] == "test-beta-1"
    assert "anthropic-version" in sent


async def test_models_list_in_anthropic_format(proxy_url, accounts):
    acct = await accounts.create("1")
    page = await client(proxy_url, acct.key).models.list()
    ids = [m.id for m in page.data]
    assert "claude-sonnet-4-5" in ids and "gpt-4o" not in ids
