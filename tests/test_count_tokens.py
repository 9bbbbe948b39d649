"""Anthropic messages/count_tokens through the proxy with the official SDK:
forwarded free (key, model and model list checked, the key's rpm counted, its
tpm not), never held, never billed, users without credit served."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import aiohttp
import anthropic
import pytest

from shared import invalidation, redis_keys
from shared.db import api_keys
from shared.keys import hash_proxy_key
from simulator.tokens import count_from_chars
from tests.clients import anthropic_client
from tests.conftest import PROVIDER_SECRETS, wait_settled

pytestmark = pytest.mark.usefixtures("worker")

MODEL = "claude-haiku-4-5"
MESSAGES = [{"role": "user", "content": "How many tokens is this?"}]


async def set_controls(pg, redis, acct, **changes) -> None:
    await api_keys.set_controls(pg, acct.api_key_id, **changes)
    await invalidation.publish(redis, invalidation.key_message(hash_proxy_key(acct.key)))


async def usage_count(pg, user_id: int) -> int:
    return await pg.fetchval("SELECT count(*) FROM usage_records WHERE user_id = $1", user_id)


async def holds_of(redis, user_id: int) -> dict:
    return await redis.hgetall(redis_keys.user_keys(user_id)[1])


def window_of(acct) -> str:
    return redis_keys.rate_window(acct.user_id, acct.api_key_id, int(time.time() // 60))


async def test_count_tokens_is_forwarded_free_to_a_user_without_credit(
    proxy_url, accounts, pg, redis, upstream
):
    acct = await accounts.create("0")
    client = anthropic_client(proxy_url, acct.key)
    raw = await client.messages.with_raw_response.count_tokens(model=MODEL, messages=MESSAGES)
    counted = await raw.parse()
    assert counted.input_tokens == count_from_chars(len(MESSAGES[0]["content"]))
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.headers["x-upstream-request-id"].startswith("req_")
    sent = upstream.recorded()[-1]
    assert sent["path"] == "/anthropic/v1/messages/count_tokens"
    assert sent["body"] == {"model": MODEL, "messages": MESSAGES}  # as given
    assert sent["headers"]["x-api-key"] == PROVIDER_SECRETS["anthropic"]
    assert acct.key not in str(sent["headers"])
    # the form without v1/ too, with the key as x-api-key (older SDKs)
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{proxy_url}/v1/anthropic/messages/count_tokens",
            json={"model": MODEL, "messages": MESSAGES},
            headers={"x-api-key": acct.key, "anthropic-version": "2023-06-01"},
        ) as resp:
            assert resp.status == 200
            assert await resp.json() == {"input_tokens": counted.input_tokens}
    assert upstream.recorded()[-1]["path"] == "/anthropic/v1/messages/count_tokens"
    assert await holds_of(redis, acct.user_id) == {}
    # a metered request settles after them: none of them was billed or recorded
    with pytest.raises(anthropic.APIStatusError) as refused:
        await client.messages.create(model=MODEL, max_tokens=10, messages=MESSAGES)
    assert refused.value.status_code == 402  # no credit: only the free endpoint serves
    funded = await accounts.create("1")
    funded_client = anthropic_client(proxy_url, funded.key)
    for _ in range(3):
        await funded_client.messages.count_tokens(model=MODEL, messages=MESSAGES)
    paid = await funded_client.messages.with_raw_response.create(
        model=MODEL, max_tokens=10, messages=MESSAGES
    )
    await wait_settled(pg, [paid.headers["x-request-id"]])
    assert await usage_count(pg, acct.user_id) == 0
    assert await usage_count(pg, funded.user_id) == 1
    assert await holds_of(redis, funded.user_id) == {}


async def test_count_tokens_checks_the_key_and_the_model(proxy_url, accounts, pg, redis, upstream):
    acct = await accounts.create("1")
    seen = len(upstream.recorded())
    with pytest.raises(anthropic.AuthenticationError):
        await anthropic_client(proxy_url, "mw-not-a-key").messages.count_tokens(
            model=MODEL, messages=MESSAGES
        )
    client = anthropic_client(proxy_url, acct.key)
    with pytest.raises(anthropic.BadRequestError) as refused:
        await client.messages.count_tokens(model="claude-unknown", messages=MESSAGES)
    assert "Unknown model pricing" in refused.value.message
    with pytest.raises(anthropic.BadRequestError):  # an OpenAI model is not Anthropic's
        await client.messages.count_tokens(model="gpt-4o", messages=MESSAGES)
    other = await accounts.create("1")
    await set_controls(
        pg, redis, other, models=("claude-sonnet-4-5",),
    )  # fmt: skip
    listed = anthropic_client(proxy_url, other.key)
    with pytest.raises(anthropic.PermissionDeniedError):
        await listed.messages.count_tokens(model=MODEL, messages=MESSAGES)
    assert (
        await listed.messages.count_tokens(model="claude-sonnet-4-5", messages=MESSAGES)
    ).input_tokens > 0
    expired = await accounts.create("1")
    await set_controls(pg, redis, expired, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    with pytest.raises(anthropic.AuthenticationError) as refused:
        await anthropic_client(proxy_url, expired.key).messages.count_tokens(
            model=MODEL, messages=MESSAGES
        )
    assert "API key expired" in refused.value.message
    assert len(upstream.recorded()) == seen + 1  # only the allowed one went upstream


async def test_count_tokens_counts_toward_rpm_not_tpm(proxy_url, accounts, pg, redis, upstream):
    if (second := time.time() % 60) > 50:  # the whole test in one minute's window
        await asyncio.sleep(60.2 - second)
    acct = await accounts.create("1", rpm=3)
    client = anthropic_client(proxy_url, acct.key)
    await client.messages.count_tokens(model=MODEL, messages=MESSAGES)
    await client.messages.create(model=MODEL, max_tokens=10, messages=MESSAGES)
    await client.messages.count_tokens(model=MODEL, messages=MESSAGES)
    assert int(await redis.hget(window_of(acct), "n")) == 3  # one window for both kinds
    seen = len(upstream.recorded())
    with pytest.raises(anthropic.RateLimitError) as refused:
        await client.messages.count_tokens(model=MODEL, messages=MESSAGES)
    assert "3 requests per minute" in refused.value.message
    assert refused.value.response.headers.get("retry-after")
    with pytest.raises(anthropic.RateLimitError):  # the metered path sees the same count
        await client.messages.create(model=MODEL, max_tokens=10, messages=MESSAGES)
    assert len(upstream.recorded()) == seen
    assert int(await redis.hget(window_of(acct), "n")) == 3  # refusals are not counted

    # tpm: a metered request uses it up; count_tokens adds no tokens and is still served
    other = await accounts.create("1")
    await set_controls(pg, redis, other, tpm=1)
    client = anthropic_client(proxy_url, other.key)
    paid = await client.messages.with_raw_response.create(
        model=MODEL, max_tokens=10, messages=MESSAGES
    )
    await wait_settled(pg, [paid.headers["x-request-id"]])
    with pytest.raises(anthropic.RateLimitError):
        await client.messages.create(model=MODEL, max_tokens=10, messages=MESSAGES)
    for _ in range(3):
        assert (await client.messages.count_tokens(model=MODEL, messages=MESSAGES)).input_tokens
    assert await usage_count(pg, other.user_id) == 1


async def test_count_tokens_has_its_own_metrics_label(proxy_url, accounts):
    acct = await accounts.create("0")
    await anthropic_client(proxy_url, acct.key).messages.count_tokens(
        model=MODEL, messages=MESSAGES
    )
    async with aiohttp.ClientSession() as http, http.get(f"{proxy_url}/metrics") as resp:
        metrics = await resp.text()
    assert (
        'meterway_requests_total{endpoint="messages/count_tokens",provider="anthropic",status="200"}'
        in metrics
    )
