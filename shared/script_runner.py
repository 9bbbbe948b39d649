"""Runs Lua scripts over one pipelined Redis connection, for the proxy's hot path.

redis-py checks a connection out of its pool, health-checks it and arms a
timeout for every command; on the proxy's two scripts per request that was a
third of its CPU. Here concurrent callers share one connection: each call
writes its EVALSHA at once and waits for its reply, which Redis returns in
order. A lost connection fails every waiting call with redis-py's
ConnectionError (the proxy answers 503) and the next call reconnects; a
watchdog aborts a connection whose oldest reply is late by `timeout`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import time

import hiredis
from redis.asyncio.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError


def _pack(*parts: bytes | str) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part if isinstance(part, bytes) else part.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class LuaScript:
    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


class ScriptRunner:
    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self._options = parse_url(url)
        self._timeout = timeout
        self._writer: asyncio.StreamWriter | None = None
        self._pending: collections.deque[tuple[asyncio.Future, float]] = collections.deque()
        self._connecting = asyncio.Lock()
        self._tasks: list[asyncio.Task] = []

    async def run(self, script: LuaScript, keys: list[str], args: list[str]) -> object:
        command = _pack("EVALSHA", script.sha, str(len(keys)), *keys, *args)
        try:
            return await self._call(command)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self._call(_pack("SCRIPT", "LOAD", script.source))
        return await self._call(command)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._writer is not None:
            self._writer.close()
        self._fail_all("closed")

    async def _call(self, command: bytes) -> object:
        return await self._send(self._writer or await self._connect(), command)

    async def _send(self, writer: asyncio.StreamWriter, command: bytes) -> object:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((future, time.monotonic()))
        writer.write(command)
        reply = await future
        if isinstance(reply, hiredis.ReplyError):
            raise ResponseError(str(reply))
        return reply

    async def _connect(self) -> asyncio.StreamWriter:
        async with self._connecting:
            if self._writer is not None:
                return self._writer
            try:
                if "path" in self._options:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_unix_connection(self._options["path"]), self._timeout
                    )
                else:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection(
                            self._options.get("host", "localhost"), self._options.get("port", 6379)
                        ),
                        self._timeout,
                    )
            except (OSError, TimeoutError) as exc:
                raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
            self._tasks = [
                asyncio.create_task(self._read(reader, writer)),
                asyncio.create_task(self._watch(writer)),
            ]
            if self._options.get("password"):
                user = self._options.get("username")
                auth = _pack("AUTH", *([user] if user else []), self._options["password"])
                await self._send(writer, auth)
            if self._options.get("db"):
                await self._send(writer, _pack("SELECT", str(self._options["db"])))
            self._writer = writer  # only now may other callers write on it
            return writer

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = hiredis.Reader()
        try:
            while data := await reader.read(65536):
                parser.feed(data)
                while (reply := parser.gets()) is not False:
                    future, _ = self._pending.popleft()
                    if not future.done():
                        future.set_result(reply)
        except (OSError, IndexError, hiredis.ProtocolError):
            pass
        finally:
            if self._writer is writer:
                self._writer = None
            writer.close()  # also ends this connection's watchdog
            self._fail_all("connection to Redis lost")

    async def _watch(self, writer: asyncio.StreamWriter) -> None:
        while not writer.is_closing():
            await asyncio.sleep(min(1.0, self._timeout))
            if self._pending and time.monotonic() - self._pending[0][1] > self._timeout:
                with contextlib.suppress(Exception):
                    writer.transport.abort()
                return

    def _fail_all(self, reason: str) -> None:
        while self._pending:
            future, _ = self._pending.popleft()
            if not future.done():
                future.set_exception(RedisConnectionError(reason))
