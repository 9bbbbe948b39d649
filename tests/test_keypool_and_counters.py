"""Provider key pools (failover, cooling) and the daily counters, through the
in-process proxy and worker."""

from __future__ import annotations

import asyncio
import contextlib
from decimal import Decimal

import aiohttp
import pytest

from shared import daily, invalidation
from shared.keys import SecretBox, visible_prefix
from tests.clients import anthropic_client, openai_client
from tests.conftest import SECRET_KEY, wait_settled

pytestmark = pytest.mark.usefixtures("worker")

HELLO = [{"role": "user", "content": "Hi"}]


@contextlib.asynccontextmanager
async def extra_key(pg, redis, provider: str, secret: str):
    """Add a provider key for the duration of a test."""
    key_id = await pg.fetchval(
        "INSERT INTO provider_keys (provider, name, prefix, secret_enc)"
        " VALUES ($1, 'extra', $2, $3) RETURNING id",
        provider,
        visible_prefix(secret),
        SecretBox(SECRET_KEY).encrypt(secret),
    )
    await invalidation.publish(redis, invalidation.PROVIDERS_MESSAGE)
    await asyncio.sleep(0.3)
    try:
        yield key_id
    finally:
        await pg.execute("DELETE FROM provider_keys WHERE id = $1", key_id)
        await invalidation.publish(redis, invalidation.PROVIDERS_MESSAGE)
        await asyncio.sleep(0.3)


async def retries(proxy_url: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"{proxy_url}/metrics") as resp:
        text = await resp.text()
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith("meterway_upstream_retries_total{")
    )


@pytest.mark.parametrize("bad_secret", ["sk-ratelimited-0002", "sk-broken-0003"])
async def test_failover_to_another_key_on_429_and_5xx(proxy_url, accounts, pg, redis, bad_secret):
    acct = await accounts.create("1")
    before = await retries(proxy_url)
    async with extra_key(pg, redis, "openai", bad_secret) as bad_id:
        c = openai_client(proxy_url, acct.key)
        ids = []
        for _ in range(6):  # round robin sends some of these to the bad key first
            raw = await c.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=HELLO
            )
            ids.append(raw.headers["x-request-id"])
        await wait_settled(pg, ids)
        assert await retries(proxy_url) > before
        used = {
            r["provider_key_id"]
            for r in await pg.fetch(
                "SELECT provider_key_id FROM usage_records WHERE request_id = ANY($1::text[])",
                ids,
            )
        }
        assert bad_id not in used  # a failed attempt is never what gets billed
        if "ratelimited" in bad_secret:  # a rate-limit 429 cools it for Retry-After, visibly
            assert await redis.exists(f"mw:cooling:{bad_id}")
        else:  # a 5xx is retried but says nothing about the key: it stays as it was
            assert not await redis.exists(f"mw:cooling:{bad_id}")
        status = await pg.fetchval("SELECT status FROM provider_keys WHERE id = $1", bad_id)
        assert status == "active"  # neither answer is a reason to disable a key


async def test_daily_counters_are_exact(proxy_url, accounts, pg, redis):
    acct = await accounts.create("5")
    c = anthropic_client(proxy_url, acct.key, **{"x-sim-chunks": "3"})
    ids = []
    for max_tokens in (10, 20, 30):
        raw = await c.messages.with_raw_response.create(
            model="claude-haiku-4-5", max_tokens=max_tokens, messages=HELLO
        )
        ids.append(raw.headers["x-request-id"])
    await wait_settled(pg, ids)
    await asyncio.sleep(0.2)
    spent = await pg.fetchval(
        "SELECT sum(cost_usd) FROM usage_records WHERE user_id = $1", acct.user_id
    )
    assert await daily.spend(redis, "user", acct.user_id) == spent
    assert await daily.requests(redis, "user", acct.user_id) == 3
    assert await daily.spend(redis, "key", acct.api_key_id) == spent
    assert await daily.requests(redis, "key", acct.api_key_id) == 3
    # provider and model counters hold at least this user's spend (other tests add to them)
    assert await daily.spend(redis, "provider", "anthropic") >= spent
    assert await daily.spend(redis, "model", "claude-haiku-4-5") >= spent
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {acct.key}"}) as http:
        async with http.get(f"{proxy_url}/v1/account") as resp:
            account = await resp.json()
    assert Decimal(account["spend_today_usd"]) == spent


async def test_a_redelivered_event_is_counted_once(proxy_url, accounts, pg, redis, settings):
    """A worker that died between its commit and its count: the redelivery counts
    the record (once), and any further delivery counts nothing."""
    from shared.balance_view import BalanceView
    from shared.catalog import load_catalog
    from shared.events import TokenUsage, UsageEvent
    from worker.settle import SettleDeps, settle_event

    acct = await accounts.create("5")
    deps = SettleDeps(pg, load_catalog(settings.model_catalog), BalanceView(redis), redis, settings)
    event = UsageEvent(
        request_id="req_count_once_" + str(acct.user_id),
        user_id=acct.user_id,
        api_key_id=acct.api_key_id,
        provider="openai",
        model="gpt-4o",
        endpoint="chat/completions",
        stream=False,
        usage=TokenUsage(uncached_input_tokens=1000, output_tokens=100),
    )
    await settle_event(deps, event)
    assert await daily.requests(redis, "user", acct.user_id) == 1
    # as if the worker had died right after its commit, before counting
    await pg.execute(
        "UPDATE usage_records SET counted = false WHERE request_id = $1", event.request_id
    )
    await redis.delete(daily.counter_key("user", acct.user_id))
    await settle_event(deps, event)
    await settle_event(deps, event)
    assert await daily.requests(redis, "user", acct.user_id) == 1
    assert await daily.spend(redis, "user", acct.user_id) == Decimal("0.0035")  # 2.5 + 1.0 per 1k
    assert (
        await pg.fetchval("SELECT count(*) FROM ledger WHERE request_id = $1", event.request_id)
        == 1
    )
