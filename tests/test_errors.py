"""Every error status of the contract, in each provider's format, raised by the
official SDKs as their typed exceptions; and upstream errors passed through
without billing."""

from __future__ import annotations

import asyncio
import contextlib
from decimal import Decimal

import aiohttp
import anthropic
import openai
import pytest

from shared import invalidation
from shared.keys import SecretBox, visible_prefix
from tests.clients import anthropic_client, openai_client
from tests.conftest import SECRET_KEY, free_port, start_proxy, wait_holds_released
from tests.test_proxy_openai import MESSAGES

pytestmark = pytest.mark.usefixtures("worker")


async def no_usage_for(pg, user_id: int) -> bool:
    await asyncio.sleep(0.2)  # give a (wrongly) enqueued event time to settle
    return await pg.fetchval("SELECT count(*) FROM usage_records WHERE user_id = $1", user_id) == 0


async def test_unknown_model_is_400_in_both_formats(proxy_url, accounts):
    acct = await accounts.create("1")
    with pytest.raises(openai.BadRequestError) as oerr:
        await openai_client(proxy_url, acct.key).chat.completions.create(
            model="gpt-nonexistent", messages=MESSAGES
        )
    assert "Unknown model pricing" in oerr.value.message
    assert oerr.value.response.headers["x-should-retry"] == "false"
    assert oerr.value.body["type"] == "invalid_request_error"
    with pytest.raises(anthropic.BadRequestError) as aerr:
        await anthropic_client(proxy_url, acct.key).messages.create(
            model="gpt-4o", max_tokens=5, messages=MESSAGES
        )
    assert "Unknown model pricing" in str(aerr.value)
    assert aerr.value.body["type"] == "error"
    assert aerr.value.body["error"]["type"] == "invalid_request_error"


async def test_malformed_json_and_missing_model_are_400(proxy_url, accounts):
    acct = await accounts.create("1")
    headers = {"Authorization": f"Bearer {acct.key}", "Content-Type": "application/json"}
    url = f"{proxy_url}/v1/openai/chat/completions"
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.post(url, data=b"{not json") as r:
            assert r.status == 400
            assert "Malformed JSON" in (await r.json())["error"]["message"]
            assert r.headers.getall("x-request-id") and len(r.headers.getall("x-request-id")) == 1
        async with http.post(url, json={"messages": MESSAGES}) as r:
            assert r.status == 400
        async with http.post(url, data=b"[1, 2]") as r:
            assert r.status == 400


async def test_missing_invalid_and_revoked_keys_are_401(proxy_url, accounts):
    with pytest.raises(openai.AuthenticationError):
        await openai_client(proxy_url, "mw-not-a-real-key").chat.completions.create(
            model="gpt-4o", messages=MESSAGES
        )
    with pytest.raises(anthropic.AuthenticationError) as aerr:
        await anthropic_client(proxy_url, "mw-not-a-real-key").messages.create(
            model="claude-haiku-4-5", max_tokens=5, messages=MESSAGES
        )
    assert aerr.value.body["error"]["type"] == "authentication_error"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{proxy_url}/v1/account") as r:
            assert r.status == 401
            assert r.headers["x-should-retry"] == "false"

    acct = await accounts.create("1")
    c = openai_client(proxy_url, acct.key)
    await c.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # cached now
    await accounts.revoke(acct)
    await asyncio.sleep(1.0)  # revocation must take effect within one second
    with pytest.raises(openai.AuthenticationError):
        await c.chat.completions.create(model="gpt-4o", messages=MESSAGES)


async def test_insufficient_balance_is_402_and_nothing_goes_upstream(
    proxy_url, accounts, upstream, pg
):
    acct = await accounts.create("0.001")  # far below a gpt-4o hold of 16384 output tokens
    before = len(upstream.recorded())
    with pytest.raises(openai.APIStatusError) as err:
        await openai_client(proxy_url, acct.key).chat.completions.create(
            model="gpt-4o", messages=MESSAGES
        )
    assert err.value.status_code == 402
    assert "Insufficient credit balance" in err.value.message
    assert err.value.response.headers["x-should-retry"] == "false"
    with pytest.raises(anthropic.PaymentRequiredError) as aerr:
        await anthropic_client(proxy_url, acct.key).messages.create(
            model="claude-haiku-4-5", max_tokens=1000, messages=MESSAGES
        )
    assert aerr.value.status_code == 402
    assert aerr.value.body["error"]["type"] == "billing_error"
    assert len(upstream.recorded()) == before
    # a request small enough for the balance is admitted: the hold follows max_tokens
    await anthropic_client(proxy_url, acct.key).messages.create(
        model="claude-haiku-4-5", max_tokens=10, messages=MESSAGES
    )
    assert len(upstream.recorded()) == before + 1


async def test_body_over_the_limit_is_413(proxy_url, accounts):
    acct = await accounts.create("1")
    huge = [{"role": "user", "content": "x" * 1_100_000}]
    with pytest.raises(openai.APIStatusError) as err:
        await openai_client(proxy_url, acct.key).chat.completions.create(
            model="gpt-4o", messages=huge
        )
    assert err.value.status_code == 413


async def test_unknown_endpoint_is_404_in_provider_format(proxy_url, accounts):
    acct = await accounts.create("1")
    with pytest.raises(openai.NotFoundError):  # (embeddings are metered now)
        await openai_client(proxy_url, acct.key).moderations.create(
            model="omni-moderation-latest", input="hi"
        )
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{proxy_url}/v1/anthropic/v1/complete", json={}) as r:
            assert r.status == 404
            assert (await r.json())["error"]["type"] == "not_found_error"


@contextlib.asynccontextmanager
async def provider_state(pg, redis, sql_on: str, sql_off: str):
    """Change provider state in Postgres, tell the proxies, and undo it after."""
    await pg.execute(sql_on)
    await invalidation.publish(redis, invalidation.PROVIDERS_MESSAGE)
    await asyncio.sleep(0.3)
    try:
        yield
    finally:
        await pg.execute(sql_off)
        await invalidation.publish(redis, invalidation.PROVIDERS_MESSAGE)
        await asyncio.sleep(0.3)


async def test_paused_provider_is_429_without_retry(proxy_url, accounts, pg, redis):
    acct = await accounts.create("1")
    async with provider_state(
        pg,
        redis,
        "UPDATE providers SET paused = true WHERE name = 'anthropic'",
        "UPDATE providers SET paused = false WHERE name = 'anthropic'",
    ):
        with pytest.raises(anthropic.RateLimitError) as err:
            await anthropic_client(proxy_url, acct.key).messages.create(
                model="claude-haiku-4-5", max_tokens=5, messages=MESSAGES
            )
        assert "paused" in str(err.value)
        assert err.value.response.headers["x-should-retry"] == "false"
        # the other provider is unaffected
        await openai_client(proxy_url, acct.key).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES
        )
    await anthropic_client(proxy_url, acct.key).messages.create(
        model="claude-haiku-4-5", max_tokens=5, messages=MESSAGES
    )


async def test_no_active_provider_key_is_503(proxy_url, accounts, pg, redis):
    acct = await accounts.create("1")
    active = [
        r["id"]
        for r in await pg.fetch(
            "SELECT id FROM provider_keys WHERE provider = 'openai' AND status = 'active'"
        )
    ]
    ids = ",".join(map(str, active))
    async with provider_state(
        pg,
        redis,
        f"UPDATE provider_keys SET status = 'disabled' WHERE id IN ({ids})",
        f"UPDATE provider_keys SET status = 'active' WHERE id IN ({ids})",
    ):
        with pytest.raises(openai.InternalServerError) as err:
            await openai_client(proxy_url, acct.key).chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES
            )
        assert err.value.status_code == 503
        assert "No active API keys" in err.value.message
    assert await no_usage_for(pg, acct.user_id)
    await wait_holds_released(redis, acct.user_id)


async def test_upstream_errors_pass_through_unbilled(proxy_url, accounts, pg, redis):
    acct = await accounts.create("1")
    c = openai_client(proxy_url, acct.key, **{"x-sim-status": "400"})
    with pytest.raises(openai.BadRequestError) as err:
        await c.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert err.value.response.headers["x-upstream-request-id"].startswith("req_")
    a = anthropic_client(proxy_url, acct.key, **{"x-sim-status": "529"})
    with pytest.raises(anthropic.APIStatusError) as aerr:
        await a.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=MESSAGES)
    assert aerr.value.status_code == 529
    assert aerr.value.body["error"]["type"] == "overloaded_error"
    assert await no_usage_for(pg, acct.user_id)
    assert await accounts.balance(acct.user_id) == Decimal("1")
    await wait_holds_released(redis, acct.user_id)


async def test_rejected_provider_key_is_disabled_and_the_request_retried(
    proxy_url, accounts, pg, redis
):
    acct = await accounts.create("1")
    box = SecretBox(SECRET_KEY)
    bad = "sk-ant-invalid-key-0001"
    bad_id = await pg.fetchval(
        "INSERT INTO provider_keys (provider, name, prefix, secret_enc)"
        " VALUES ('anthropic', 'bad', $1, $2) RETURNING id",
        visible_prefix(bad),
        box.encrypt(bad),
    )
    await invalidation.publish(redis, invalidation.PROVIDERS_MESSAGE)
    await asyncio.sleep(0.3)
    try:
        c = anthropic_client(proxy_url, acct.key)
        for _ in range(4):  # round robin reaches the bad key; the client never sees its 401
            await c.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=MESSAGES)
        status = await pg.fetchval("SELECT status FROM provider_keys WHERE id = $1", bad_id)
        assert status == "disabled"
    finally:
        await pg.execute("DELETE FROM provider_keys WHERE id = $1", bad_id)
        await invalidation.publish(redis, invalidation.PROVIDERS_MESSAGE)


async def test_unreachable_upstream_is_502_and_slow_upstream_is_504(settings, accounts, pg, redis):
    acct = await accounts.create("1")
    dead = settings.model_copy(
        update={
            "proxy_port": free_port(),
            "upstream_openai_base_url": f"http://127.0.0.1:{free_port()}/v1",
        }
    )
    runner, url = await start_proxy(dead)
    try:
        with pytest.raises(openai.InternalServerError) as err:
            await openai_client(url, acct.key).chat.completions.create(
                model="gpt-4o", messages=MESSAGES
            )
        assert err.value.status_code == 502
    finally:
        await runner.cleanup()
    slow = settings.model_copy(update={"proxy_port": free_port(), "upstream_read_timeout": 0.3})
    runner, url = await start_proxy(slow)
    try:
        c = openai_client(url, acct.key, **{"x-sim-latency-ms": "1000"})
        with pytest.raises(openai.APIStatusError) as err:
            await c.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert err.value.status_code == 504
    finally:
        await runner.cleanup()
    assert await no_usage_for(pg, acct.user_id)
    await wait_holds_released(redis, acct.user_id)


async def test_keys_never_cross_the_proxy(proxy_url, accounts, upstream):
    from tests.conftest import PROVIDER_SECRETS

    acct = await accounts.create("1")
    raw = await openai_client(proxy_url, acct.key).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MESSAGES
    )
    async with anthropic_client(proxy_url, acct.key).messages.stream(
        model="claude-haiku-4-5", max_tokens=5, messages=MESSAGES
    ) as stream:
        streamed = [t async for t in stream.text_stream]
        anthropic_headers = dict(stream.response.headers)
    assert streamed
    sent = upstream.recorded()[-2:]
    assert sent[0]["headers"]["authorization"] == f"Bearer {PROVIDER_SECRETS['openai']}"
    assert sent[1]["headers"]["x-api-key"] == PROVIDER_SECRETS["anthropic"]
    assert "authorization" not in sent[1]["headers"]
    for request in upstream.recorded():
        assert acct.key not in str(request), "the proxy key reached upstream"
    client_side = str(dict(raw.headers)) + raw.text + str(anthropic_headers)
    for secret in PROVIDER_SECRETS.values():
        assert secret not in client_side
