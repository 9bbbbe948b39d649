"""A/B in instructions: the proxy's instructions per request under callgrind,
this working tree against a git revision.

    python -m bench.instructions [--against REV] [--requests N]

CPU time on shared cloud cores drifts by 10-20 % within minutes, so a change of
a few per cent hides in `bench.ab`'s noise. Valgrind's callgrind counts the
instructions a process executes instead: the same code, inputs and environment
give the same count whatever else the machine does. Each proxy runs under
callgrind with instrumentation off while it starts; after a warm-up it is
switched on for exactly N requests (non-streaming, then 20-chunk streams),
switched off, and the count read; then the count of as long a time idle (the
periodic refreshes, which a process slowed down by callgrind runs more often
per request) is taken off. Both sides get the same requests, one at a
time in a few parallel clients, against one simulator, database and Redis db 11
(flushed). It is slow (callgrind runs Python about 50x slower), so N is small;
the count per request is still exact to well under 1 %.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import load, procs, world
from bench.harness import child_env
from bench.load import BODY, STREAM_BODY, Tally, Target
from bench.procs import Processes

KINDS = (
    ("non-streaming", BODY, False, {}),
    ("stream, 20 chunks", STREAM_BODY, True, {"x-sim-chunks": "20"}),
)
_EVENTS = re.compile(r"^totals:\s*(\d+)", re.MULTILINE)


def log(message: str) -> None:
    print(f"[instructions] {message}", file=sys.stderr, flush=True)


def _control(pid: int, *args: str) -> str:
    done = subprocess.run(
        ["callgrind_control", *args, str(pid)], capture_output=True, text=True, timeout=120
    )
    if "OK" not in done.stdout:
        said = f"{done.stdout.strip()} {done.stderr.strip()}"
        log(f"callgrind_control {' '.join(args)} {pid}: {said}")
    return done.stdout


def _instructions(out_dir: Path, pid: int) -> int:
    """The sum over every dump of one callgrind process (each dump counts what
    ran since the previous one)."""
    total = 0
    for dump in out_dir.glob(f"callgrind.out.{pid}*"):
        match = _EVENTS.search(dump.read_text(errors="replace"))
        if match:
            total += int(match.group(1))
    return total


async def start_proxy(processes: Processes, name: str, env: dict[str, str], out: Path) -> tuple:
    port = procs.free_port()
    out.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (before the child starts)
    argv = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}/callgrind.out.%p",
        sys.executable,
        "-c",
        procs._METERWAY_MAIN,
        "serve",
        "--port",
        str(port),
    ]
    child = processes.spawn(name, argv, env)
    url = f"http://127.0.0.1:{port}"
    await procs.wait_http(f"{url}/healthz", child, timeout=300)
    return child, url


def _measure_on(out: Path, pid: int) -> None:
    for old in out.glob(f"callgrind.out.{pid}*"):
        old.unlink()
    _control(pid, "--zero")
    _control(pid, "--instr=on")


async def _measure_off(out: Path, pid: int, name: str) -> int:
    _control(pid, "--instr=off")
    _control(pid, "--dump")
    for _ in range(100):
        instructions = _instructions(out, pid)
        if instructions:
            return instructions
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{name}: no callgrind dump in {out}")


async def count(session, child, out: Path, target: Target, body, stream, args) -> float:
    """Instructions per request for `args.requests` requests of one kind, less
    what the process does idle (its periodic refreshes) in as long a time."""
    loop = asyncio.get_running_loop()
    await load.closed_loop(
        session, target, body, stream, Tally(), concurrency=args.concurrency, duration=3600,
        max_requests=args.warmup,
    )  # fmt: skip
    _measure_on(out, child.pid)
    started = loop.time()
    run = await load.closed_loop(
        session, target, body, stream, Tally(), concurrency=args.concurrency, duration=3600,
        max_requests=args.requests,
    )  # fmt: skip
    took = loop.time() - started
    busy = await _measure_off(out, child.pid, target.name)
    if run.errors:
        raise RuntimeError(f"{target.name}: {run.errors} errors: {run.error_samples}")
    _measure_on(out, child.pid)
    await asyncio.sleep(took)
    idle = await _measure_off(out, child.pid, target.name)
    return (busy - idle) / run.requests


async def compare(args: argparse.Namespace, old_root: Path, workdir: Path) -> dict:
    w = await world.create_world(args.pg, args.redis)
    sim_port = procs.free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    processes = Processes(workdir, child_env(w, sim_url, procs.REPO_ROOT))
    try:
        sim = processes.meterway("simulator", "mock-upstream", "--port", str(sim_port))
        await procs.wait_http(f"{sim_url}/healthz", sim)
        sides = {}
        for name, root in (("new", procs.REPO_ROOT), ("old", old_root)):
            out = workdir / f"cg-{name}"
            child, url = await start_proxy(processes, name, child_env(w, sim_url, root), out)
            sides[name] = (child, url, out)
        auth = {"Authorization": f"Bearer {w.proxy_key}", "Content-Type": "application/json"}
        results: dict = {}
        async with load.new_session() as session:
            for kind, body, stream, extra in KINDS:
                results[kind] = {}
                for name, (child, url, out) in sides.items():
                    target = Target(name, f"{url}/v1/openai/chat/completions", {**auth, **extra})
                    per = await count(session, child, out, target, body, stream, args)
                    results[kind][name] = per
                    log(f"{kind}: {name} {per:,.0f} instructions per request")
        return results
    finally:
        processes.stop_all()
        with contextlib.suppress(Exception):
            await world.drop_world(w)


def report(results: dict, rev: str) -> str:
    lines = [
        f"| proxy instructions per request (callgrind) | working tree | {rev} | ratio |",
        "|---|---|---|---|",
    ]
    for kind, sides in results.items():
        new, old = sides["new"], sides["old"]
        lines.append(f"| {kind} | {new:,.0f} | {old:,.0f} | {new / old:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.instructions", description=__doc__.split("\n")[0]
    )
    p.add_argument("--against", default="HEAD", help="git revision to compare with (HEAD)")
    p.add_argument("--requests", type=int, default=400, help="measured requests per kind")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--keep", action="store_true", help="keep the work directory (dumps, logs)")
    p.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/11")
    args = p.parse_args(argv)
    if not shutil.which("valgrind"):
        p.error("valgrind is not installed (apt-get install valgrind)")
    workdir = Path(tempfile.mkdtemp(prefix="meterway-instr-"))
    try:
        with procs.revision_tree(args.against, workdir) as old_root:
            results = asyncio.run(compare(args, old_root, workdir))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(report(results, args.against))
    return 0


if __name__ == "__main__":
    sys.exit(main())
