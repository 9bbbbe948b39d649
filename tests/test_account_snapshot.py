"""`GET /v1/account` is one consistent snapshot (contract section 9): during a
burst of settlements every read has start - balance == spend today, and
available == balance - held."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import aiohttp
import pytest

from tests.conftest import wait_holds_released, wait_settled

pytestmark = pytest.mark.usefixtures("worker")


async def test_every_read_during_a_burst_is_one_snapshot(proxy_url, accounts, pg, redis):
    start = Decimal("5")
    acct = await accounts.create(str(start))
    auth = {"Authorization": f"Bearer {acct.key}"}
    body = {"model": "gpt-4o-mini", "max_tokens": 50,
            "messages": [{"role": "user", "content": "count to three"}]}  # fmt: skip
    reads: list[dict] = []

    async with aiohttp.ClientSession(headers=auth) as http:

        async def one() -> str:
            async with http.post(f"{proxy_url}/v1/openai/chat/completions", json=body) as r:
                assert r.status == 200
                return r.headers["x-request-id"]

        async def poll(stop: asyncio.Event) -> None:
            while not stop.is_set():
                async with http.get(f"{proxy_url}/v1/account") as r:
                    reads.append(await r.json())

        stop = asyncio.Event()
        poller = asyncio.create_task(poll(stop))
        ids = await asyncio.gather(*(one() for _ in range(60)))
        await wait_settled(pg, list(ids))
        await wait_holds_released(redis, acct.user_id)
        stop.set()
        await poller
        async with http.get(f"{proxy_url}/v1/account") as r:
            reads.append(await r.json())

    assert len(reads) > 10
    moved = 0
    for read in reads:
        balance, held = Decimal(read["balance_usd"]), Decimal(read["held_usd"])
        assert start - balance == Decimal(read["spend_today_usd"]), read
        assert Decimal(read["available_usd"]) == balance - held, read
        moved += balance < start
    assert moved  # some reads saw settlements under way
    final = reads[-1]
    spent = await pg.fetchval("SELECT SUM(cost_usd) FROM usage_records WHERE user_id = $1",
                              acct.user_id)  # fmt: skip
    assert Decimal(final["spend_today_usd"]) == spent and final["user_id"] == acct.user_id
