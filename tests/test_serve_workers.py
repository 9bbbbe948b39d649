"""`meterway serve --workers 2` (contract section 8): two serving processes on one
port, both take requests, /metrics sums both on every scrape, SIGTERM drains
every process and the command exits 0 with nothing lost."""

from __future__ import annotations

import asyncio
import re
import signal
from decimal import Decimal

import aiohttp
import pytest

from tests.clients import openai_client
from tests.conftest import wait_settled
from tests.stack import wait_http
from tests.test_faults import HELLO, assert_books_close
from tests.util import free_port

pytestmark = pytest.mark.usefixtures("provider_keys")


def requests_total(metrics: str) -> float:
    pattern = (
        r'^meterway_requests_total\{[^}]*endpoint="chat/completions"[^}]*status="200"[^}]*\} (\S+)$'
    )
    return sum(float(v) for v in re.findall(pattern, metrics, re.M))


async def test_two_workers_share_a_port_and_their_metrics(stack, books, pg, private_redis):
    _, redis = private_redis
    await stack.worker()
    port = free_port()
    proc = await stack._spawn(
        "serve", "--port", str(port), "--workers", "2", PROXY_WORKERS="5",
        SHUTDOWN_DRAIN_SECONDS="0.5",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    await wait_http(f"{url}/readyz", timeout=20)
    acct = await books.create("5")

    # both processes answer (fresh connections, several at once: the kernel hands
    # each to a process; the second one may still be starting for a moment)
    pids: set[int] = set()

    async def pid_of_one() -> int:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as resp:
            return (await resp.json())["pid"]

    deadline = asyncio.get_running_loop().time() + 20
    while len(pids) < 2 and asyncio.get_running_loop().time() < deadline:
        pids.update(await asyncio.gather(*(pid_of_one() for _ in range(8))))
        await asyncio.sleep(0.1)
    assert len(pids) == 2, f"one process answered every time: {pids}"  # --workers beats the env

    ids = []
    for _ in range(20):  # a client per request: new connections spread over both processes
        client = openai_client(url, acct.key)
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=HELLO, max_tokens=10
        )
        ids.append(raw.headers["x-request-id"])
        await client.close()
    # every scrape, whichever process answers it, counts the requests of both
    for _ in range(6):
        async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as resp:
            assert requests_total(await resp.text()) == 20

    # a stream in flight while SIGTERM goes to the command is finished and billed
    client = openai_client(url, acct.key, **{"x-sim-chunks": "20", "x-sim-delay-ms": "100"})
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO, stream=True
    )
    ids.append(raw.headers["x-request-id"])
    chunks = raw.parse()
    first = await chunks.__anext__()
    assert first is not None
    proc.send_signal(signal.SIGTERM)
    rest = [c async for c in chunks]
    assert len(rest) >= 19
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    await wait_settled(pg, ids, timeout=20)
    await assert_books_close(pg, redis, stack, acct.user_id, Decimal(5))
