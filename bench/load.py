"""The load generator: one aiohttp ClientSession with keep-alive, bounded loops.

Every loop stops after a number of requests or a deadline, whichever comes
first, and only ever talks to loopback addresses given by the caller.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from time import perf_counter

import aiohttp
import orjson

from bench.procs import STOP, check_stop

MODEL = "gpt-4o-mini"
_MESSAGES = [{"role": "user", "content": "Say hello in one short sentence."}]
BODY = orjson.dumps({"model": MODEL, "messages": _MESSAGES})
STREAM_BODY = orjson.dumps({"model": MODEL, "messages": _MESSAGES, "stream": True})
_DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True)
class Target:
    """Where requests go. `billed`: answers with status 200 become usage records."""

    name: str
    url: str
    headers: dict[str, str]
    billed: bool = False

    def with_headers(self, **extra: str) -> Target:
        headers = {**self.headers, **{k.replace("_", "-"): v for k, v in extra.items()}}
        return Target(self.name, self.url, headers, self.billed)


@dataclass
class Tally:
    """Proxy answers that were admitted (status 200), so must be billed once each."""

    billed: int = 0


class BadAnswer(Exception):
    pass


def new_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
        timeout=aiohttp.ClientTimeout(total=60),
        auto_decompress=False,
    )


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def summarize_ms(seconds: list[float]) -> dict[str, float]:
    values = sorted(s * 1000.0 for s in seconds)
    return {
        "n": len(values),
        "p50": percentile(values, 0.50),
        "p90": percentile(values, 0.90),
        "p99": percentile(values, 0.99),
        "mean": sum(values) / len(values) if values else float("nan"),
    }


async def request_once(
    session: aiohttp.ClientSession, target: Target, body: bytes, stream: bool, tally: Tally
) -> tuple[float, float]:
    """One request; returns (time to first body byte, total time) in seconds."""
    start = perf_counter()
    first = None
    async with session.post(target.url, data=body, headers=target.headers) as resp:
        if target.billed and resp.status == 200:
            tally.billed += 1
        if stream:
            tail = b""
            async for chunk in resp.content.iter_any():
                if first is None:
                    first = perf_counter()
                tail = (tail + chunk)[-len(_DONE) :]
            data = tail
        else:
            data = await resp.read()
        end = perf_counter()
        status = resp.status
    if status != 200:
        raise BadAnswer(f"status {status}: {data[:120]!r}")
    if stream and not data.endswith(_DONE):
        raise BadAnswer(f"stream did not end with [DONE]: {data!r}")
    return (first if first is not None else end) - start, end - start


def _error_name(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text[:100]}" if text else type(exc).__name__


@dataclass
class Pairs:
    """Interleaved direct/proxy samples at concurrency 1."""

    direct_ttfb: list[float] = field(default_factory=list)
    direct_total: list[float] = field(default_factory=list)
    proxy_ttfb: list[float] = field(default_factory=list)
    proxy_total: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)


async def latency_pairs(
    session: aiohttp.ClientSession,
    direct: Target,
    proxy: Target,
    body: bytes,
    stream: bool,
    n: int,
    tally: Tally,
    *,
    warmup: int = 100,
    time_limit: float = 180.0,
) -> Pairs:
    """`n` requests to each target, one at a time, alternating which goes first."""
    pairs = Pairs()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + time_limit
    for i in range(warmup + n):
        check_stop()
        if loop.time() > deadline:
            break
        order = (
            (direct, pairs.direct_ttfb, pairs.direct_total),
            (proxy, pairs.proxy_ttfb, pairs.proxy_total),
        )
        for target, ttfbs, totals in order if i % 2 == 0 else order[::-1]:
            try:
                ttfb, total = await request_once(session, target, body, stream, tally)
            except (aiohttp.ClientError, BadAnswer, TimeoutError) as exc:
                pairs.errors[f"{target.name}: {_error_name(exc)}"] += 1
                continue
            if i >= warmup:
                ttfbs.append(ttfb)
                totals.append(total)
    return pairs


@dataclass
class RunResult:
    requests: int
    errors: int
    elapsed: float
    latencies: list[float]
    error_samples: dict[str, int]

    @property
    def rate(self) -> float:
        return self.requests / self.elapsed if self.elapsed else 0.0


async def closed_loop(
    session: aiohttp.ClientSession,
    target: Target,
    body: bytes,
    stream: bool,
    tally: Tally,
    *,
    concurrency: int,
    duration: float,
    max_requests: int = 2_000_000,
) -> RunResult:
    """`concurrency` clients each sending back to back until `duration` is over."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors: Counter = Counter()
    issued = 0
    start = loop.time()
    deadline = start + duration

    async def client() -> None:
        nonlocal issued
        while issued < max_requests and loop.time() < deadline and not STOP.requested:
            issued += 1
            try:
                _, total = await request_once(session, target, body, stream, tally)
                latencies.append(total)
            except (aiohttp.ClientError, BadAnswer, TimeoutError) as exc:
                errors[_error_name(exc)] += 1
                await asyncio.sleep(0.01)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    check_stop()
    elapsed = loop.time() - start
    return RunResult(len(latencies), sum(errors.values()), elapsed, latencies, dict(errors))


class HeldStreams:
    """Many slow streams kept open at once; each is open once its first byte came."""

    def __init__(self, session: aiohttp.ClientSession, target: Target, tally: Tally) -> None:
        self.session = session
        self.target = target
        self.tally = tally
        self.responses: list[aiohttp.ClientResponse] = []
        self.errors: Counter = Counter()
        self.open_seconds = 0.0

    async def _open_one(self, sem: asyncio.Semaphore) -> None:
        async with sem:
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=None)
            try:
                resp = await self.session.post(
                    self.target.url, data=STREAM_BODY, headers=self.target.headers, timeout=timeout
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.errors[_error_name(exc)] += 1
                return
            if self.target.billed and resp.status == 200:
                self.tally.billed += 1
            try:
                if resp.status != 200:
                    raise BadAnswer(f"status {resp.status}")
                first = await asyncio.wait_for(resp.content.readany(), 60)
                if not first:
                    raise BadAnswer("stream ended before its first byte")
            except (aiohttp.ClientError, BadAnswer, TimeoutError) as exc:
                self.errors[_error_name(exc)] += 1
                resp.close()
                return
            except asyncio.CancelledError:
                resp.close()
                raise
            self.responses.append(resp)

    async def open(self, n: int, *, concurrency: int, time_limit: float) -> None:
        """Open up to `n` streams, at most `concurrency` being set up at a time."""
        sem = asyncio.Semaphore(concurrency)
        start = asyncio.get_running_loop().time()
        tasks = [asyncio.create_task(self._open_one(sem)) for _ in range(n)]
        try:
            done, pending = await asyncio.wait(tasks, timeout=time_limit)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        check_stop()
        if pending:
            self.errors["not opened within the time limit"] += len(pending)
        for task in done:
            if task.exception() is not None:
                self.errors[_error_name(task.exception())] += 1
        self.open_seconds = asyncio.get_running_loop().time() - start

    def close(self) -> None:
        for resp in self.responses:
            resp.close()
        self.responses.clear()
