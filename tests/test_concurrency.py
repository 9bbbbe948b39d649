"""Holds under contention: a balance that fits exactly K holds admits at most K
of 4K simultaneous requests, and every admitted request is billed once."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import aiohttp
import anthropic
import pytest

from tests.clients import anthropic_client
from tests.conftest import wait_holds_released, wait_settled
from tests.test_proxy_anthropic import MESSAGES

pytestmark = pytest.mark.usefixtures("worker")

K = 5
MODEL = "claude-haiku-4-5"


async def measure_hold(proxy_url: str, accounts) -> Decimal:
    """The hold of one request, read from /v1/account while the request runs."""
    probe = await accounts.create("10")
    slow = anthropic_client(proxy_url, probe.key, **{"x-sim-latency-ms": "600"})
    task = asyncio.create_task(slow.messages.create(model=MODEL, max_tokens=500, messages=MESSAGES))
    await asyncio.sleep(0.3)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {probe.key}"}) as http:
        async with http.get(f"{proxy_url}/v1/account") as r:
            held = Decimal((await r.json())["held_usd"])
    await task
    assert held > 0
    return held


async def test_balance_for_k_holds_admits_k_of_4k(proxy_url, accounts, pg, redis):
    hold = await measure_hold(proxy_url, accounts)
    start = hold * K + hold / 2  # room for K holds, not for K + 1
    acct = await accounts.create(str(start))
    c = anthropic_client(proxy_url, acct.key, **{"x-sim-latency-ms": "500"})

    async def one() -> str | int:
        try:
            raw = await c.messages.with_raw_response.create(
                model=MODEL, max_tokens=500, messages=MESSAGES
            )
        except anthropic.PaymentRequiredError:
            return 402
        return raw.headers["x-request-id"]

    results = await asyncio.gather(*(one() for _ in range(4 * K)))
    admitted = [r for r in results if isinstance(r, str)]
    assert len(admitted) == K
    assert results.count(402) == 3 * K

    await wait_settled(pg, admitted)
    await wait_holds_released(redis, acct.user_id)
    rows = await pg.fetch(
        "SELECT request_id, cost_usd FROM usage_records WHERE user_id = $1", acct.user_id
    )
    assert sorted(r["request_id"] for r in rows) == sorted(admitted)  # each billed exactly once
    charges = await pg.fetch(
        "SELECT amount_usd FROM ledger WHERE user_id = $1 AND kind = 'charge'", acct.user_id
    )
    assert len(charges) == K
    spent = sum(r["cost_usd"] for r in rows)
    assert spent > 0
    assert await accounts.balance(acct.user_id) == start - spent
    assert sum(c["amount_usd"] for c in charges) == -spent


async def test_parallel_streams_of_one_user_settle_exactly(proxy_url, accounts, pg, redis):
    acct = await accounts.create("20")
    c = anthropic_client(proxy_url, acct.key, **{"x-sim-delay-ms": "5", "x-sim-chunks": "12"})

    async def one() -> str:
        async with c.messages.stream(model=MODEL, max_tokens=50, messages=MESSAGES) as stream:
            async for _ in stream.text_stream:
                pass
            return stream.response.headers["x-request-id"]

    ids = await asyncio.gather(*(one() for _ in range(40)))
    await wait_settled(pg, list(ids))
    await wait_holds_released(redis, acct.user_id)
    spent = await pg.fetchval(
        "SELECT sum(cost_usd) FROM usage_records WHERE user_id = $1", acct.user_id
    )
    assert (
        await pg.fetchval(
            "SELECT count(*) FROM usage_records WHERE user_id = $1 AND output_tokens = 12",
            acct.user_id,
        )
        == 40
    )
    assert await accounts.balance(acct.user_id) == Decimal("20") - spent
