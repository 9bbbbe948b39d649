"""One HTTP/1.1 connection to a provider and the answer it is reading.

An `asyncio.Protocol` fed straight by the event loop: bytes go into llhttp
(`httptools`) and come out as status, headers and body chunks on the current
`UpstreamResponse`. There is no reader task and no timer per request or chunk:
the client sweeps its busy connections for read timeouts (`check_timeout`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import httptools

from proxy.upstream.errors import ConnectionBroken, ReadTimeout, UpstreamError

if TYPE_CHECKING:
    from proxy.upstream.client import UpstreamClient

# Stop reading from the provider while this much of its answer waits for a slow client.
_PAUSE_ABOVE = 512 * 1024
_RESUME_BELOW = 64 * 1024


class UpstreamResponse:
    """Status and headers of an answer, and its body as it arrives."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_complete",
        "_conn",
        "_error",
        "_headers_waiter",
        "_released",
        "_waiter",
        "_whole",
        "headers",
        "status",
    )

    def __init__(self, conn: UpstreamConnection, headers_waiter: asyncio.Future) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}  # lower-case names
        self._conn = conn
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._complete = False
        self._error: UpstreamError | None = None
        self._waiter: asyncio.Future | None = None
        self._headers_waiter = headers_waiter
        self._released = False
        self._whole = False  # read() wants it all: never pause the provider

    @property
    def content_type(self) -> str:
        """The media type alone (`application/json`), as aiohttp reports it."""
        value = self.headers.get("content-type", "application/octet-stream")
        return value.partition(";")[0].strip().lower()

    async def read(self) -> bytes:
        """The whole body."""
        self._whole = True
        self._conn.resume_if_paused()
        while not self._complete:
            await self._wait()
        body = b"".join(self._chunks) if len(self._chunks) != 1 else self._chunks[0]
        self._chunks = []
        self._buffered = 0
        return body

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive; what arrived together comes as one chunk."""
        while True:
            if self._chunks:
                chunks = self._chunks
                self._chunks = []
                self._buffered = 0
                self._conn.resume_if_paused()
                yield chunks[0] if len(chunks) == 1 else b"".join(chunks)
            elif self._complete:
                return
            else:
                await self._wait()

    def release(self) -> None:
        """Done with this answer: keep the connection for the next request when
        the answer was read to its end, else close it."""
        if self._released:
            return
        self._released = True
        self._conn.finish(self, reusable=self._complete and self._error is None)

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self._error is not None and not self._chunks:
            raise self._error

    # -- fed by the connection --------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _headers_ready(self, status: int, headers: dict[str, str]) -> None:
        self.status = status
        self.headers = headers
        if not self._headers_waiter.done():
            self._headers_waiter.set_result(self)

    def _feed(self, data: bytes) -> int:
        self._chunks.append(data)
        self._buffered += len(data)
        self._wake()
        return self._buffered

    def _end(self) -> None:
        self._complete = True
        self._wake()

    def _fail(self, error: UpstreamError) -> None:
        if self._complete:
            return
        self._error = error
        if not self._headers_waiter.done():
            self._headers_waiter.set_exception(error)
        self._wake()


class UpstreamConnection(asyncio.Protocol):
    """A keep-alive connection carrying one request at a time."""

    def __init__(self, client: UpstreamClient, origin: tuple, read_timeout: float) -> None:
        self.client = client
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.used = False  # has carried a request before
        self._loop = asyncio.get_running_loop()
        self._read_timeout = read_timeout
        self._parser = httptools.HttpResponseParser(self)
        self._response: UpstreamResponse | None = None
        self._header_list: list[tuple[bytes, bytes]] = []
        self._got_bytes = False
        self._keep_alive = False
        self._interim = False  # reading a 1xx answer; the real one follows
        self._last_data = 0.0
        self._paused = False

    # -- used by the client -----------------------------------------------

    def send(self, request: bytes) -> asyncio.Future:
        """Write one whole request; the future resolves with the response
        once its status and headers are in."""
        waiter = self._loop.create_future()
        if self.closed:
            waiter.set_exception(ConnectionBroken("connection closed", before_response=True))
            return waiter
        self._response = UpstreamResponse(self, waiter)
        self._header_list = []
        self._got_bytes = False
        self._keep_alive = False
        self._last_data = self._loop.time()
        self.client.track(self)
        self.transport.write(request)
        return waiter

    def finish(self, response: UpstreamResponse, *, reusable: bool) -> None:
        if response is not self._response:
            return
        self._response = None
        self.client.untrack(self)
        if reusable and not self.closed and self._keep_alive:
            self.resume_if_paused()
            self.used = True
            self.client.give_back(self)
        else:
            self.close()

    def close(self) -> None:
        self.closed = True
        self.client.untrack(self)
        if self.transport is not None:
            self.transport.abort()

    def resume_if_paused(self) -> None:
        if self._paused:
            self._paused = False
            self.transport.resume_reading()

    # -- asyncio.Protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._response is None or self._response._complete:
            self.close()  # bytes nobody asked for: the peer is confused
            return
        self._got_bytes = True
        self._last_data = self._loop.time()
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._break(ConnectionBroken(f"malformed HTTP from upstream: {exc!r}"))

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.client.untrack(self)
        response = self._response
        if response is None or response._complete:
            return
        if exc is None and response.status and self._body_until_close():
            response._end()  # an answer without length ends when its connection closes cleanly
            return
        reason = "upstream closed the connection before the answer was complete"
        response._fail(ConnectionBroken(reason, before_response=not self._got_bytes))

    def pause_writing(self) -> None:  # requests are small; nothing to do
        pass

    def resume_writing(self) -> None:
        pass

    # -- httptools callbacks ----------------------------------------------

    def on_message_begin(self) -> None:
        if self._response is None or self._response._complete:
            # a second answer to one request: stop here; the first stays whole
            raise ConnectionBroken("upstream sent more than one answer")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_list.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # 100 Continue, 103 Early Hints: the answer follows
            self._interim = True
            self._header_list = []
            return
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in self._header_list
        }
        self._response._headers_ready(status, headers)

    def on_body(self, body: bytes) -> None:
        response = self._response
        buffered = response._feed(body)
        if buffered > _PAUSE_ABOVE and not self._paused and not response._whole:
            self._paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self._keep_alive = self._parser.should_keep_alive()  # reset once this returns
        self._response._end()

    # -- internals --------------------------------------------------------

    def _body_until_close(self) -> bool:
        headers = self._response.headers
        return (
            "content-length" not in headers
            and "chunked" not in headers.get("transfer-encoding", "").lower()
        )

    def _break(self, error: UpstreamError) -> None:
        if self._response is not None:
            self._response._fail(error)
        self.close()

    def check_timeout(self, now: float) -> None:
        """Break the exchange when the provider has sent nothing for the read
        timeout; time spent paused for a slow client does not count."""
        if self._response is None or self._response._complete:
            return
        if self._paused:
            self._last_data = now
        elif now - self._last_data >= self._read_timeout:
            self._break(ReadTimeout(f"upstream sent nothing for {self._read_timeout:g} s"))
