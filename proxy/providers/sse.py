"""Server-sent events read on the side of a relayed stream.

`StreamScanner` cuts the upstream bytes into blocks of whole events and hands
them to the adapter's scanner, which counts output deltas over a block at C
speed and looks at events one by one only when the block holds something rare
(usage, the end, an error). When the adapter needs no event hidden from the
client, bytes are forwarded as they arrive and scanned on the side; otherwise
whole events are forwarded, minus the hidden ones.
"""

from __future__ import annotations

import re

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


def _boundary(buffer: bytes, start: int) -> tuple[int, int]:
    """Index of the first blank line at or after `start` and its length, or (-1, 0)."""
    lf = buffer.find(b"\n\n", start)
    crlf = buffer.find(b"\r\n\r\n", start)
    if crlf != -1 and (lf == -1 or crlf < lf):
        return crlf, 4
    return (lf, 2) if lf != -1 else (-1, 0)


def whole_events_end(data: bytes | bytearray) -> int:
    """Where the last whole event in `data` ends (0: none is whole yet)."""
    end = data.rfind(b"\n\n")
    end = end + 2 if end != -1 else 0
    if b"\r" in data:
        crlf = data.rfind(b"\r\n\r\n")
        if crlf != -1 and crlf + 4 > end:
            end = crlf + 4
    return end


def split_events(block: bytes) -> list[bytes]:
    """The events of a block that ends with a blank line, each with its
    terminator; together they are exactly `block`."""
    if b"\r" not in block:
        parts = block.split(b"\n\n")
        last = parts.pop()  # empty, or newlines beyond the last blank line
        events = [part + b"\n\n" for part in parts]
    else:
        events = []
        start = 0
        while (found := _boundary(block, start))[0] != -1:
            index, size = found
            events.append(block[start : index + size])
            start = index + size
        last = block[start:]
    if last:
        events.append(last)
    return events


def _event_start(block: bytes, lowest: int, at: int) -> int:
    """Start of the event that holds index `at` (never before `lowest`)."""
    lf = block.rfind(b"\n\n", lowest, at)
    crlf = block.rfind(b"\r\n\r\n", lowest, at)
    return max(lowest, lf + 2 if lf != -1 else 0, crlf + 4 if crlf != -1 else 0)


class StreamScanner:
    """Base scanner: subclasses implement `on_event` (one whole event) and fill in
    the outcome.

    A subclass that also sets `rare` (byte strings found only in events that
    need a closer look: usage, the end, errors) and `count_deltas` gets the fast
    path: the output deltas of a block are counted in one pass, and only the
    events holding a rare marker go through `on_event`."""

    rare: tuple[bytes | re.Pattern[bytes], ...] | None = None
    # True where usage is only ever sent once, whole (so it is final even if the
    # stream's end marker never came); False where it is a running count
    usage_arrives_last = False

    def __init__(self, *, filtering: bool = False) -> None:
        self.filtering = filtering
        self.usage: TokenUsage | None = None
        self.deltas = 0
        self.complete = False
        self.error_event = False
        self.response_id: str | None = None  # an id later requests may refer to
        self._rest = bytearray()

    def on_event(self, event: bytes) -> bool:
        """Look at one whole event (with its terminator); False hides it."""
        raise NotImplementedError

    def count_deltas(self, events: bytes) -> int:
        """Output deltas among whole events that hold no rare marker."""
        raise NotImplementedError

    def scan(self, block: bytes) -> bytes:
        """Look at a block of whole events; return those to forward."""
        if self.rare is None:
            return self.scan_events(block)
        pieces: list[bytes] = []
        hidden = False
        pos = 0
        while (at := self._next_rare(block, pos)) != -1:
            start = _event_start(block, pos, at)
            index, size = _boundary(block, at)
            end = index + size if index != -1 else len(block)
            if start > pos:
                self.deltas += self.count_deltas(block[pos:start])
            if self.on_event(block[start:end]):
                pieces.append(block[pos:end])
            else:
                pieces.append(block[pos:start])
                hidden = True
            pos = end
        if pos < len(block):
            rest = block[pos:] if pos else block
            self.deltas += self.count_deltas(rest)
            pieces.append(rest)
        return b"".join(pieces) if hidden else block

    def _next_rare(self, block: bytes, pos: int) -> int:
        found = -1
        for marker in self.rare:
            if isinstance(marker, bytes):
                at = block.find(marker, pos)
            else:
                match = marker.search(block, pos)
                at = match.start() if match else -1
            if at != -1 and (found == -1 or at < found):
                found = at
        return found

    def scan_events(self, block: bytes) -> bytes:
        events = split_events(block)
        kept = [event for event in events if self.on_event(event)]
        return block if len(kept) == len(events) else b"".join(kept)

    def feed(self, chunk: bytes) -> bytes:
        """Take upstream bytes; return the bytes to send to the client now:
        the chunk itself, or, when filtering, the whole events kept so far."""
        if self._rest:
            searched = max(len(self._rest) - 3, 0)  # a blank line may straddle the cut
            self._rest += chunk
            if self._rest.find(b"\n\n", searched) == -1 and (
                self._rest.find(b"\r\n\r\n", searched) == -1
            ):  # still no whole event: no copy, no rescan
                return b"" if self.filtering else chunk
            data = bytes(self._rest)
            self._rest.clear()
        else:
            data = chunk
        end = whole_events_end(data)
        if end != len(data):
            self._rest += data[end:]
            data = data[:end]
        kept = self.scan(data) if data else b""
        return kept if self.filtering else chunk

    def finish(self) -> bytes:
        """End of upstream: a trailing partial event is passed on as it is."""
        rest = bytes(self._rest)
        self._rest.clear()
        keep = self.on_event(rest) if rest.strip() else True
        return rest if self.filtering and keep else b""
