"""Scale-out comparison: the proxy on one Redis vs on a 3-master Redis Cluster, and
one proxy process vs `meterway serve --workers 2`.

    python -m bench.cluster [--rounds N] [--duration S] [--concurrency N]

Three proxies run side by side against one upstream simulator and one throwaway
database: `single` (one process, Redis db 11, flushed), `cluster` (one process,
`REDIS_CLUSTER=1` on a local 3-master cluster of redis-servers started here,
no replicas) and `workers2` (`serve --workers 2` on db 11). Load alternates
between them in short rounds, as in `bench.ab`. For each it prints the median of
the rounds: requests per second at the given concurrency, proxy CPU ms per
request (all serving processes; the supervisor of `workers2` is idle) and Redis
CPU ms per request (the one server, or the three masters together), for
non-streaming requests and 20-chunk streams. No worker runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from redis.asyncio import Redis

from bench import load, procs, world
from bench.harness import child_env
from bench.load import BODY, STREAM_BODY, Tally, Target
from bench.procs import CpuSampler, Processes
from tests.cluster import RedisClusterServer

KINDS = (
    ("non-streaming", BODY, False, {}),
    ("stream, 20 chunks", STREAM_BODY, True, {"x-sim-chunks": "20"}),
)
SIDES = ("single", "cluster", "workers2")


def log(message: str) -> None:
    print(f"[cluster] {message}", file=sys.stderr, flush=True)


async def redis_pid(url: str) -> int:
    client = Redis.from_url(url)
    try:
        return int((await client.info("server"))["process_id"])
    finally:
        await client.aclose()


async def measure(session, target: Target, body, stream, pids, redis_pids, args) -> dict:
    tally = Tally()
    await load.closed_loop(
        session, target, body, stream, tally, concurrency=args.concurrency, duration=0.5
    )
    sampler = CpuSampler(pids={"proxy": pids, "redis": redis_pids})
    before = sampler.snapshot()
    run = await load.closed_loop(
        session, target, body, stream, tally, concurrency=args.concurrency, duration=args.duration
    )
    if run.errors:
        raise RuntimeError(f"{target.name}: {run.errors} errors: {run.error_samples}")
    cpu = CpuSampler.diff_ms(before, sampler.snapshot())
    return {
        "rps": run.rate,
        "proxy_ms": cpu["proxy"] / run.requests,
        "redis_ms": cpu["redis"] / run.requests,
    }


async def start(processes: Processes, name: str, *args: str, **env: str) -> tuple[list[int], str]:
    port = procs.free_port()
    child = processes.meterway(name, "serve", "--port", str(port), *args, **env)
    url = f"http://127.0.0.1:{port}"
    await procs.wait_http(f"{url}/healthz", child)
    pids = [child.pid]
    if "--workers" in args:  # the serving processes are the supervisor's children
        for _ in range(100):
            pids = procs.children_of(child.pid)
            if len(pids) >= 2:
                break
            await asyncio.sleep(0.1)
    return pids, url


async def compare(args: argparse.Namespace, workdir: Path) -> dict:
    w = await world.create_world(args.pg, args.redis)
    sim_port = procs.free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    processes = Processes(workdir, child_env(w, sim_url, procs.REPO_ROOT))
    cluster = RedisClusterServer()
    try:
        await cluster.start()
        sim = processes.meterway("simulator", "mock-upstream", "--port", str(sim_port))
        await procs.wait_http(f"{sim_url}/healthz", sim)
        sides = {
            "single": await start(processes, "single"),
            "cluster": await start(
                processes,
                "cluster",
                REDIS_URL=cluster.url,
                REDIS_CLUSTER="1",
                ARQ_REDIS_URL=args.redis,
            ),
            "workers2": await start(processes, "workers2", "--workers", "2"),
        }
        single_redis = [await redis_pid(args.redis)]
        cluster_redis = [await redis_pid(cluster.node_url(p)) for p in cluster.ports]
        auth = {"Authorization": f"Bearer {w.proxy_key}", "Content-Type": "application/json"}
        results: dict = {}
        async with load.new_session() as session:
            for kind, body, stream, extra in KINDS:
                runs: dict[str, list[dict]] = {name: [] for name in SIDES}
                for round_no in range(args.rounds):
                    order = SIDES[round_no % 3 :] + SIDES[: round_no % 3]
                    for name in order:
                        pids, url = sides[name]
                        redis_pids = cluster_redis if name == "cluster" else single_redis
                        target = Target(
                            name, f"{url}/v1/openai/chat/completions", {**auth, **extra}
                        )
                        runs[name].append(
                            await measure(session, target, body, stream, pids, redis_pids, args)
                        )
                    log(
                        f"{kind} round {round_no + 1}: "
                        + ", ".join(
                            f"{n} {runs[n][-1]['rps']:.0f}/s {runs[n][-1]['proxy_ms']:.3f} ms"
                            for n in SIDES
                        )
                    )
                results[kind] = runs
        return results
    finally:
        processes.stop_all()
        await cluster.destroy()
        with contextlib.suppress(Exception):
            await world.drop_world(w)


def report(results: dict, args: argparse.Namespace) -> str:
    lines = [
        f"c={args.concurrency}, {args.rounds} rounds of {args.duration:g} s, medians",
        "",
        "| kind | setup | requests/s | proxy CPU ms/request | Redis CPU ms/request |",
        "|---|---|---|---|---|",
    ]
    names = {
        "single": "1 process, single Redis",
        "cluster": "1 process, 3-master cluster",
        "workers2": "serve --workers 2, single Redis",
    }
    for kind, runs in results.items():
        for name in SIDES:
            rps = statistics.median(r["rps"] for r in runs[name])
            proxy = statistics.median(r["proxy_ms"] for r in runs[name])
            redis = statistics.median(r["redis_ms"] for r in runs[name])
            lines.append(f"| {kind} | {names[name]} | {rps:.0f} | {proxy:.3f} | {redis:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=3.0, help="seconds per measured run")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/11")
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="meterway-cluster-bench-"))
    try:
        results = asyncio.run(compare(args, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(report(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
