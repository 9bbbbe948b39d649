"""Runs Lua scripts over one pipelined Redis connection, for the proxy's hot path.

redis-py checks a connection out of its pool, health-checks it and arms a
timeout for every command; on the proxy's two scripts per request that was a
third of its CPU. Here concurrent callers share one connection: the commands
issued during one turn of the event loop go out in one write, and replies,
which Redis returns in order, are parsed (hiredis) straight from the socket
callback. A lost connection fails every waiting call with redis-py's
ConnectionError (the proxy answers 503) and the next call reconnects; a
watchdog aborts a connection whose oldest reply is late by `timeout`.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import time
from collections.abc import Callable

import hiredis
from hiredis import pack_command
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError


def _pack(*parts: bytes | str) -> bytes:
    """One command in Redis's wire format (RESP), packed by hiredis in C."""
    return pack_command(parts)


class LuaScript:
    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


class _Connection(asyncio.Protocol):
    """One Redis connection: commands written in batches, replies matched in order."""

    def __init__(self, on_lost: Callable[[_Connection], None]) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending: collections.deque[tuple[asyncio.Future, float]] = collections.deque()
        self._on_lost = on_lost
        self._parser = hiredis.Reader()
        self._outbox: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def call(self, command: bytes) -> asyncio.Future:
        future = self._loop.create_future()
        if self.transport is None or self.transport.is_closing():
            future.set_exception(RedisConnectionError("connection to Redis lost"))
            return future
        self.pending.append((future, time.monotonic()))
        self._outbox.append(command)
        if len(self._outbox) == 1:
            self._loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        data = b"".join(self._outbox)
        self._outbox.clear()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._parser.feed(data)
        try:
            while (reply := self._parser.gets()) is not False:
                future, _ = self.pending.popleft()
                if not future.done():
                    future.set_result(reply)
        except (IndexError, hiredis.ProtocolError):  # a reply nobody asked for
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_lost(self)
        while self.pending:
            future, _ = self.pending.popleft()
            if not future.done():
                future.set_exception(RedisConnectionError("connection to Redis lost"))


class ScriptRunner:
    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self._options = parse_url(url)
        self._timeout = timeout
        self._conn: _Connection | None = None
        self._connecting = asyncio.Lock()
        self._watchdog: asyncio.Task | None = None

    async def run(self, script: LuaScript, keys: list[str], args: list[str]) -> object:
        command = _pack("EVALSHA", script.sha, str(len(keys)), *keys, *args)
        try:
            return await self._call(command)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self._call(_pack("SCRIPT", "LOAD", script.source))
        return await self._call(command)

    async def run_asking(self, script: LuaScript, keys: list[str], args: list[str]) -> object:
        """`run` preceded by ASKING on the same connection, in the same write (a
        Redis Cluster node importing the slot then serves it: an ASK redirection)."""
        command = _pack("EVALSHA", script.sha, str(len(keys)), *keys, *args)
        conn = self._conn or await self._connect()
        asking, reply = conn.call(_pack("ASKING")), conn.call(command)
        try:
            await asking
        finally:
            result = await reply
        if isinstance(result, hiredis.ReplyError):
            if str(result).startswith("NOSCRIPT"):
                await self._call(_pack("SCRIPT", "LOAD", script.source))
                return await self.run_asking(script, keys, args)
            raise ResponseError(str(result))
        return result

    async def command(self, *parts: str) -> object:
        """Any other command, on the same connection (CLUSTER SLOTS, for one)."""
        return await self._call(_pack(*parts))

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._conn is not None:
            self._conn.abort()
            self._conn = None

    async def _call(self, command: bytes) -> object:
        return await self._send(self._conn or await self._connect(), command)

    @staticmethod
    async def _send(conn: _Connection, command: bytes) -> object:
        reply = await conn.call(command)
        if isinstance(reply, hiredis.ReplyError):
            raise ResponseError(str(reply))
        return reply

    async def _connect(self) -> _Connection:
        async with self._connecting:
            if self._conn is not None:
                return self._conn
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(self._timeout):
                    if "path" in self._options:
                        _, conn = await loop.create_unix_connection(
                            lambda: _Connection(self._lost), self._options["path"]
                        )
                    else:
                        _, conn = await loop.create_connection(
                            lambda: _Connection(self._lost),
                            self._options.get("host", "localhost"),
                            self._options.get("port", 6379),
                        )
                    try:
                        await self._prepare(conn)
                    except BaseException:
                        conn.abort()
                        raise
            except (OSError, TimeoutError) as exc:
                raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
            if self._watchdog is None or self._watchdog.done():
                self._watchdog = asyncio.create_task(self._watch())
            self._conn = conn  # only now may other callers write on it
            return conn

    async def _prepare(self, conn: _Connection) -> None:
        if self._options.get("password"):
            user = self._options.get("username")
            await self._send(
                conn, _pack("AUTH", *([user] if user else []), self._options["password"])
            )
        if self._options.get("db"):
            await self._send(conn, _pack("SELECT", str(self._options["db"])))

    def _lost(self, conn: _Connection) -> None:
        if self._conn is conn:
            self._conn = None

    async def _watch(self) -> None:
        """Abort a connection whose oldest reply is late by `timeout`."""
        while True:
            await asyncio.sleep(min(1.0, self._timeout))
            conn = self._conn
            if conn is not None and conn.pending:
                if time.monotonic() - conn.pending[0][1] > self._timeout:
                    conn.abort()
