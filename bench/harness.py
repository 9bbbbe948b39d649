"""What every benchmark phase shares: the sizes, and the `Bench` state and helpers.

`Bench` holds the throwaway world, the child processes, the Postgres pool and
Redis client, the tally of admitted requests and the results dictionary; the
phases (bench/phase_*.py) are functions that take it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
from redis.asyncio import Redis

from bench import procs, world
from bench.load import Tally, Target
from bench.procs import Child, CpuSampler, Processes

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Sizes:
    latency_requests: int = 2000
    duration: float = 10.0
    streams: int = 10_000
    events: int = 100_000
    concurrency: int = 64


QUICK = Sizes(latency_requests=300, duration=3.0, streams=1000, events=5000)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def per(value: float, n: int) -> float:
    return value / n if n else float("nan")


def child_env(w: world.World, sim_url: str, code_root: Path) -> dict[str, str]:
    """Environment of the Meterway processes a benchmark starts: its database, its
    Redis, the simulator as upstream, and the code found first under `code_root`."""
    dropped = ("UPSTREAM_", "METERWAY", "DATABASE_URL", "REDIS_URL", "LOG_LEVEL", "PROXY_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    path = os.pathsep.join(p for p in (str(code_root), env.get("PYTHONPATH")) if p)
    env.update(
        PYTHONPATH=path,
        DATABASE_URL=w.database_url,
        REDIS_URL=w.redis_url,
        UPSTREAM_OPENAI_BASE_URL=f"{sim_url}/openai/v1",
        UPSTREAM_ANTHROPIC_BASE_URL=f"{sim_url}/anthropic/v1",
        UPSTREAM_GEMINI_BASE_URL=f"{sim_url}/gemini",
        METERWAY_SECRET_KEY=world.SECRET_KEY,
        LOG_LEVEL="WARNING",
    )
    return env


class Bench:
    # set by connected(), and for the full run by bench.run before the phases
    pg: asyncpg.Pool
    redis: Redis
    sim: Child
    proxy: Child
    proxy_url: str
    session: aiohttp.ClientSession

    def __init__(
        self, args: argparse.Namespace, sizes: Sizes, w: world.World, workdir: Path, stamp: str
    ) -> None:
        self.args = args
        self.sizes = sizes
        self.world = w
        self.workdir = workdir
        self.results_stamp = stamp
        self.sim_port = procs.free_port()
        self.sim_url = f"http://127.0.0.1:{self.sim_port}"
        self.procs = Processes(workdir, self._env())
        self.tally = Tally()
        self.enqueued_events = 0
        self.results: dict = {"checks": []}
        self.redis_pid: int | None = None

    def _env(self) -> dict[str, str]:
        return child_env(self.world, self.sim_url, procs.REPO_ROOT)

    @property
    def expected_records(self) -> int:
        """One usage record per admitted proxy request and per enqueued event."""
        return self.tally.billed + self.enqueued_events

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.results["checks"].append({"name": name, "ok": ok, "detail": detail})
        log(f"check {name}: {'ok' if ok else 'FAILED'} ({detail})")

    async def check_balance(self, phase: str) -> dict:
        bal = await world.balance_check(self.pg, self.redis, self.world)
        expected = self.expected_records
        self.check(
            f"{phase}: balance exact",
            bal["exact"] and bal["redis_held_units"] == 0,
            f"start - balance = {bal['charged_usd']}, sum(cost_usd) = {bal['sum_cost_usd']},"
            f" ledger sum = {bal['ledger_sum_usd']}, held units in Redis ="
            f" {bal['redis_held_units']}",
        )
        self.check(
            f"{phase}: usage records = admitted requests + enqueued events",
            bal["usage_records"] == expected,
            f"{bal['usage_records']} records, {expected} expected",
        )
        if not bal["redis_untouched"]:
            self.check(
                f"{phase}: nothing else touched the Redis db",
                False,
                f"{self.world.redis_url} was flushed by another process during the run:"
                " events, holds and balances were lost, so the numbers above are not valid;"
                " pass --redis with a database nobody else uses",
            )
        return bal

    # --- connections and processes ---------------------------------------------------

    @contextlib.asynccontextmanager
    async def connected(self) -> AsyncIterator[None]:
        """The Postgres pool and the Redis client, open for the whole run."""
        self.pg = await asyncpg.create_pool(self.world.database_url, min_size=1, max_size=4)
        self.redis = Redis.from_url(self.world.redis_url)
        try:
            self.redis_pid = await self._redis_pid()
            yield
        finally:
            await self.redis.aclose()
            await self.pg.close()

    async def _redis_pid(self) -> int | None:
        with contextlib.suppress(Exception):
            pid = int((await self.redis.info("server"))["process_id"])
            if procs.comm_of(pid).startswith("redis"):
                return pid
        return None

    async def start_proxy(self, name: str) -> tuple[Child, str]:
        port = procs.free_port()
        child = self.procs.meterway(name, "serve", "--port", str(port))
        url = f"http://127.0.0.1:{port}"
        await procs.wait_http(f"{url}/healthz", child)
        return child, url

    def start_worker(self) -> Child:
        return self.procs.meterway("worker", "worker")

    def sampler(self, **pids: list[int]) -> CpuSampler:
        named = dict(pids)
        if self.redis_pid:
            named["redis"] = [self.redis_pid]
        return CpuSampler(pids=named, comms={"postgres": "postgres"})

    def targets(self) -> tuple[Target, Target]:
        json_type = {"Content-Type": "application/json"}
        direct = Target(
            "direct",
            f"{self.sim_url}/openai/v1/chat/completions",
            {"Authorization": "Bearer sk-bench-direct", **json_type},
        )
        proxy = Target(
            "proxy",
            f"{self.proxy_url}/v1/openai/chat/completions",
            {"Authorization": f"Bearer {self.world.proxy_key}", **json_type},
            billed=True,
        )
        return direct, proxy
