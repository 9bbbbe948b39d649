"""Summary of py-spy's raw (collapsed stack) output: self time per function and per
area, inclusive time per Meterway function."""

from __future__ import annotations

from collections import Counter

_AREAS = (
    ("proxy/", "meterway proxy code"),
    ("shared/", "meterway shared code"),
    ("aiohttp/web", "aiohttp server"),
    ("aiohttp/client", "aiohttp client"),
    ("aiohttp/connector", "aiohttp client"),
    ("aiohttp/", "aiohttp other (http parser, streams, helpers)"),
    ("multidict/", "aiohttp other (http parser, streams, helpers)"),
    ("yarl/", "yarl (URLs)"),
    ("redis/", "redis-py"),
    ("asyncio/", "asyncio in Python (tasks, timeouts, streams, selector loop)"),
    ("selectors", "asyncio in Python (tasks, timeouts, streams, selector loop)"),
    ("socket", "asyncio in Python (tasks, timeouts, streams, selector loop)"),
    ("pydantic", "pydantic"),
    ("structlog/", "structlog"),
    ("contextvars", "structlog"),
    ("orjson", "orjson"),
)


def _frame_file(frame: str) -> str:
    start = frame.rfind("(")
    return frame[start + 1 : frame.rfind(":")] if start >= 0 else frame


def _frame_name(frame: str) -> str:
    start = frame.rfind(":")
    return frame[:start] + ")" if start >= 0 else frame


def _area(frames: list[str]) -> str:
    """What a sample was doing: a socket call by peer, waiting, or a package's code."""
    leaf = frames[-1]
    func, path = leaf.split(" (", 1)[0], _frame_file(leaf)
    # asyncio's transport, or (uvloop: the C transport is invisible) its Python caller
    if "write" in func.lower() and path in _WRITERS:
        if any("redis/" in f for f in frames):
            return "send() to Redis"
        if any("client_reqrep" in f for f in frames):
            return "send() upstream"
        if any("aiohttp/web_" in f for f in frames):
            return "send() to the client"
        return "send() other"
    if leaf.startswith("_SelectorSocketTransport._read_ready"):
        return "recv()"
    if leaf.startswith("EpollSelector.select "):
        return "epoll wait"
    if func in _LOOP_ENTRIES:  # uvloop: its C loop (epoll, recv(), callbacks) shows as the caller
        return "event loop core (uvloop, C: epoll, recv(), callbacks)"
    path = _frame_file(leaf)
    return next((label for prefix, label in _AREAS if prefix in path), "other")


_LOOP_ENTRIES = ("run_app", "run_forever", "run_until_complete", "BaseEventLoop.run_forever")
_WRITERS = ("asyncio/selector_events.py", "asyncio/streams.py", "aiohttp/http_writer.py")
_ENTRY_POINTS = ("run (proxy/app.py)", "main (meterway/cli.py)", "_dispatch (meterway/cli.py)")


def summarize_profile(raw: str, top: int = 15) -> dict:
    """Self time per function and area, inclusive time per Meterway function."""
    self_time: Counter = Counter()
    areas: Counter = Counter()
    inclusive: Counter = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        self_time[_frame_name(frames[-1])] += count
        areas[_area(frames)] += count
        seen = set()
        for frame in frames:
            path = _frame_file(frame)
            if path.startswith(("proxy/", "shared/")):
                name = _frame_name(frame)
                if name not in seen and name not in _ENTRY_POINTS:
                    seen.add(name)
                    inclusive[name] += count
    if not total:
        return {"samples": 0, "areas": [], "meterway": [], "self": []}

    def share(counter: Counter, n: int = top) -> list[tuple[str, float]]:
        return [(k, 100.0 * c / total) for k, c in counter.most_common(n)]

    return {
        "samples": total,
        "areas": share(areas, 30),
        "meterway": share(inclusive),
        "self": share(self_time),
    }
