"""aiohttp's server with limits on slow and huge clients (contract section 10).

aiohttp bounds each header line and the number of headers, but not the time a
client takes to send them, nor their total size, nor the time a body takes to
arrive. `GuardedAppRunner` serves an application with a protocol that adds
those three limits, at the cost of one timer per request whose headers or
body come in more than one read (nothing per chunk beyond a few attribute
checks):

- headers: from the connection's start, or from the first byte of a next
  request on a kept-alive connection, the headers must be complete within
  `header_timeout`; otherwise the connection is closed.
- header size: at most `max_header_bytes` in all, else 431 and close; the
  request never reaches the application.
- body: from the end of the headers, the body must be complete within
  `body_timeout`; otherwise reading it raises `BodyTimeout` (an
  `HTTPRequestTimeout`: a 408 unless the application answers otherwise).

Request bodies are never decompressed by the server (`auto_decompress=False`):
an application that accepts a `Content-Encoding` body decodes it itself, so a
small compressed body cannot become a huge one behind the size limit.
The idle time between two requests of a kept-alive connection is aiohttp's
`keepalive_timeout`. A request refused before it reaches the application (431,
or aiohttp's parser refusing it with 400) is answered by `error_response` when
the runner has one (the proxy answers in the provider's error format), and is
not logged: its bytes are the client's, and may carry a key.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from shared.config import Settings

# The answer to a request refused before it reached the application (its headers
# malformed or too large): (status, message, the request's path if known) -> response.
ErrorResponse = Callable[[int, str, "str | None"], web.StreamResponse]

log = structlog.get_logger("meterway.server")

MAX_HEADER_BYTES = 64 * 1024
KEEPALIVE_TIMEOUT = 75.0  # aiohttp's run_app default; its AppRunner's is an hour


@dataclass(frozen=True, slots=True)
class ClientLimits:
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_header_bytes: int = MAX_HEADER_BYTES

    @classmethod
    def from_settings(cls, settings: Settings) -> ClientLimits:
        return cls(
            header_timeout=settings.client_header_timeout_seconds,
            body_timeout=settings.client_body_timeout_seconds,
        )


class BodyTimeout(web.HTTPRequestTimeout):
    """Raised by reading a request body that did not arrive in time."""


class HeadersTooLarge(HttpProcessingError):
    """The request's headers exceed `ClientLimits.max_header_bytes`."""


class GuardedRequestHandler(RequestHandler):
    """aiohttp's protocol with the header and body limits of `ClientLimits`.

    Bytes are header bytes, until a message is parsed (aiohttp counts parsed
    messages in `_request_count`), when they arrive at the connection's start,
    while aiohttp's request loop waits for the next message (`_waiter` pending),
    or after the body of the last parsed request is complete (a next request
    sent while the answer to the last one is still being made). A next request
    that begins in the very read that ends the body before it (pipelining) is
    bounded by the keep-alive timeout instead.
    """

    __slots__ = (
        "_error_response",
        "_header_bytes",
        "_header_timer",
        "_last_payload",
        "_limits",
        "_request_start",
    )

    def __init__(
        self,
        manager: web.Server,
        *,
        limits: ClientLimits,
        error_response: ErrorResponse | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._error_response = error_response
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._last_payload: StreamReader | None = None
        self._request_start = b""  # the first bytes of headers not yet complete

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_header_timer()
        self._last_payload = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None:
            waiter = self._waiter
            payload = self._last_payload
            if (waiter is None or waiter.done()) and payload is not None and not payload.is_eof():
                super().data_received(data)  # body bytes of the request being read
                return
        count = self._request_count
        first = self._request_start if self._header_bytes else data  # a reference, no copy
        super().data_received(data)
        received = self._header_bytes + len(data)
        if self._request_count != count:  # headers complete: one or more messages
            self._header_bytes = 0
            self._request_start = b""
            self._cancel_header_timer()
            self._headers_done(self._request_count - count, received, first)
        elif data and not (self._force_close or self._close):  # (b"": aiohttp re-parsing)
            self._header_bytes = received
            self._request_start = first
            if received > self._limits.max_header_bytes:
                self._refuse_headers(first)
            elif self._header_timer is None:
                self._arm_header_timer()

    def _headers_done(self, new: int, received: int, first: bytes) -> None:
        messages = self._messages
        limit = self._limits.max_header_bytes
        for index in range(max(len(messages) - new, 0), len(messages)):
            message, payload = messages[index]
            if type(message) is _ErrInfo:  # aiohttp's parser refused it (answered 400)
                message.exc.request_path = _path_of(first)  # type: ignore[attr-defined]
            elif received > limit and _header_size(message) > limit:
                messages[index] = (_too_large(message.path), EMPTY_PAYLOAD)
                self._close = True  # parse nothing more; answer 431, then close
                payload = EMPTY_PAYLOAD
            elif not payload.is_eof():
                timer = self._loop.call_later(
                    self._limits.body_timeout, self._body_timed_out, payload
                )
                payload.on_eof(timer.cancel)
            self._last_payload = payload

    def _refuse_headers(self, first: bytes) -> None:
        self._cancel_header_timer()
        self._request_start = b""
        self._request_count += 1
        self._messages.append((_too_large(_path_of(first)), EMPTY_PAYLOAD))
        self._close = True  # parse nothing more; answer 431, then close
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _arm_header_timer(self) -> None:
        self._header_timer = self._loop.call_later(
            self._limits.header_timeout, self._header_timed_out
        )

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self._messages or self._force_close:
            return
        if self._request_in_progress:  # a next request began before this one's answer ended
            self._arm_header_timer()
        else:
            self.force_close()

    def _body_timed_out(self, payload: StreamReader) -> None:
        if payload.is_eof():
            return
        # no lingering read of the rest after the answer: the connection closes
        self._lingering_time = 0.0
        payload.set_exception(BodyTimeout(text="Request body not received in time"))

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        # A request the parser refused, or 431: the client's fault, not worth a traceback
        # in the log (which could show its header bytes).
        message = message or exc.message or "Bad Request"
        path = getattr(exc, "request_path", None)
        if self._error_response is not None:
            response = self._error_response(status, message, path)
        else:
            response = web.Response(status=status, text=message, content_type="text/plain")
        response.force_close()
        return response


def _too_large(path: str | None) -> _ErrInfo:
    exc = HeadersTooLarge(code=431, message="Request header fields too large (64 KiB at most)")
    exc.request_path = path  # type: ignore[attr-defined]
    return _ErrInfo(status=431, exc=exc, message=exc.message)


def _path_of(start: bytes) -> str | None:
    """The path of a request line (`METHOD /path?query HTTP/1.1`), if it has one."""
    line = start[:2048].partition(b"\r\n")[0].split(b" ")
    if len(line) < 2 or not line[1].startswith(b"/"):
        return None
    return line[1].partition(b"?")[0].decode("latin-1")


def _header_size(message: Any) -> int:
    raw = getattr(message, "raw_headers", None)
    if raw is None:
        return 0
    return len(message.path) + sum(len(name) + len(value) + 4 for name, value in raw)


class GuardedServer(web.Server):
    def __init__(
        self,
        handler: Any,
        *,
        limits: ClientLimits,
        error_response: ErrorResponse | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(handler, **kwargs)
        self._limits = limits
        self._error_response = error_response

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(
            self,
            loop=self._loop,
            limits=self._limits,
            error_response=self._error_response,
            **self._kwargs,
        )


class GuardedAppRunner(web.AppRunner):
    """`web.AppRunner` whose connections have the limits of `ClientLimits`."""

    __slots__ = ("_error_response", "_limits")

    def __init__(
        self,
        app: web.Application,
        limits: ClientLimits,
        *,
        error_response: ErrorResponse | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("keepalive_timeout", KEEPALIVE_TIMEOUT)
        kwargs["auto_decompress"] = False
        super().__init__(app, **kwargs)
        self._limits = limits
        self._error_response = error_response

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return GuardedServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=plain._loop,
            limits=self._limits,
            error_response=self._error_response,
            **plain._kwargs,
        )


@dataclass(frozen=True, slots=True)
class Drain:
    """How SIGTERM stops a server (contract section 8). `on_drain` runs at once
    (readiness goes 503); the server keeps serving for `drain_seconds`, then
    closes its listening socket and lets requests in flight finish for up to
    `grace_seconds`; then `on_grace_expired` runs (cut what is left, so it
    ends as a broken stream rather than a cancelled one), and `CUT_MARGIN`
    seconds later aiohttp cancels any handler still running."""

    drain_seconds: float = 0.0
    grace_seconds: float = 60.0
    on_drain: Callable[[], None] | None = None
    on_grace_expired: Callable[[], None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **callbacks: Any) -> Drain:
        return cls(
            drain_seconds=settings.shutdown_drain_seconds,
            grace_seconds=settings.shutdown_grace_seconds,
            **callbacks,
        )


CUT_MARGIN = 5.0  # after the grace limit: time for cut streams to end and be billed


def serve(
    app: web.Application,
    limits: ClientLimits,
    *,
    host: str,
    port: int,
    on_start: Callable[[], None] | None = None,
    error_response: ErrorResponse | None = None,
    drain: Drain | None = None,
    sock: socket.socket | None = None,
    **runner_args: Any,
) -> None:
    """Serve `app` until SIGINT or SIGTERM, with the limits. Like `web.run_app`, a
    signal first shuts the server down gracefully (requests in flight finish,
    within the runner's `shutdown_timeout`), and only then is anything cancelled.
    With `drain`, a signal first drains (see `Drain`). With `sock`, serve on that
    listening socket (inherited from a supervisor) instead of binding host:port."""

    async def main() -> None:
        if drain is not None:
            runner_args["shutdown_timeout"] = drain.grace_seconds + CUT_MARGIN
        runner = GuardedAppRunner(app, limits, error_response=error_response, **runner_args)
        await runner.setup()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        cut: asyncio.TimerHandle | None = None
        try:
            if sock is not None:
                await web.SockSite(runner, sock).start()
            else:
                await web.TCPSite(runner, host, port).start()
            if on_start is not None:
                on_start()
            await stop.wait()
            if drain is not None:
                log.info("shutdown_draining", drain_seconds=drain.drain_seconds)
                if drain.on_drain is not None:
                    drain.on_drain()
                await asyncio.sleep(drain.drain_seconds)
                if drain.on_grace_expired is not None:
                    cut = loop.call_later(drain.grace_seconds, drain.on_grace_expired)
                log.info("shutdown_closing_listener", grace_seconds=drain.grace_seconds)
        finally:
            await runner.cleanup()  # closes the listener, waits for handlers, cleans up
            if cut is not None:
                cut.cancel()

    asyncio.run(main())
