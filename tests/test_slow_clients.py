"""Slow or huge clients cannot hold resources (contract section 10), over raw
sockets against a proxy (and a dashboard) started with short client timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from shared.config import Settings
from tests.conftest import start_proxy, wait_holds_released
from tests.util import free_port

pytestmark = pytest.mark.usefixtures("worker")


@pytest.fixture(autouse=True)
def _room_in_the_recorder(upstream) -> None:
    """Counts of upstream requests compare lengths of a log bounded at 1000."""
    upstream.clear()


HEADER_TIMEOUT = 0.6
BODY_TIMEOUT = 0.8
CHAT = "/v1/openai/chat/completions"
BODY = json.dumps(
    {"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
).encode()
ANTHROPIC_BODY = json.dumps(
    {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
).encode()


def short_timeouts(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "proxy_port": free_port(),
            "client_header_timeout_seconds": HEADER_TIMEOUT,
            "client_body_timeout_seconds": BODY_TIMEOUT,
        }
    )


@pytest.fixture(scope="module")
async def port(settings: Settings, provider_keys) -> AsyncIterator[int]:
    quick = short_timeouts(settings)
    runner, _ = await start_proxy(quick)
    yield quick.proxy_port
    await runner.cleanup()


class Raw:
    """One client connection, written and read byte by byte."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Raw:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def closed_within(self, seconds: float) -> float:
        """Seconds until the server closed the connection (it sends nothing first)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        async with asyncio.timeout(seconds):
            try:
                data = await self.reader.read(65536)
            except ConnectionError:
                data = b""
        assert data == b"", f"the server answered: {data[:200]!r}"
        return loop.time() - start

    async def response(self, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
        async with asyncio.timeout(timeout):
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            body = await self.reader.readexactly(length)
        return status, headers, body

    async def eof(self, timeout: float = 3.0) -> bool:
        async with asyncio.timeout(timeout):
            try:
                return await self.reader.read(65536) == b""
            except ConnectionError:
                return True

    def close(self) -> None:
        self.writer.close()


@contextlib.asynccontextmanager
async def connection(port: int) -> AsyncIterator[Raw]:
    raw = await Raw.open(port)
    try:
        yield raw
    finally:
        raw.close()


def request_head(path: str, key: str, length: int, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n{extra}\r\n"
    ).encode()


async def test_half_sent_headers_are_cut_within_the_timeout(port, accounts, upstream):
    acct = await accounts.create("1")
    before = len(upstream.recorded())
    async with connection(port) as raw:
        await raw.send(f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthoriz".encode())
        waited = await raw.closed_within(HEADER_TIMEOUT + 2)
    assert HEADER_TIMEOUT - 0.1 <= waited <= HEADER_TIMEOUT + 1
    async with connection(port) as raw:  # nothing at all: cut too
        await raw.closed_within(HEADER_TIMEOUT + 2)
    # headers trickled a byte at a time do not push the deadline back
    async with connection(port) as raw:
        await raw.send(f"POST {CHAT} HTTP/1.1\r\n".encode())
        loop = asyncio.get_running_loop()
        start = loop.time()
        cut = False
        for _ in range(60):
            try:
                await raw.send(b"X")
            except ConnectionError:
                cut = True
                break
            await asyncio.sleep(0.05)
            if raw.reader.at_eof() or raw.writer.transport.is_closing():
                cut = True
                break
        assert cut, "never cut"
        assert loop.time() - start <= HEADER_TIMEOUT + 1
    assert len(upstream.recorded()) == before
    await wait_holds_released(accounts.redis, acct.user_id)


async def test_kept_alive_connection_idles_but_a_next_stalled_request_is_cut(
    port, accounts, upstream
):
    acct = await accounts.create("1")
    async with connection(port) as raw:
        await raw.send(request_head(CHAT, acct.key, len(BODY)) + BODY)
        status, _, _ = await raw.response()
        assert status == 200
        await asyncio.sleep(HEADER_TIMEOUT * 2)  # idle between requests is not "slow headers"
        await raw.send(request_head(CHAT, acct.key, len(BODY)) + BODY)
        status, _, _ = await raw.response()
        assert status == 200
        await raw.send(b"POST /v1/openai/chat/completions HTTP/1.1\r\nHost: x\r\n")
        await raw.closed_within(HEADER_TIMEOUT + 2)


async def test_headers_in_pieces_within_the_timeout_are_served(port, accounts):
    acct = await accounts.create("1")
    head = request_head(CHAT, acct.key, len(BODY))
    async with connection(port) as raw:
        for i in range(0, len(head), 20):
            await raw.send(head[i : i + 20])
            await asyncio.sleep(0.01)
        await asyncio.sleep(BODY_TIMEOUT / 2)
        await raw.send(BODY)
        status, _, _ = await raw.response()
        assert status == 200


@pytest.mark.parametrize(
    ("path", "body"),
    [(CHAT, BODY), ("/v1/anthropic/v1/messages", ANTHROPIC_BODY)],
    ids=["openai", "anthropic"],
)
async def test_stalled_body_is_408_in_the_provider_format(
    port, accounts, upstream, pg, redis, path, body
):
    acct = await accounts.create("1")
    before = len(upstream.recorded())
    async with connection(port) as raw:
        await raw.send(request_head(path, acct.key, len(body)) + body[:10])
        loop = asyncio.get_running_loop()
        start = loop.time()
        status, headers, answer = await raw.response(timeout=BODY_TIMEOUT + 3)
        assert BODY_TIMEOUT - 0.1 <= loop.time() - start <= BODY_TIMEOUT + 1.5
        assert await raw.eof()  # and the connection is closed after the answer
    assert status == 408
    assert headers["x-request-id"].startswith("req_")
    error = json.loads(answer)
    if "anthropic" in path:
        assert error["type"] == "error"
        assert error["error"]["type"] == "timeout_error"
    else:
        assert error["error"]["type"] == "timeout"
        assert "not received" in error["error"]["message"]
    assert len(upstream.recorded()) == before
    await wait_holds_released(redis, acct.user_id)
    assert await accounts.balance(acct.user_id) == Decimal("1")
    assert not await pg.fetchval(
        "SELECT count(*) FROM usage_records WHERE user_id = $1", acct.user_id
    )


async def test_trickled_body_is_408_at_the_deadline_from_the_headers(port, accounts, upstream):
    acct = await accounts.create("1")
    before = len(upstream.recorded())
    async with connection(port) as raw:
        await raw.send(request_head(CHAT, acct.key, len(BODY)))
        loop = asyncio.get_running_loop()
        start = loop.time()
        answer = asyncio.ensure_future(raw.response(timeout=BODY_TIMEOUT + 3))
        with contextlib.suppress(ConnectionError):
            for byte in BODY[:-1]:  # a byte every 50 ms never finishes in time
                if answer.done():
                    break
                await raw.send(bytes([byte]))
                await asyncio.sleep(0.05)
        status, _, _ = await answer
        assert status == 408
        assert loop.time() - start <= BODY_TIMEOUT + 1
    assert len(upstream.recorded()) == before


async def test_slow_body_within_the_timeout_is_served(port, accounts):
    acct = await accounts.create("1")
    async with connection(port) as raw:
        await raw.send(request_head(CHAT, acct.key, len(BODY)))
        for i in range(0, len(BODY), 30):
            await asyncio.sleep(BODY_TIMEOUT / 10)
            await raw.send(BODY[i : i + 30])
        status, _, _ = await raw.response()
        assert status == 200


def big_headers(total: int) -> str:
    per = 8000  # under aiohttp's 8190 bytes per line
    return "".join(f"X-Pad-{i}: {'a' * per}\r\n" for i in range(total // per + 1))


@pytest.mark.parametrize("pieces", [1, 40], ids=["at-once", "in-pieces"])
async def test_headers_over_64_kib_are_431_and_nothing_goes_upstream(
    port, accounts, upstream, pieces
):
    acct = await accounts.create("1")
    before = len(upstream.recorded())
    message = request_head(CHAT, acct.key, len(BODY), big_headers(70 * 1024)) + BODY
    async with connection(port) as raw:
        answer = asyncio.ensure_future(raw.response())  # read while sending: the server
        step = len(message) // pieces + 1  # answers and closes before the end is sent
        with contextlib.suppress(ConnectionError):
            for i in range(0, len(message), step):
                if answer.done():
                    break
                await raw.send(message[i : i + step])
                await asyncio.sleep(0.005)
        status, headers, body = await answer
        assert status == 431
        assert json.loads(body)["error"]["type"] == "invalid_request_error"  # OpenAI's format
        assert headers["x-request-id"].startswith("req_")
        assert await raw.eof()
    assert len(upstream.recorded()) == before


async def test_headers_just_under_64_kib_are_served(port, accounts):
    acct = await accounts.create("1")
    message = request_head(CHAT, acct.key, len(BODY), big_headers(56 * 1024)) + BODY
    async with connection(port) as raw:
        await raw.send(message)
        status, _, _ = await raw.response()
        assert status == 200


async def test_a_large_body_with_small_headers_is_not_mistaken_for_large_headers(port, accounts):
    acct = await accounts.create("100")
    big = json.dumps(
        {
            "model": "gpt-4o-mini",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "x" * 300_000}],
        }
    ).encode()
    async with connection(port) as raw:
        await raw.send(request_head(CHAT, acct.key, len(big)) + big)
        status, _, _ = await raw.response()
        assert status == 200


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "GZIP, identity"])
async def test_content_encoded_body_is_415_and_nothing_goes_upstream(
    port, accounts, upstream, redis, encoding
):
    acct = await accounts.create("1")
    before = len(upstream.recorded())
    body = gzip.compress(BODY)
    async with connection(port) as raw:
        await raw.send(
            request_head(CHAT, acct.key, len(body), f"Content-Encoding: {encoding}\r\n") + body
        )
        status, _, answer = await raw.response()
    assert status == 415
    assert json.loads(answer)["error"]["type"] == "invalid_request_error"
    assert len(upstream.recorded()) == before
    await wait_holds_released(redis, acct.user_id)


async def test_identity_content_encoding_is_served(port, accounts):
    acct = await accounts.create("1")
    async with connection(port) as raw:
        await raw.send(
            request_head(CHAT, acct.key, len(BODY), "Content-Encoding: identity\r\n") + BODY
        )
        status, _, _ = await raw.response()
    assert status == 200


async def test_dashboard_cuts_slow_headers_and_huge_headers(settings, pg):
    from aiohttp import web

    from dashboard.app import make_runner

    quick = short_timeouts(settings)
    runner = make_runner(quick)
    await runner.setup()
    dport = free_port()
    await web.TCPSite(runner, "127.0.0.1", dport).start()
    try:
        async with connection(dport) as raw:
            await raw.send(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\nAcc")
            await raw.closed_within(HEADER_TIMEOUT + 2)
        async with connection(dport) as raw:
            await raw.send(
                f"GET /login HTTP/1.1\r\nHost: x\r\n{big_headers(70 * 1024)}\r\n".encode()
            )
            status, _, _ = await raw.response()
            assert status == 431
        async with connection(dport) as raw:
            await raw.send(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            status, _, _ = await raw.response()
            assert status == 200
    finally:
        await runner.cleanup()


SERVE_SCRIPT = """
import asyncio, sys
from aiohttp import web
from shared.http_server import ClientLimits, serve

async def slow(request):
    await asyncio.sleep(1.0)
    return web.Response(text="finished")

app = web.Application()
app.router.add_get("/slow", slow)
serve(app, ClientLimits(header_timeout=0.5), host="127.0.0.1", port=int(sys.argv[1]),
      on_start=lambda: print("ready", flush=True))
"""


async def test_serve_drains_requests_in_flight_on_sigterm_and_has_the_limits():
    import signal
    import sys

    from shared.config import REPO_ROOT

    sport = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SERVE_SCRIPT, str(sport), cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(20):
            assert (await proc.stdout.readline()).strip() == b"ready"
        async with connection(sport) as raw:  # the limits hold in `serve` too
            await raw.send(b"GET /slow HTTP/1.1\r\nHo")
            await raw.closed_within(3)
        async with connection(sport) as raw:
            await raw.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            await asyncio.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            status, _, body = await raw.response()
            assert (status, body) == (200, b"finished")
        async with asyncio.timeout(20):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
