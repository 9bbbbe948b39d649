"""A streaming client that stops reading is cut after CLIENT_WRITE_TIMEOUT_SECONDS:
its stream is billed once as a client disconnect and its hold is released, so a
stalled reader cannot keep a hold (and an upstream stream) forever."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import orjson
import pytest

from proxy.app import make_runner
from shared.config import Settings
from tests.conftest import wait_holds_released
from tests.util import free_port

pytestmark = pytest.mark.usefixtures("worker")


@pytest.fixture
async def impatient_proxy(settings: Settings, provider_keys):
    quick = settings.model_copy(
        update={"proxy_port": free_port(), "client_write_timeout_seconds": 1.0}
    )
    runner = make_runner(quick)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", quick.proxy_port).start()
    yield quick.proxy_port
    await runner.cleanup()


async def test_a_client_that_stops_reading_is_cut_billed_once_and_released(
    impatient_proxy, accounts, pg, redis
):
    acct = await accounts.create("50")
    body = orjson.dumps(
        {
            "model": "gpt-4o-mini",
            "stream": True,
            "messages": [{"role": "user", "content": "talk for a long time"}],
        }
    )
    request = (
        b"POST /v1/openai/chat/completions HTTP/1.1\r\nHost: proxy\r\n"
        b"Authorization: Bearer " + acct.key.encode() + b"\r\n"
        b"Content-Type: application/json\r\nx-sim-chunks: 400000\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a tiny window: we fall behind
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", impatient_proxy))
    await loop.sock_sendall(sock, request)
    first = await asyncio.wait_for(loop.sock_recv(sock, 1024), 10)
    assert first.startswith(b"HTTP/1.1 200"), first
    try:
        # now read nothing; the proxy must give up on us and settle the request
        for _ in range(300):
            rows = await pg.fetch(
                "SELECT outcome, stream FROM usage_records WHERE user_id = $1", acct.user_id
            )
            if rows:
                break
            await asyncio.sleep(0.1)
        assert [(r["outcome"], r["stream"]) for r in rows] == [("client_disconnected", True)]
        await wait_holds_released(redis, acct.user_id)
    finally:
        sock.close()
    await asyncio.sleep(0.5)
    assert (
        await pg.fetchval("SELECT count(*) FROM usage_records WHERE user_id = $1", acct.user_id)
        == 1
    )
