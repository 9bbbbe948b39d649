"""Server-sent events writer: one write (and flush) per event, optional pacing."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from simulator.control import Directives


def encode_event(data: Any, event: str | None = None) -> bytes:
    """`event: <name>\\ndata: <compact json>\\n\\n`, or just the data line when unnamed."""
    payload = b"data: " + orjson.dumps(data) + b"\n\n"
    if event is None:
        return payload
    return b"event: " + event.encode() + b"\n" + payload


class SseStream:
    def __init__(self, request: web.Request, delay_ms: float) -> None:
        self._request = request
        self._delay_s = delay_ms / 1000.0
        self._sent = 0
        self.response = web.StreamResponse(
            status=200,
            headers={"content-type": "text/event-stream", "cache-control": "no-cache"},
        )

    @classmethod
    async def open(
        cls, request: web.Request, directives: Directives, default_delay_ms: float
    ) -> SseStream:
        delay = default_delay_ms if directives.delay_ms is None else directives.delay_ms
        stream = cls(request, delay)
        await stream.response.prepare(request)
        return stream

    async def send_raw(self, chunk: bytes) -> None:
        if self._sent and self._delay_s > 0:
            await asyncio.sleep(self._delay_s)
        # StreamResponse.write hands the bytes to the transport immediately and waits
        # for the transport's write buffer to drain when it is above its high-water mark.
        await self.response.write(chunk)
        self._sent += 1

    async def send(self, data: Any, event: str | None = None) -> None:
        await self.send_raw(encode_event(data, event))

    async def finish(self) -> web.StreamResponse:
        await self.response.write_eof()
        return self.response

    def abort(self) -> web.StreamResponse:
        """Drop the connection mid-body (no terminating chunk, no final events)."""
        transport = self._request.transport
        if transport is not None:
            transport.abort()
        return self.response


def interruption(directives: Directives, total: int) -> tuple[str, int] | None:
    """Where a stream should be cut short: ("break" | "error", deltas sent before it).

    The position is clamped to `total`, so a value >= the number of deltas interrupts the
    stream right after the last delta (before any closing events).
    """
    options: list[tuple[int, str]] = []
    if directives.break_after is not None:
        options.append((min(directives.break_after, total), "break"))
    if directives.error_event_after is not None:
        options.append((min(directives.error_event_after, total), "error"))
    if not options:
        return None
    position, kind = min(options)
    return kind, position
