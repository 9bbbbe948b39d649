"""Edge cases found in review: base64 payloads in the prompt estimate, account
headers of the client, and usage events no worker can settle."""

from __future__ import annotations

import asyncio
import base64

import aiohttp
import pytest
from aiohttp import web

from proxy.handlers import fits_send_buffer, prompt_estimate
from shared import redis_keys
from tests.clients import openai_client

pytestmark = pytest.mark.usefixtures("worker")


def test_base64_payloads_do_not_inflate_the_prompt_estimate():
    image = base64.b64encode(bytes(range(256)) * 4000).decode()  # about 1.4 MB of base64
    body = (
        '{"model":"gpt-4o","messages":[{"role":"user","content":[{"type":"text","text":"hi"},'
        f'{{"type":"image_url","image_url":{{"url":"data:image/png;base64,{image}"}}}}]}}]}}'
    ).encode()
    assert len(body) > 1_000_000
    assert prompt_estimate(body) < 100
    assert prompt_estimate(b'{"model":"gpt-4o"}') == len(b'{"model":"gpt-4o"}') // 4 + 1


def test_only_small_whole_answers_are_sent_before_billing():
    """A big answer to a client that stops reading must not hold up the enqueue."""
    assert fits_send_buffer(web.Response(body=b"x" * 1000))
    assert not fits_send_buffer(web.Response(body=b"x" * 1_000_000))
    assert not fits_send_buffer(web.StreamResponse())


async def test_client_account_headers_are_not_forwarded(proxy_url, accounts, upstream):
    acct = await accounts.create("1")
    client = openai_client(
        proxy_url, acct.key, **{"OpenAI-Organization": "org-client", "OpenAI-Beta": "x=1"}
    )
    await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    sent = upstream.recorded()[-1]["headers"]
    assert "openai-organization" not in sent
    assert sent["openai-beta"] == "x=1"


async def test_expect_100_continue_like_curl_sends_for_big_bodies(proxy_url, accounts, upstream):
    acct = await accounts.create("1")
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 4000}]}
    headers = {"Authorization": f"Bearer {acct.key}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{proxy_url}/v1/openai/chat/completions", json=body, headers=headers, expect100=True
        ) as resp:
            assert resp.status == 200
            assert (await resp.json())["object"] == "chat.completion"
    assert "expect" not in upstream.recorded()[-1]["headers"]


async def test_an_unreadable_usage_event_is_dead_lettered(redis):
    await redis.delete(redis_keys.USAGE_DEAD_LETTERS)
    await redis.xadd(redis_keys.USAGE_STREAM, {"e": "not json"})
    for _ in range(100):
        if await redis.xlen(redis_keys.USAGE_DEAD_LETTERS):
            break
        await asyncio.sleep(0.05)
    for _ in range(100):  # and taken off the usage stream
        if await redis.xlen(redis_keys.USAGE_STREAM) == 0:
            break
        await asyncio.sleep(0.05)
    dead = await redis.xrange(redis_keys.USAGE_DEAD_LETTERS)
    assert len(dead) == 1 and dead[0][1][b"e"] == b"not json"
    assert b"unreadable" in dead[0][1][b"reason"]
    assert await redis.xlen(redis_keys.USAGE_STREAM) == 0
