"""Prepaid means prepaid (contract section 10): when upstream bills the most a
body allows, concurrent requests cannot take a balance below zero; server-side
context holds the context window; a long stream keeps its hold."""

from __future__ import annotations

import asyncio
import base64
import json
from decimal import Decimal

import aiohttp
import pytest

from proxy.providers.bounds import TEXT_MARGIN_TOKENS
from shared.balance_view import BalanceView
from tests.clients import openai_client
from tests.conftest import wait_holds_released, wait_settled

pytestmark = pytest.mark.usefixtures("worker", "provider_keys")

IMAGE = base64.b64encode(bytes(range(256)) * 40).decode()
PDF = base64.b64encode(b"%PDF-1.4 " + bytes(range(256)) * 20).decode()


def chat_with_images(images: int) -> dict:
    parts = [{"type": "text", "text": "Describe every picture."}]
    parts += [{"type": "image_url", "image_url": {"url": f"https://img.example/{i}.png"}}
              for i in range(images)]  # fmt: skip
    return {"model": "gpt-4o", "max_tokens": 2000, "n": 3, "stream": True,
            "messages": [{"role": "user", "content": parts}]}  # fmt: skip


def messages_with(blocks: list[dict]) -> dict:
    return {"model": "claude-haiku-4-5", "max_tokens": 1000, "stream": True,
            "messages": [{"role": "user", "content": [*blocks, {"type": "text", "text": "?"}]}]}  # fmt: skip


def the_most(path: str, body: dict, raw: bytes) -> dict[str, str]:
    """Simulator directives that make upstream report the most the body allows,
    by the provider's published rules (worked out here, not by the proxy)."""
    if path.endswith("chat/completions"):  # gpt-4o: 85 + 8 tiles x 170 per image
        images = len(body["messages"][0]["content"]) - 1
        tokens = len(raw) + TEXT_MARGIN_TOKENS + images * 1445
        # every one of the n choices runs to max_tokens (the simulator bills chunks x n)
        return {"x-sim-input-tokens": str(tokens), "x-sim-chunks": str(body["max_tokens"])}
    if path.endswith("responses"):  # text: one token per byte
        tokens = len(raw) + TEXT_MARGIN_TOKENS
        return {"x-sim-input-tokens": str(tokens), "x-sim-chunks": str(body["max_output_tokens"])}
    blocks = body["messages"][0]["content"]
    if any(b["type"] == "document" for b in blocks):
        tokens = 200_000  # a PDF: up to the whole context window
    else:
        inline = sum(len(b["source"]["data"]) for b in blocks if b["type"] == "image")
        tokens = len(raw) - inline + TEXT_MARGIN_TOKENS + 1700 * (len(blocks) - 1)
    # every input token written to the 1-hour cache: the dearest input there is
    return {"x-sim-input-tokens": "0", "x-sim-cache-write-tokens": str(tokens),
            "x-sim-cache-write-1h-tokens": str(tokens), "x-sim-chunks": str(body["max_tokens"])}  # fmt: skip


async def test_twenty_concurrent_worst_case_requests_keep_a_one_dollar_balance_above_zero(
    proxy_url, accounts, pg, redis
):
    acct = await accounts.create("1")
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": IMAGE},
    }
    pdf = {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
    }
    text = "ü" * 4000  # two bytes, so up to two tokens, a character
    requests = (
        [("/v1/openai/chat/completions", chat_with_images(20))] * 5
        + [("/v1/anthropic/v1/messages", messages_with([image] * 3))] * 5
        + [("/v1/anthropic/v1/messages", messages_with([pdf]))] * 5
        + [("/v1/openai/responses",
            {"model": "gpt-4.1", "input": text, "max_output_tokens": 500, "stream": True})] * 5
    )  # fmt: skip

    async def one(http: aiohttp.ClientSession, path: str, body: dict) -> tuple[int, str]:
        raw = json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {acct.key}", "Content-Type": "application/json",
                   "anthropic-version": "2023-06-01", "x-sim-latency-ms": "400",
                   **the_most(path, body, raw)}  # fmt: skip
        async with http.post(f"{proxy_url}{path}", data=raw, headers=headers) as resp:
            await resp.read()
            return resp.status, resp.headers["x-request-id"]

    async with aiohttp.ClientSession() as http:
        results = await asyncio.gather(*(one(http, path, body) for path, body in requests))
    admitted = [rid for status, rid in results if status == 200]
    assert {status for status, _ in results} <= {200, 402}
    assert 0 < len(admitted) < 20  # the balance ran out: some were refused
    await wait_settled(pg, admitted)
    await wait_holds_released(redis, acct.user_id)
    balance = await accounts.balance(acct.user_id)
    costs = await pg.fetch(
        "SELECT cost_usd, estimated FROM usage_records WHERE user_id = $1", acct.user_id
    )
    assert len(costs) == len(admitted) and not any(r["estimated"] for r in costs)
    assert balance == Decimal(1) - sum(r["cost_usd"] for r in costs)
    assert balance >= 0


async def test_previous_response_id_holds_the_context_window(proxy_url, accounts, upstream):
    acct = await accounts.create("0.25")
    seen = len(upstream.recorded())
    body = {"model": "gpt-4o", "input": "and then?", "max_output_tokens": 16,
            "previous_response_id": "resp_abc"}  # fmt: skip
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            f"{proxy_url}/v1/openai/responses", json=body,
            headers={"Authorization": f"Bearer {acct.key}"},
        )  # fmt: skip
        answer = await resp.json()
    assert resp.status == 402
    # 128,000 input tokens x 2.5 + 16 output x 10, per million
    assert resp.headers["x-meterway-hold-usd"] == "0.32016"
    assert resp.headers["x-meterway-available-usd"] == "0.25"
    assert "needs up to 0.3202 USD, 0.2500 available" in answer["error"]["message"]
    assert len(upstream.recorded()) == seen  # nothing went upstream


async def test_a_plain_402_explains_itself(proxy_url, accounts):
    acct = await accounts.create("0.10")
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            f"{proxy_url}/v1/openai/chat/completions", json=body,
            headers={"Authorization": f"Bearer {acct.key}"},
        )  # fmt: skip
        answer = await resp.json()
    assert resp.status == 402 and resp.headers["x-should-retry"] == "false"
    hold = Decimal(resp.headers["x-meterway-hold-usd"])
    assert hold > Decimal("0.16384")  # 16,384 output tokens at $10/M, plus the input
    message = answer["error"]["message"]
    assert message.startswith("Insufficient credit balance")
    assert "0.1000 available" in message and "lower max_tokens" in message


async def test_a_stream_longer_than_the_hold_ttl_keeps_its_hold_and_is_billed_once(
    stack, books, pg, private_redis
):
    _, redis = private_redis
    await stack.worker()
    _, url = await stack.proxy(HOLD_TTL_SECONDS="2")
    acct = await books.create("5")
    headers = {"Authorization": f"Bearer {acct.key}", "x-sim-chunks": "16", "x-sim-delay-ms": "500"}
    body = {"model": "gpt-4o-mini", "stream": True, "max_tokens": 100,
            "messages": [{"role": "user", "content": "a slow story"}]}  # fmt: skip
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/v1/openai/chat/completions", json=body, headers=headers) as r:
            request_id = r.headers["x-request-id"]
            started = asyncio.get_running_loop().time()
            deltas = 0
            async for line in r.content:
                deltas += line.startswith(b"data:") and b'"content":"tok' in line
                if asyncio.get_running_loop().time() - started > 4:  # past 2 TTLs
                    held = await BalanceView(redis).held_units(acct.user_id)
                    assert held > 0, "the hold of a running stream expired"
    assert deltas == 16
    await wait_settled(pg, [request_id], timeout=20)
    orphan = await pg.fetchval(
        "SELECT count(*) FROM orphaned_holds WHERE request_id = $1", request_id
    )
    assert orphan == 0
    rows = await pg.fetch("SELECT cost_usd FROM usage_records WHERE request_id = $1", request_id)
    assert len(rows) == 1
    await wait_holds_released(redis, acct.user_id)
    assert await books.balance(acct.user_id) == Decimal(5) - rows[0]["cost_usd"]


@pytest.mark.parametrize("stream", [False, True])
async def test_continuing_a_response_served_here_holds_its_tokens_plus_the_body(
    proxy_url, accounts, stream
):
    acct = await accounts.create("0.05")
    directives = {"x-sim-input-tokens": "3000", "x-sim-chunks": "7"}
    client = openai_client(proxy_url, acct.key, **directives)
    if stream:
        async with client.responses.stream(
            model="gpt-4o", input="hello", max_output_tokens=50
        ) as events:
            first = await events.get_final_response()
    else:
        first = await client.responses.create(model="gpt-4o", input="hello", max_output_tokens=50)
    assert first.usage.input_tokens == 3000 and first.usage.output_tokens == 7
    body = {"model": "gpt-4o", "input": "and then?", "max_output_tokens": 10_000,
            "previous_response_id": first.id}  # fmt: skip
    raw = json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {acct.key}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{proxy_url}/v1/openai/responses", data=raw, headers=headers) as r:
            assert r.status == 402
            hold = Decimal(r.headers["x-meterway-hold-usd"])
    # the earlier answer's 3,007 tokens plus this body's own bound, at 2.5/M; output at 10/M
    input_tokens = 3007 + len(raw) + TEXT_MARGIN_TOKENS
    assert hold == (Decimal(input_tokens) * Decimal("2.5") + 10_000 * 10) / 1_000_000
    # another user cannot lean on it: for them it is unknown, so the context window
    other = await accounts.create("0.05")
    headers["Authorization"] = f"Bearer {other.key}"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{proxy_url}/v1/openai/responses", data=raw, headers=headers) as r:
            assert r.status == 402
            assert r.headers["x-meterway-hold-usd"] == "0.42"  # 128,000 x 2.5 + 10,000 x 10
