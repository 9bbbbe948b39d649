"""Meterway benchmarks: `python -m bench.run [--quick] [--profile]`.

Starts the upstream simulator, a proxy and a worker as real processes against a
throwaway Postgres database and Redis db 11, then measures added latency,
throughput and CPU per request, memory per open stream, worker settlement
throughput and two proxies behind nginx. Writes bench/results/<time>.json and
bench/results/latest.md and prints the Markdown. Never asserts timings; every
process it starts is stopped when it ends, however it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path

from bench import load, meta, procs, report, world
from bench.harness import QUICK, RESULTS_DIR, Bench, Sizes, log
from bench.phase_load import latency, profile, smoke, throughput
from bench.phase_memory import memory
from bench.phase_nginx import nginx
from bench.phase_settle import reconcile, settle_backlog, worker_backlog

Phase = Callable[[Bench], Awaitable[None]]


async def run_bench(bench: Bench) -> dict:
    """Every phase in order (or, with --only worker, just the backlog), then reconcile."""
    async with bench.connected():
        if bench.args.only == "worker":  # needs neither simulator nor proxy
            await worker_backlog(bench)
        else:
            await _all_phases(bench)
        procs.check_stop()
        await reconcile(bench)
    return bench.results


async def _all_phases(bench: Bench) -> None:
    bench.sim = bench.procs.meterway("simulator", "mock-upstream", "--port", str(bench.sim_port))
    await procs.wait_http(f"{bench.sim_url}/healthz", bench.sim)
    bench.proxy, bench.proxy_url = await bench.start_proxy("proxy")
    async with load.new_session() as session:
        bench.session = session
        phases: list[Phase] = [smoke, latency, throughput]
        if bench.args.profile:
            phases.append(profile)
        phases += [memory, settle_backlog]
        if bench.args.no_nginx:
            bench.results["nginx"] = {"skipped": "--no-nginx given"}
        else:
            phases.append(nginx)
        phases.append(worker_backlog)
        for phase in phases:
            procs.check_stop()
            await phase(bench)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, about two minutes")
    p.add_argument("--latency-requests", type=int, help="requests per path at c=1")
    p.add_argument("--duration", type=float, help="seconds per throughput run")
    p.add_argument("--concurrency", type=int, help="clients in the throughput runs")
    p.add_argument("--streams", type=int, help="slow streams held open at once")
    p.add_argument("--events", type=int, help="usage events in the worker backlog")
    p.add_argument("--profile", action="store_true", help="py-spy the proxy in an extra run")
    p.add_argument("--no-uvloop", action="store_true", help="plain asyncio for the load generator")
    p.add_argument("--no-nginx", action="store_true", help="skip the two-proxies-behind-nginx run")
    p.add_argument(
        "--only",
        choices=["worker"],
        help="run only this phase (worker: the settlement backlog, then reconcile)",
    )
    p.add_argument(
        "--pg",
        default=os.environ.get(
            "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="Postgres server URL (a throwaway database is created on it)",
    )
    p.add_argument(
        "--redis",
        default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/11"),
        help="Redis database URL; the whole database is flushed",
    )
    return p.parse_args(argv)


def sizes_from(args: argparse.Namespace) -> Sizes:
    sizes = QUICK if args.quick else Sizes()
    overrides = {
        "latency_requests": args.latency_requests,
        "duration": args.duration,
        "concurrency": args.concurrency,
        "streams": args.streams,
        "events": args.events,
    }
    return Sizes(**{**asdict(sizes), **{k: v for k, v in overrides.items() if v is not None}})


async def amain(args: argparse.Namespace, sizes: Sizes, stamp: str) -> dict:
    task = asyncio.current_task()
    assert task is not None

    def stop() -> None:
        procs.STOP.requested = True
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop)
    workdir = Path(tempfile.mkdtemp(prefix="meterway-bench-"))
    w: world.World | None = None
    bench: Bench | None = None
    try:
        log(f"creating a throwaway database on {args.pg}, flushing {args.redis}")
        w = await world.create_world(args.pg, args.redis)
        bench = Bench(args, sizes, w, workdir, stamp)
        return await run_bench(bench)
    except (asyncio.CancelledError, KeyboardInterrupt):
        raise
    except BaseException:
        if bench is not None:
            for child in bench.procs.children:
                log(f"{child.name} log tail:\n{child.log_tail()}")
        raise
    finally:
        if bench is not None:
            bench.procs.stop_all()
        if w is not None:
            with contextlib.suppress(Exception):
                await world.drop_world(w)
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = sizes_from(args)
    nofile = procs.raise_fd_limit()  # before any child is spawned: they inherit it
    event_loop = "asyncio"
    if not args.no_uvloop:
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            event_loop = "uvloop"
        except ImportError:
            pass
    stamp, date = meta.now_stamp()
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    command = "python -m bench.run" + (" " + " ".join(argv or sys.argv[1:])).rstrip()
    started = time.monotonic()
    try:
        results = asyncio.run(amain(args, sizes, stamp))
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted; every process was stopped and the database dropped")
        return 130
    results["meta"] = {
        "date": date,
        "command": command.strip(),
        "machine": meta.machine(),
        "versions": meta.versions(),
        "git_commit": meta.git_commit(),
        "nofile_limit": nofile,
        "load_generator_loop": event_loop,
        "loadavg_before": " ".join(load_before),
        "duration_s": round(time.monotonic() - started, 1),
    }
    results["config"] = asdict(sizes)
    text = report.markdown(results)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{stamp}.json").write_text(json.dumps(results, indent=2, default=str))
    (RESULTS_DIR / "latest.md").write_text(text)
    print(text)
    log(f"done in {results['meta']['duration_s']:.0f} s; wrote {RESULTS_DIR / (stamp + '.json')}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
