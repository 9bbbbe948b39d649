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
`keepalive_timeout`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from shared.config import Settings

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

    __slots__ = ("_header_bytes", "_header_timer", "_last_payload", "_limits")

    def __init__(self, manager: web.Server, *, limits: ClientLimits, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._last_payload: StreamReader | None = None

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
        super().data_received(data)
        received = self._header_bytes + len(data)
        if self._request_count != count:  # headers complete: one or more messages
            self._header_bytes = 0
            self._cancel_header_timer()
            self._headers_done(self._request_count - count, received)
        elif data and not (self._force_close or self._close):  # (b"": aiohttp re-parsing)
            self._header_bytes = received
            if received > self._limits.max_header_bytes:
                self._refuse_headers()
            elif self._header_timer is None:
                self._arm_header_timer()

    def _headers_done(self, new: int, received: int) -> None:
        messages = self._messages
        limit = self._limits.max_header_bytes
        for index in range(max(len(messages) - new, 0), len(messages)):
            message, payload = messages[index]
            if received > limit and _header_size(message) > limit:
                messages[index] = (_too_large(), EMPTY_PAYLOAD)
                self._close = True  # parse nothing more; answer 431, then close
                payload = EMPTY_PAYLOAD
            elif not payload.is_eof():
                timer = self._loop.call_later(
                    self._limits.body_timeout, self._body_timed_out, payload
                )
                payload.on_eof(timer.cancel)
            self._last_payload = payload

    def _refuse_headers(self) -> None:
        self._cancel_header_timer()
        self._request_count += 1
        self._messages.append((_too_large(), EMPTY_PAYLOAD))
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
        if isinstance(exc, HeadersTooLarge):  # expected, not worth a traceback in the log
            response = web.Response(status=431, text=exc.message, content_type="text/plain")
            response.force_close()
            return response
        return super().handle_error(request, status, exc, message)


def _too_large() -> _ErrInfo:
    exc = HeadersTooLarge(code=431, message="Request Header Fields Too Large")
    return _ErrInfo(status=431, exc=exc, message=exc.message)


def _header_size(message: Any) -> int:
    raw = getattr(message, "raw_headers", None)
    if raw is None:
        return 0
    return len(message.path) + sum(len(name) + len(value) + 4 for name, value in raw)


class GuardedServer(web.Server):
    def __init__(self, handler: Any, *, limits: ClientLimits, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._limits = limits

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, limits=self._limits, **self._kwargs)


class GuardedAppRunner(web.AppRunner):
    """`web.AppRunner` whose connections have the limits of `ClientLimits`."""

    __slots__ = ("_limits",)

    def __init__(self, app: web.Application, limits: ClientLimits, **kwargs: Any) -> None:
        kwargs.setdefault("keepalive_timeout", KEEPALIVE_TIMEOUT)
        kwargs["auto_decompress"] = False
        super().__init__(app, **kwargs)
        self._limits = limits

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return GuardedServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=plain._loop,
            limits=self._limits,
            **plain._kwargs,
        )


def serve(
    app: web.Application,
    limits: ClientLimits,
    *,
    host: str,
    port: int,
    on_start: Callable[[], None] | None = None,
    **runner_args: Any,
) -> None:
    """Serve `app` until SIGINT or SIGTERM, like `web.run_app`, with the limits."""

    async def main() -> None:
        runner = GuardedAppRunner(app, limits, handle_signals=True, **runner_args)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
            if on_start is not None:
                on_start()
            await asyncio.Event().wait()  # until a signal raises GracefulExit
        finally:
            await runner.cleanup()

    with contextlib.suppress(web.GracefulExit, KeyboardInterrupt):
        asyncio.run(main())
