"""Real Meterway processes for fault tests: a private Redis server, proxy and
worker subprocesses, and a TCP relay to Postgres that can be cut.

Everything listens on loopback ports picked at random, and every process is
stopped when the test ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
from dataclasses import dataclass, field

import aiohttp

from tests.util import SECRET_KEY, free_port


async def wait_http(url: str, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{url} did not come up")
            await asyncio.sleep(0.1)


class RedisServer:
    """A throwaway redis-server that a test may stop, restart or flush."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = await asyncio.create_subprocess_exec(
            binary,
            "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(100):
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            await asyncio.sleep(0.05)
        raise AssertionError("redis-server did not start")

    async def stop(self) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


class PgRelay:
    """A TCP relay in front of Postgres; `cut()` drops every connection and
    refuses new ones until `restore()`."""

    def __init__(self, target_port: int = 5432) -> None:
        self.port = free_port()
        self.target_port = target_port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def restore(self) -> None:
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port)

    async def cut(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))
        self._writers -= {writer, up_writer}


@dataclass
class Stack:
    """Proxy and worker processes sharing one database, Redis and upstream."""

    database_url: str
    redis_url: str
    upstream_base: str
    catalog: str
    procs: list[asyncio.subprocess.Process] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)  # for every process

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("UPSTREAM_", "METERWAY"))}
        env.update(
            DATABASE_URL=self.database_url,
            REDIS_URL=self.redis_url,
            UPSTREAM_OPENAI_BASE_URL=f"{self.upstream_base}/openai/v1",
            UPSTREAM_ANTHROPIC_BASE_URL=f"{self.upstream_base}/anthropic/v1",
            UPSTREAM_GEMINI_BASE_URL=f"{self.upstream_base}/gemini",
            MODEL_CATALOG=self.catalog,
            METERWAY_SECRET_KEY=SECRET_KEY,
            SETTLE_JOB_TIMEOUT="2",
            SETTLE_CLAIM_IDLE_SECONDS="2",
            LOG_LEVEL="WARNING",
            SHUTDOWN_DRAIN_SECONDS="0",  # no load balancer to move away: stop at once
        )
        env.update(self.extra_env)
        env.update(extra)
        return env

    async def _spawn(self, *args: str, **extra: str) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import sys; from meterway.cli import main; sys.exit(main())",
            *args,
            env=self.env(**extra),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        self.procs.append(proc)
        return proc

    async def proxy(self, **extra: str) -> tuple[asyncio.subprocess.Process, str]:
        port = free_port()
        proc = await self._spawn("serve", "--port", str(port), **extra)
        url = f"http://127.0.0.1:{port}"
        await wait_http(f"{url}/healthz")
        return proc, url

    async def worker(self, **extra: str) -> asyncio.subprocess.Process:
        return await self._spawn("worker", **extra)

    async def reconcile(self) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import sys; from meterway.cli import main; sys.exit(main())",
            "reconcile",
            env=self.env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        return proc.returncode, out.decode()

    @staticmethod
    async def kill(proc: asyncio.subprocess.Process, sig: int = signal.SIGKILL) -> None:
        if proc.returncode is None:
            proc.send_signal(sig)
            await proc.wait()

    async def stop_all(self) -> None:
        for proc in self.procs:
            await self.kill(proc, signal.SIGTERM if proc.returncode is None else signal.SIGKILL)
