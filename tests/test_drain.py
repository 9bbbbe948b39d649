"""Graceful drain (contract section 8), with real processes: /readyz, SIGTERM on
a proxy with streams in flight, a stream cut at the grace limit, and a worker
stopped with SIGTERM in the middle of a backlog."""

from __future__ import annotations

import asyncio
import signal
import time
from decimal import Decimal

import aiohttp
import pytest

from shared import usage_queue
from tests.clients import anthropic_client
from tests.conftest import wait_settled
from tests.test_faults import HELLO, assert_books_close

pytestmark = pytest.mark.usefixtures("provider_keys")

STREAM_PATH = "/v1/anthropic/v1/messages"


async def readyz(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as resp:
        return resp.status, await resp.json()


async def wait_ready(url: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, body = await readyz(url)
        if status == 200:
            return body
        assert time.monotonic() < deadline, f"/readyz never turned ready: {body}"
        await asyncio.sleep(0.1)


async def stream(url: str, key: str, chunks: int, delay_ms: int, started: asyncio.Event):
    """A whole Anthropic stream read raw: (request id, the data lines, ended cleanly)."""
    body = {"model": "claude-haiku-4-5", "max_tokens": 500, "stream": True, "messages": HELLO}
    headers = {
        "Authorization": f"Bearer {key}",
        "x-sim-chunks": str(chunks),
        "x-sim-delay-ms": str(delay_ms),
    }
    lines: list[bytes] = []
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}{STREAM_PATH}", json=body, headers=headers) as resp:
            assert resp.status == 200
            request_id = resp.headers["x-request-id"]
            async for line in resp.content:
                if line.startswith(b"data:"):
                    lines.append(line)
                    started.set()
    return request_id, lines


async def test_readyz_follows_redis(stack, private_redis):
    server, _ = private_redis
    _, url = await stack.proxy()
    body = await wait_ready(url)
    assert body["ready"] is True and body["draining"] is False
    await server.stop()
    lost = time.monotonic()
    while (await readyz(url))[0] != 503:
        assert time.monotonic() - lost < 5, "/readyz still 200 5 s after Redis went away"
        await asyncio.sleep(0.1)
    status, body = await readyz(url)
    assert status == 503 and body == {**body, "ready": False, "redis": False}
    # Postgres does not count, and Redis coming back makes it ready again
    await server.start()
    await wait_ready(url, timeout=10)


async def test_sigterm_drains_and_long_stream_finishes(stack, books, pg, private_redis):
    _, redis = private_redis
    await stack.worker()
    proc, url = await stack.proxy(SHUTDOWN_DRAIN_SECONDS="1.5", SHUTDOWN_GRACE_SECONDS="30")
    await wait_ready(url)
    acct = await books.create("5")
    started = asyncio.Event()
    # about 4 s of stream: it outlives the drain window and finishes in the grace period
    task = asyncio.create_task(stream(url, acct.key, chunks=40, delay_ms=100, started=started))
    await asyncio.wait_for(started.wait(), 10)
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    while (await readyz(url))[0] != 503:
        assert time.monotonic() - sent < 1, "/readyz still 200 1 s after SIGTERM"
        await asyncio.sleep(0.05)
    # still serving during the drain window: a new request is answered
    client = anthropic_client(url, acct.key)
    raw = await client.messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=20, messages=HELLO
    )
    assert raw.http_response.headers.get("connection", "").lower() == "close"
    ids = [raw.headers["x-request-id"]]
    request_id, lines = await task
    ids.append(request_id)
    assert any(b"message_stop" in line for line in lines), "the stream was cut"
    assert await asyncio.wait_for(proc.wait(), 20) == 0
    assert time.monotonic() - sent >= 1.5
    await wait_settled(pg, ids, timeout=20)
    rows = await pg.fetch(
        "SELECT request_id, outcome, estimated FROM usage_records WHERE request_id = ANY($1)", ids
    )
    assert len(rows) == 2
    assert {r["outcome"] for r in rows} == {"completed"}
    await assert_books_close(pg, redis, stack, acct.user_id, Decimal(5))


async def test_stream_cut_at_grace_limit_is_billed_once_as_broken(stack, books, pg, private_redis):
    _, redis = private_redis
    await stack.worker()
    proc, url = await stack.proxy(SHUTDOWN_DRAIN_SECONDS="0.5", SHUTDOWN_GRACE_SECONDS="1")
    acct = await books.create("5")
    started = asyncio.Event()
    # about 8 s of stream: longer than drain + grace
    task = asyncio.create_task(stream(url, acct.key, chunks=80, delay_ms=100, started=started))
    await asyncio.wait_for(started.wait(), 10)
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    request_id, lines = await asyncio.wait_for(task, 15)
    assert not any(b"message_stop" in line for line in lines)
    assert 1 <= len(lines) < 80
    assert await asyncio.wait_for(proc.wait(), 20) == 0
    assert time.monotonic() - sent < 8, "the proxy waited for the stream instead of cutting it"
    await wait_settled(pg, [request_id], timeout=20)
    record = await pg.fetchrow("SELECT * FROM usage_records WHERE request_id = $1", request_id)
    assert record["outcome"] == "upstream_broken"
    assert record["estimated"] is True and record["output_tokens"] >= 1
    await assert_books_close(pg, redis, stack, acct.user_id, Decimal(5))


async def test_worker_sigterm_leaves_nothing_unsettled(stack, books, pg, private_redis):
    _, redis = private_redis
    _, url = await stack.proxy()
    acct = await books.create("5")
    client = anthropic_client(url, acct.key)

    async def one() -> str:
        raw = await client.messages.with_raw_response.create(
            model="claude-haiku-4-5", max_tokens=20, messages=HELLO
        )
        return raw.headers["x-request-id"]

    ids = []
    for _ in range(6):  # queued while no worker runs
        ids += await asyncio.gather(*(one() for _ in range(25)))
    worker = await stack.worker(SETTLE_BATCH_SIZE="5", SETTLE_CLAIM_IDLE_SECONDS="60")
    for _ in range(500):  # stop it while it is settling
        done = await pg.fetchval(
            "SELECT count(*) FROM usage_records WHERE request_id = ANY($1)", ids
        )
        if done >= 10:
            break
        await asyncio.sleep(0.01)
    worker.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(worker.wait(), 30) == 0
    # nothing it read is left pending: every batch in hand was settled and acknowledged
    assert await usage_queue.pending_count(redis) == 0
    settled = await pg.fetchval(
        "SELECT count(*) FROM usage_records WHERE request_id = ANY($1)", ids
    )
    assert settled < len(ids), "the worker finished the backlog before it was stopped"
    # claim idle is 60 s: only unread events remain, and a new worker settles them now
    await stack.worker(SETTLE_CLAIM_IDLE_SECONDS="60")
    await wait_settled(pg, ids, timeout=30)
    await assert_books_close(pg, redis, stack, acct.user_id, Decimal(5))
