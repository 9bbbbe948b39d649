"""A lean HTTP/1.1 client for the relay: POST a body, get the answer as it comes.

aiohttp's client is general (cookies, redirects, proxies, multipart, its own
timeouts and tracing) and cost the proxy about a fifth of its CPU per request.
The relay needs one thing: POST a ready body to a known provider over a
keep-alive connection and read the answer, streaming or not (and, off the hot
path, a bodiless GET: the provider-key probe). This does that and nothing
else: no redirects, no cookies, no compression (the proxy never asks for it),
TLS through the standard `ssl` module.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import time
from typing import NamedTuple
from urllib.parse import urlsplit

from proxy.upstream.connection import UpstreamConnection, UpstreamResponse
from proxy.upstream.errors import ConnectFailed, ConnectionBroken, ConnectTimeout


class Origin(NamedTuple):
    scheme: str
    host: str
    port: int


class Target(NamedTuple):
    """A parsed URL: where to connect and what to put in the request line."""

    origin: Origin
    path: str
    host_header: str


@functools.lru_cache(maxsize=64)
def parse_target(url: str) -> Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    default_port = 443 if parts.scheme == "https" else 80
    port = parts.port or default_port
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == default_port else f"{shown}:{port}"
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return Target(Origin(parts.scheme, host, port), path, host_header)


def _check_header(name: str, value: str) -> None:
    if "\n" in value or "\r" in value or "\n" in name or "\r" in name or ":" in name:
        raise ValueError(f"header {name!r} would break the request")


def header_fields(headers: list[tuple[str, str]]) -> str:
    """`Name: value\r\n` per header, checked once over the block: its only line
    breaks are the separators, and no name holds a colon."""
    fields = "".join([f"{name}: {value}\r\n" for name, value in headers])
    n = len(headers)
    if (
        fields.count("\n") != n
        or fields.count("\r") != n
        or ":" in "".join([h[0] for h in headers])
    ):
        for name, value in headers:
            _check_header(name, value)  # raises, naming the header
    return fields


def request_bytes(target: Target, headers: list[tuple[str, str]] | str, body: bytes) -> bytes:
    """`headers`: (name, value) pairs, or header lines already made and checked
    (`proxy.forwarded_headers.upstream_header_block`)."""
    fields = headers if type(headers) is str else header_fields(headers)
    head = (
        f"POST {target.path} HTTP/1.1\r\nHost: {target.host_header}\r\n"
        f"Content-Length: {len(body)}\r\n{fields}\r\n"
    )
    return head.encode("utf-8", "surrogateescape") + body


def get_request_bytes(target: Target, headers: list[tuple[str, str]]) -> bytes:
    """A bodiless GET (the provider-key probe; never on the hot path)."""
    head = (
        f"GET {target.path} HTTP/1.1\r\nHost: {target.host_header}\r\n{header_fields(headers)}\r\n"
    )
    return head.encode("utf-8", "surrogateescape")


class UpstreamClient:
    """Keep-alive connections per origin, newest first; idle ones age out."""

    def __init__(
        self,
        *,
        connect_timeout: float,
        read_timeout: float,
        keepalive_timeout: float = 30.0,
        max_idle_per_origin: int = 512,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._keepalive = keepalive_timeout
        self._max_idle = max_idle_per_origin
        self._ssl = ssl_context
        self._idle: dict[Origin, list[UpstreamConnection]] = {}
        self._closed = False
        # read timeouts: one sweep over the busy connections, not a timer per request
        self._busy: set[UpstreamConnection] = set()
        self._sweep_every = min(1.0, read_timeout / 4)
        self._sweeper: asyncio.TimerHandle | None = None

    async def post(
        self, target: Target, headers: list[tuple[str, str]] | str, body: bytes
    ) -> UpstreamResponse:
        """Send the request; return once the answer's status and headers are in.
        Raises ConnectFailed/ConnectTimeout, ReadTimeout or ConnectionBroken."""
        request = request_bytes(target, headers, body)
        conn = self._idle_connection(target.origin)
        if conn is not None:
            try:
                return await self._exchange(conn, request)
            except ConnectionBroken as exc:
                if not exc.before_response:
                    raise
                # the provider closed this idle connection as we reused it
        return await self._exchange(await self._connect(target.origin), request)

    async def get(self, target: Target, headers: list[tuple[str, str]]) -> UpstreamResponse:
        """GET without a body, on the same keep-alive connections as `post` (which
        keeps its own copy of these steps: it is the hot path)."""
        request = get_request_bytes(target, headers)
        conn = self._idle_connection(target.origin)
        if conn is not None:
            try:
                return await self._exchange(conn, request)
            except ConnectionBroken as exc:
                if not exc.before_response:
                    raise
        return await self._exchange(await self._connect(target.origin), request)

    def give_back(self, conn: UpstreamConnection) -> None:
        idle = self._idle.setdefault(conn.origin, [])
        if self._closed or len(idle) >= self._max_idle:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def track(self, conn: UpstreamConnection) -> None:
        """`conn` waits for an answer: watch it for the read timeout."""
        self._busy.add(conn)
        if self._sweeper is None:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(self._sweep_every, self._sweep)

    def untrack(self, conn: UpstreamConnection) -> None:
        self._busy.discard(conn)

    def _sweep(self) -> None:
        self._sweeper = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for conn in list(self._busy):
            conn.check_timeout(now)
        self._prune_idle()
        if self._busy and not self._closed:
            self._sweeper = loop.call_later(self._sweep_every, self._sweep)

    def break_busy(self, reason: str) -> int:
        """Break every exchange in progress (the shutdown's grace limit): each
        relay sees its upstream break, and ends and bills it as a broken stream."""
        busy = list(self._busy)
        for conn in busy:
            conn._break(ConnectionBroken(reason))
        return len(busy)

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()

    async def _exchange(self, conn: UpstreamConnection, request: bytes) -> UpstreamResponse:
        waiter = conn.send(request)
        try:
            return await waiter
        except BaseException:
            conn.close()
            raise

    def _prune_idle(self) -> None:
        """Close idle connections that aged out or that the provider closed."""
        oldest_usable = time.monotonic() - self._keepalive
        for origin, idle in self._idle.items():
            keep = []
            for conn in idle:
                if not conn.closed and conn.idle_since > oldest_usable:
                    keep.append(conn)
                else:
                    conn.close()
            self._idle[origin] = keep

    def _idle_connection(self, origin: Origin) -> UpstreamConnection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        oldest_usable = time.monotonic() - self._keepalive
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.idle_since > oldest_usable:
                return conn
            conn.close()
        return None

    async def _connect(self, origin: Origin) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        secure = origin.scheme == "https"
        context = (self._ssl or _default_ssl_context()) if secure else None
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(self, origin, self._read_timeout),
                    origin.host,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if secure else None,
                )
        except TimeoutError as exc:
            raise ConnectTimeout(f"connecting to {origin.host}:{origin.port} timed out") from exc
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(f"cannot connect to {origin.host}:{origin.port}: {exc}") from exc
        return conn


@functools.cache
def _default_ssl_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    with contextlib.suppress(AttributeError):
        context.set_alpn_protocols(["http/1.1"])
    return context
