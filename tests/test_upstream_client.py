"""The relay's HTTP client against raw sockets that misbehave on purpose."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from proxy.upstream import (
    ConnectFailed,
    ConnectionBroken,
    ReadTimeout,
    UpstreamClient,
    parse_target,
)
from proxy.upstream.client import request_bytes

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


def answer(body: bytes, *, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + extra
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """A TCP server running `handler` per connection; yields its URL and a
    list that counts the connections it accepted."""
    accepted: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1/chat", accepted
    finally:
        server.close()


def client(**overrides: float) -> UpstreamClient:
    options = {"connect_timeout": 2.0, "read_timeout": 2.0, **overrides}
    return UpstreamClient(**options)


async def test_request_line_headers_and_body_arrive_as_sent() -> None:
    seen: list[tuple[bytes, bytes]] = []

    async def handler(reader, writer) -> None:
        seen.append(await read_request(reader))
        writer.write(answer(b'{"ok":true}', extra=b"X-Request-Id: up-1\r\n"))
        await writer.drain()

    async with raw_server(handler) as (url, _):
        http = client()
        response = await http.post(parse_target(url), [("X-Custom", "v")], b'{"a":1}')
        assert response.status == 200
        assert response.headers["x-request-id"] == "up-1"
        assert response.content_type == "application/json"
        assert await response.read() == b'{"ok":true}'
        response.release()
        await http.close()
    head, body = seen[0]
    assert head.startswith(b"POST /v1/chat HTTP/1.1\r\n")
    assert b"\r\nHost: 127.0.0.1:" in head
    assert b"\r\nX-Custom: v\r\n" in head
    assert body == b'{"a":1}'


async def test_a_get_has_no_body_and_shares_the_connections() -> None:
    seen: list[bytes] = []

    async def handler(reader, writer) -> None:
        while True:
            head, body = await read_request(reader)
            seen.append(head + body)
            writer.write(answer(b'{"data":[]}'))
            await writer.drain()

    async with raw_server(handler) as (url, accepted):
        http = client()
        target = parse_target(url)
        for _ in range(2):
            response = await http.get(target, [("x-api-key", "k")])
            assert response.status == 200
            assert await response.read() == b'{"data":[]}'
            response.release()
        response = await http.post(target, [], b"{}")  # the same connection again
        await response.read()
        response.release()
        await http.close()
    assert len(accepted) == 1
    assert seen[0].startswith(b"GET /v1/chat HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nx-api-key: k\r\n" in seen[0]
    assert b"content-length" not in seen[0].lower()
    assert seen[0].endswith(b"\r\n\r\n")
    assert seen[2].startswith(b"POST ")


async def test_connections_are_kept_alive_and_reused() -> None:
    async def handler(reader, writer) -> None:
        while True:
            await read_request(reader)
            writer.write(answer(b"{}"))
            await writer.drain()

    async with raw_server(handler) as (url, accepted):
        http = client()
        for _ in range(5):
            response = await http.post(parse_target(url), [], b"{}")
            assert await response.read() == b"{}"
            response.release()
        await http.close()
    assert len(accepted) == 1


async def test_an_idle_connection_the_server_closed_is_replaced_transparently() -> None:
    async def handler(reader, writer) -> None:
        await read_request(reader)
        writer.write(answer(b"{}"))  # says nothing of closing, then closes
        await writer.drain()

    async with raw_server(handler) as (url, accepted):
        http = client()
        for _ in range(3):
            response = await http.post(parse_target(url), [], b"{}")
            assert await response.read() == b"{}"
            response.release()
            await asyncio.sleep(0.05)
        await http.close()
    assert len(accepted) == 3


async def test_chunked_stream_is_delivered_as_it_arrives() -> None:
    go_on = asyncio.Event()

    async def handler(reader, writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
        writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
        writer.write(b"6\r\ndata:1\r\n")
        await writer.drain()
        await go_on.wait()
        writer.write(b"6\r\ndata:2\r\n0\r\n\r\n")
        await writer.drain()

    async with raw_server(handler) as (url, _):
        http = client()
        response = await http.post(parse_target(url), [], b"{}")
        chunks = response.iter_chunks()
        assert await anext(chunks) == b"data:1"  # before the server sends more
        go_on.set()
        rest = [chunk async for chunk in chunks]
        assert b"".join(rest) == b"data:2"
        response.release()
        await http.close()


async def test_a_body_without_length_ends_with_the_connection() -> None:
    async def handler(reader, writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        await writer.drain()

    async with raw_server(handler) as (url, _):
        http = client()
        response = await http.post(parse_target(url), [], b"{}")
        assert await response.read() == b"all of it"
        response.release()
        await http.close()


async def test_a_stream_cut_short_raises_connection_broken() -> None:
    async def handler(reader, writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()

    async with raw_server(handler) as (url, _):
        http = client()
        response = await http.post(parse_target(url), [], b"{}")
        received = b""
        with pytest.raises(ConnectionBroken):
            async for chunk in response.iter_chunks():
                received += chunk
        assert received == b"partial"
        response.release()
        await http.close()


async def test_silence_after_the_headers_is_a_read_timeout() -> None:
    async def handler(reader, writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    async with raw_server(handler) as (url, _):
        http = client(read_timeout=0.3)
        response = await http.post(parse_target(url), [], b"{}")
        with pytest.raises(ReadTimeout):
            await response.read()
        assert isinstance(ReadTimeout("x"), TimeoutError)
        response.release()
        await http.close()


async def test_no_answer_at_all_is_a_read_timeout() -> None:
    async def handler(reader, writer) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async with raw_server(handler) as (url, _):
        http = client(read_timeout=0.3)
        with pytest.raises(ReadTimeout):
            await http.post(parse_target(url), [], b"{}")
        await http.close()


async def test_a_slow_trickle_is_not_a_timeout() -> None:
    async def handler(reader, writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(6):
            await asyncio.sleep(0.1)
            writer.write(b"1\r\nx\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with raw_server(handler) as (url, _):
        http = client(read_timeout=0.25)
        response = await http.post(parse_target(url), [], b"{}")
        assert await response.read() == b"x" * 6
        response.release()
        await http.close()


async def test_a_slow_reader_pauses_the_upstream_and_loses_nothing() -> None:
    payload = bytes(range(256)) * 16_384  # 4 MiB

    async def handler(reader, writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload))
        writer.write(payload)
        await writer.drain()

    async with raw_server(handler) as (url, _):
        http = client(read_timeout=0.5)
        response = await http.post(parse_target(url), [], b"{}")
        await asyncio.sleep(0.8)  # longer than the read timeout, while paused
        received = bytearray()
        async for chunk in response.iter_chunks():
            received += chunk
            await asyncio.sleep(0.001)
        assert bytes(received) == payload
        response.release()
        await http.close()


async def test_a_large_whole_body_is_read_to_its_end() -> None:
    payload = b"x" * (3 * 1024 * 1024)  # far above the pause threshold

    async def handler(reader, writer) -> None:
        while True:
            await read_request(reader)
            writer.write(answer(payload))
            await writer.drain()

    async with raw_server(handler) as (url, accepted):
        http = client(read_timeout=1.0)
        for _ in range(2):  # and the connection is fit for the next request
            response = await http.post(parse_target(url), [], b"{}")
            await asyncio.sleep(0.2)  # let the provider fill our buffers first
            assert await asyncio.wait_for(response.read(), 5) == payload
            response.release()
        await http.close()
    assert len(accepted) == 1


async def test_bytes_after_a_complete_answer_close_the_connection() -> None:
    async def handler(reader, writer) -> None:
        await read_request(reader)
        writer.write(answer(b"{}") + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]")
        await writer.drain()
        await asyncio.sleep(1)

    async with raw_server(handler) as (url, accepted):
        http = client()
        response = await http.post(parse_target(url), [], b"{}")
        assert await response.read() == b"{}"
        assert response.status == 200 and response.headers["content-type"] == "application/json"
        response.release()
        response = await http.post(parse_target(url), [], b"{}")  # on a new connection
        assert await response.read() == b"{}"
        response.release()
        await http.close()
    assert len(accepted) == 2


async def test_interim_answers_are_skipped() -> None:
    async def handler(reader, writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + answer(b'{"a":1}'))
        await writer.drain()

    async with raw_server(handler) as (url, _):
        http = client()
        response = await http.post(parse_target(url), [], b"{}")
        assert response.status == 200
        assert "link" not in response.headers
        assert await response.read() == b'{"a":1}'
        response.release()
        await http.close()


async def test_truncated_answers_are_never_taken_as_complete() -> None:
    async def chunked_cut(reader, writer) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()

    async def reset_without_length(reader, writer) -> None:
        await read_request(reader)
        writer.write(b'HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{"partial')
        await writer.drain()
        linger = struct.pack("ii", 1, 0)  # close with a reset, not a clean end
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        writer.transport.abort()

    for handler in (chunked_cut, reset_without_length):
        async with raw_server(handler) as (url, _):
            http = client()
            response = await http.post(parse_target(url), [], b"{}")
            with pytest.raises(ConnectionBroken):
                await response.read()
            response.release()
            await http.close()


async def test_an_upgrade_answer_is_a_broken_connection() -> None:
    async def handler(reader, writer) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
        )
        await writer.drain()
        await asyncio.sleep(1)

    async with raw_server(handler) as (url, _):
        http = client(read_timeout=3)
        with pytest.raises(ConnectionBroken):
            await asyncio.wait_for(http.post(parse_target(url), [], b"{}"), 2)
        await http.close()


async def test_malformed_http_is_a_broken_connection() -> None:
    async def handler(reader, writer) -> None:
        await read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async with raw_server(handler) as (url, _):
        http = client()
        with pytest.raises(ConnectionBroken):
            await http.post(parse_target(url), [], b"{}")
        await http.close()


async def test_a_refused_connection_is_connect_failed() -> None:
    async with raw_server(read_request) as (url, _):
        pass  # closed: nothing listens on that port any more
    http = client()
    with pytest.raises(ConnectFailed):
        await http.post(parse_target(url), [], b"{}")
    await http.close()


def test_header_injection_is_refused() -> None:
    target = parse_target("https://api.example.com/v1/messages")
    with pytest.raises(ValueError):
        request_bytes(target, [("x-api-key", "sk\r\nEvil: 1")], b"{}")


def test_targets_parse_ports_paths_and_hosts() -> None:
    target = parse_target("https://api.example.com/v1/messages")
    assert (target.origin.port, target.path, target.host_header) == (
        443,
        "/v1/messages",
        "api.example.com",
    )
    target = parse_target("http://[::1]:8080/x?y=1")
    assert (target.origin.host, target.path, target.host_header) == ("::1", "/x?y=1", "[::1]:8080")
    with pytest.raises(ValueError):
        parse_target("ftp://example.com/")
