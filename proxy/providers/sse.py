"""Server-sent events read on the side of a relayed stream.

`StreamScanner` splits the upstream bytes into whole events and hands each to
the adapter's `on_event`. When the adapter needs no event hidden from the
client, bytes are forwarded as they arrive and scanned on the side; otherwise
whole events are forwarded, minus the hidden ones.
"""

from __future__ import annotations

import orjson

from shared.events import TokenUsage


def event_data(event: bytes) -> bytes:
    """The `data:` payload of one SSE event (multi-line data joined by \\n)."""
    parts = []
    for line in event.splitlines():
        if line.startswith(b"data:"):
            value = line[5:]
            parts.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(parts)


def event_json(event: bytes) -> dict | None:
    try:
        value = orjson.loads(event_data(event))
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _boundary(buffer: bytearray, start: int) -> tuple[int, int]:
    """Index of the first blank line at or after `start` and its length, or (-1, 0)."""
    lf = buffer.find(b"\n\n", start)
    crlf = buffer.find(b"\r\n\r\n", start)
    if crlf != -1 and (lf == -1 or crlf < lf):
        return crlf, 4
    return (lf, 2) if lf != -1 else (-1, 0)


class StreamScanner:
    """Base scanner: subclasses implement `on_event` and fill in the outcome."""

    def __init__(self, *, filtering: bool = False) -> None:
        self.filtering = filtering
        self.usage: TokenUsage | None = None
        self.deltas = 0
        self.complete = False
        self.error_event = False
        self._buffer = bytearray()

    def on_event(self, event: bytes) -> bool:
        """Look at one whole event (with its terminator); False hides it."""
        raise NotImplementedError

    def feed(self, chunk: bytes) -> bytes:
        """Take upstream bytes; return the bytes to send to the client now."""
        self._buffer += chunk
        out = bytearray() if self.filtering else None
        start = 0
        while True:
            index, size = _boundary(self._buffer, start)
            if index == -1:
                break
            end = index + size
            event = bytes(self._buffer[start:end])
            keep = self.on_event(event)
            if out is not None and keep:
                out += event
            start = end
        if start:
            del self._buffer[:start]
        if out is None:
            return chunk
        return bytes(out)

    def finish(self) -> bytes:
        """End of upstream: a trailing partial event is passed on as it is."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        keep = self.on_event(rest) if rest.strip() else True
        return rest if self.filtering and keep else b""
