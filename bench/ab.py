"""A/B: the proxy's CPU per request, this working tree against a git revision.

    python -m bench.ab [--against REV] [--rounds N] [--duration S]

Both proxies run side by side against one upstream simulator, one throwaway
database and Redis db 11 (flushed). Load alternates between them in short
rounds (which one goes first alternates too), so a machine whose speed drifts,
as shared cloud cores do, weighs on both alike. It prints the median CPU ms per
request of each proxy, non-streaming and 20-chunk streams, and their ratio.
No worker runs: pending charges just accumulate on the bench user's credit.
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

from bench import load, procs, world
from bench.harness import child_env
from bench.load import BODY, STREAM_BODY, Tally, Target
from bench.procs import CpuSampler, Processes

KINDS = (
    ("non-streaming", BODY, False, {}),
    ("stream, 20 chunks", STREAM_BODY, True, {"x-sim-chunks": "20"}),
)


def log(message: str) -> None:
    print(f"[ab] {message}", file=sys.stderr, flush=True)


async def start_proxy(processes: Processes, name: str, env: dict[str, str]) -> tuple[int, str]:
    port = procs.free_port()
    processes.base_env = env
    child = processes.meterway(name, "serve", "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    await procs.wait_http(f"{url}/healthz", child)
    return child.pid, url


async def cpu_per_request(
    session, target: Target, body: bytes, stream: bool, pid: int, args: argparse.Namespace
) -> float:
    tally = Tally()
    await load.closed_loop(
        session, target, body, stream, tally, concurrency=args.concurrency, duration=0.5
    )
    sampler = CpuSampler(pids={"proxy": [pid]})
    before = sampler.snapshot()
    run = await load.closed_loop(
        session, target, body, stream, tally, concurrency=args.concurrency, duration=args.duration
    )
    if run.errors:
        raise RuntimeError(f"{target.name}: {run.errors} errors: {run.error_samples}")
    return CpuSampler.diff_ms(before, sampler.snapshot())["proxy"] / run.requests


async def profile(
    processes: Processes,
    session,
    target: Target,
    body: bytes,
    stream: bool,
    pid: int,
    raw: Path,
    args: argparse.Namespace,
) -> None:
    """py-spy (raw collapsed stacks) on one proxy during an extra, unmeasured run."""
    raw.parent.mkdir(parents=True, exist_ok=True)
    duration = max(3, int(args.duration))
    argv = ["py-spy", "record", "--format", "raw", "--rate", "250", "--pid", str(pid)]
    spy = processes.spawn("py-spy", [*argv, "--duration", str(duration), "--output", str(raw)])
    await asyncio.sleep(0.5)
    await load.closed_loop(
        session, target, body, stream, Tally(), concurrency=args.concurrency, duration=duration + 1
    )
    for _ in range(100):
        if not spy.alive():
            break
        await asyncio.sleep(0.1)
    processes.stop(spy)
    log(f"profile written to {raw}")


async def compare(args: argparse.Namespace, old_root: Path, workdir: Path) -> dict:
    w = await world.create_world(args.pg, args.redis)
    sim_port = procs.free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    processes = Processes(workdir, child_env(w, sim_url, procs.REPO_ROOT))
    try:
        sim = processes.meterway("simulator", "mock-upstream", "--port", str(sim_port))
        await procs.wait_http(f"{sim_url}/healthz", sim)
        new_pid, new_url = await start_proxy(processes, "new", processes.base_env)
        old_pid, old_url = await start_proxy(processes, "old", child_env(w, sim_url, old_root))
        auth = {"Authorization": f"Bearer {w.proxy_key}", "Content-Type": "application/json"}
        results: dict = {}
        async with load.new_session() as session:
            for kind, body, stream, extra in KINDS:
                runs: dict[str, list[float]] = {"new": [], "old": []}
                sides = [("new", new_pid, new_url), ("old", old_pid, old_url)]
                for round_no in range(args.rounds):
                    for name, pid, url in sides if round_no % 2 == 0 else sides[::-1]:
                        target = Target(
                            name, f"{url}/v1/openai/chat/completions", {**auth, **extra}
                        )
                        runs[name].append(
                            await cpu_per_request(session, target, body, stream, pid, args)
                        )
                    new, old = runs["new"][-1], runs["old"][-1]
                    log(f"{kind} round {round_no + 1}: new {new:.3f} ms, old {old:.3f} ms")
                results[kind] = runs
                if args.profile:
                    target = Target(
                        "new", f"{new_url}/v1/openai/chat/completions", {**auth, **extra}
                    )
                    raw = Path(args.profile) / f"{'stream' if stream else 'nonstream'}.txt"
                    await profile(processes, session, target, body, stream, new_pid, raw, args)
        return results
    finally:
        processes.stop_all()
        with contextlib.suppress(Exception):
            await world.drop_world(w)


def report(results: dict, rev: str) -> str:
    lines = [
        f"| proxy CPU ms/request (median of rounds) | working tree | {rev} | ratio |",
        "|---|---|---|---|",
    ]
    for kind, runs in results.items():
        new, old = statistics.median(runs["new"]), statistics.median(runs["old"])
        lines.append(f"| {kind} | {new:.3f} | {old:.3f} | {new / old:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n")[0])
    p.add_argument("--against", default="HEAD", help="git revision to compare with (HEAD)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--duration", type=float, default=3.0, help="seconds per measured run")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--profile", metavar="DIR", help="also py-spy the working tree's proxy")
    p.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/11")
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="meterway-ab-"))
    try:
        with procs.revision_tree(args.against, workdir) as old_root:
            results = asyncio.run(compare(args, old_root, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(report(results, args.against))
    return 0


if __name__ == "__main__":
    sys.exit(main())
