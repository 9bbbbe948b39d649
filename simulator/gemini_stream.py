"""`streamGenerateContent` bodies: SSE (`?alt=sse`, `data: {json}\\r\\n\\r\\n` as Google
sends) or, without `alt=sse`, one JSON array written element by element."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from simulator.control import Directives


class GeminiStream:
    def __init__(self, request: web.Request, delay_ms: float, sse: bool) -> None:
        self._request = request
        self._delay_s = delay_ms / 1000.0
        self._sse = sse
        self._sent = 0
        content_type = "text/event-stream" if sse else "application/json; charset=UTF-8"
        self.response = web.StreamResponse(
            status=200, headers={"content-type": content_type, "cache-control": "no-cache"}
        )

    @classmethod
    async def open(
        cls, request: web.Request, directives: Directives, default_delay_ms: float, sse: bool
    ) -> GeminiStream:
        delay = default_delay_ms if directives.delay_ms is None else directives.delay_ms
        stream = cls(request, delay, sse)
        await stream.response.prepare(request)
        return stream

    def _frame(self, data: Any) -> bytes:
        payload = orjson.dumps(data)
        if self._sse:
            return b"data: " + payload + b"\r\n\r\n"
        return (b"[" if self._sent == 0 else b"\r\n,") + payload

    async def send(self, data: Any) -> None:
        if self._sent and self._delay_s > 0:
            await asyncio.sleep(self._delay_s)
        await self.response.write(self._frame(data))
        self._sent += 1

    async def finish(self) -> web.StreamResponse:
        if not self._sse:
            await self.response.write(b"]" if self._sent else b"[]")
        await self.response.write_eof()
        return self.response

    def abort(self) -> web.StreamResponse:
        """Drop the connection mid-body (no final chunk, no closing bracket)."""
        transport = self._request.transport
        if transport is not None:
            transport.abort()
        return self.response
