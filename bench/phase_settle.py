"""Settlement phases: the backlog the proxy runs queued, a 100,000-event worker
backlog, and `meterway reconcile`, each with its balance checks."""

from __future__ import annotations

import asyncio
import time

from bench import procs, world
from bench.harness import Bench, log, per
from bench.procs import CpuSampler


async def settle_backlog(bench: Bench, phase: str = "single-proxy runs") -> None:
    """Start a worker, time how it settles what the proxy runs queued, stop it."""
    before_count = await world.usage_count(bench.pg)
    queued = bench.expected_records - before_count
    log(f"settling the proxy backlog of {phase} ({queued:,} events)")
    worker = bench.start_worker()
    start = time.monotonic()
    progress = await world.wait_settled(
        bench.pg,
        bench.redis,
        bench.world,
        expected_records=bench.expected_records,
        timeout=max(120.0, queued / 100),
    )
    wall = time.monotonic() - start
    bench.procs.stop(worker)
    bench.results.setdefault("proxy_backlog_settle", []).append(
        {
            "phase": phase,
            "queued": queued,
            "settled": await world.usage_count(bench.pg) - before_count,
            "complete": progress.done,
            "wall_s": wall,
            "events_per_s": progress.rate,
        }
    )
    await bench.check_balance(f"after {phase}")


async def worker_backlog(bench: Bench) -> None:
    n = bench.sizes.events
    log(f"worker: enqueueing {n:,} usage events with no worker running")
    before_count = await world.usage_count(bench.pg)
    start = time.monotonic()
    await world.enqueue_backlog(bench.redis, bench.world, n)
    enqueue_s = time.monotonic() - start
    bench.enqueued_events += n
    sampler = bench.sampler()
    before = sampler.snapshot()
    log("worker: starting one worker and timing settlement")
    worker = bench.start_worker()

    def worker_ticks() -> int:
        try:
            return procs.cpu_ticks(worker.pid)
        except OSError:
            return 0

    start = time.monotonic()
    progress = await world.wait_settled(
        bench.pg,
        bench.redis,
        bench.world,
        expected_records=bench.expected_records,
        timeout=max(120.0, n / 200),
        probe=worker_ticks,
    )
    wall = time.monotonic() - start
    cpu = CpuSampler.diff_ms(before, sampler.snapshot())
    bench.procs.stop(worker)
    settled = await world.usage_count(bench.pg) - before_count
    worker_ms = None
    counted = progress.end_count - progress.first_count
    if counted > 0:
        ticks = progress.end_probe - progress.first_probe
        worker_ms = ticks * 1000 / procs.CLK_TCK / counted
    bal = await bench.check_balance("worker backlog")
    bench.results["worker"] = {
        "events": n,
        "enqueue_s": enqueue_s,
        "enqueue_per_s": n / enqueue_s if enqueue_s else None,
        "settled": settled,
        "complete": progress.done,
        "wall_s": wall,
        "startup_s": progress.first_time - start if progress.first_time else None,
        "events_per_s": progress.rate,
        "worker_cpu_ms_per_event": worker_ms,
        "postgres_cpu_ms_per_event": per(cpu.get("postgres", 0.0), settled),
        "redis_cpu_ms_per_event": per(cpu.get("redis", 0.0), settled),
        "balance": bal,
    }
    rate = progress.rate or 0
    log(f"  settled {settled:,} in {wall:.1f} s ({rate:,.0f} events/s)")


async def reconcile(bench: Bench) -> None:
    child = bench.procs.meterway("reconcile", "reconcile")
    for _ in range(600):  # at most two minutes
        if not child.alive():
            break
        await asyncio.sleep(0.2)
    bench.procs.stop(child)
    code = child.popen.returncode
    bench.check("meterway reconcile", code == 0, child.log_tail(3).replace("\n", " / "))
