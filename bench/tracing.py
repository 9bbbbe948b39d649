"""The proxy's CPU per request with OpenTelemetry tracing on against off.

    python -m bench.tracing [--rounds N] [--duration S] [--ratio R]

Two proxies of this working tree run side by side, as in `bench.ab`: one
without `OTEL_EXPORTER_OTLP_ENDPOINT`, one exporting every span (OTLP/HTTP,
batched by the SDK's background thread, whose CPU is the proxy process's too)
to a local collector sink run by this script, which only counts what it
receives. With `--ratio R` a third proxy samples a fraction R of the traces
(`OTEL_TRACES_SAMPLER=traceidratio`). Load alternates between them in short
rounds; it prints the median CPU ms per request of each and the ratio to off.
Throwaway database, Redis db 11 (flushed), no worker.
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

from aiohttp import web

from bench import load, procs, world
from bench.ab import KINDS, cpu_per_request, log, start_proxy
from bench.harness import child_env
from bench.load import Target
from bench.procs import Processes


class Sink:
    """Accepts OTLP/HTTP trace exports; counts requests and bytes."""

    def __init__(self) -> None:
        self.posts = 0
        self.bytes = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def receive(self, request: web.Request) -> web.Response:
        self.bytes += len(await request.read())
        self.posts += 1
        return web.Response(content_type="application/x-protobuf", body=b"")

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", self.receive)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        port = procs.free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"


async def compare(args: argparse.Namespace, workdir: Path) -> tuple[dict, Sink]:
    w = await world.create_world(args.pg, args.redis)
    sim_port = procs.free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    base = child_env(w, sim_url, procs.REPO_ROOT)
    base = {k: v for k, v in base.items() if not k.startswith("OTEL_")}
    processes = Processes(workdir, base)
    sink = Sink()
    await sink.start()
    on = {**base, "OTEL_EXPORTER_OTLP_ENDPOINT": sink.url, "OTEL_BSP_SCHEDULE_DELAY": "1000"}
    variants = {"off": base, "on": on}
    if args.ratio is not None:
        variants[f"sampled {args.ratio:g}"] = {
            **on,
            "OTEL_TRACES_SAMPLER": "traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": str(args.ratio),
        }
    try:
        sim = processes.meterway("simulator", "mock-upstream", "--port", str(sim_port))
        await procs.wait_http(f"{sim_url}/healthz", sim)
        sides = []
        for name, env in variants.items():
            pid, url = await start_proxy(processes, name.replace(" ", "-"), env)
            sides.append((name, pid, url))
        auth = {"Authorization": f"Bearer {w.proxy_key}", "Content-Type": "application/json"}
        results: dict = {}
        async with load.new_session() as session:
            for kind, body, stream, extra in KINDS:
                runs: dict[str, list[float]] = {name: [] for name, _, _ in sides}
                for round_no in range(args.rounds):
                    order = sides if round_no % 2 == 0 else sides[::-1]
                    for name, pid, url in order:
                        target = Target(
                            name, f"{url}/v1/openai/chat/completions", {**auth, **extra}
                        )
                        runs[name].append(
                            await cpu_per_request(session, target, body, stream, pid, args)
                        )
                    last = ", ".join(f"{n} {v[-1]:.3f} ms" for n, v in runs.items())
                    log(f"{kind} round {round_no + 1}: {last}")
                results[kind] = runs
        await asyncio.sleep(1.5)  # the last export
        return results, sink
    finally:
        processes.stop_all()
        await sink.runner.cleanup()
        with contextlib.suppress(Exception):
            await world.drop_world(w)


def report(results: dict, sink: Sink) -> str:
    names = list(next(iter(results.values())))
    lines = [
        "| proxy CPU ms/request (median of rounds) | "
        + " | ".join(f"tracing {n}" for n in names)
        + " | "
        + " | ".join(f"{n} / off" for n in names[1:])
        + " |",
        "|" + "---|" * (1 + 2 * len(names) - 1),
    ]
    for kind, runs in results.items():
        medians = [statistics.median(runs[n]) for n in names]
        ratios = [m / medians[0] for m in medians[1:]]
        lines.append(
            f"| {kind} | "
            + " | ".join(f"{m:.3f}" for m in medians)
            + " | "
            + " | ".join(f"{r:.2f}" for r in ratios)
            + " |"
        )
    lines.append(f"\nsink received {sink.posts} exports, {sink.bytes} bytes")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tracing", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--duration", type=float, default=3.0, help="seconds per measured run")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--ratio", type=float, help="also a proxy sampling this fraction of traces")
    p.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/11")
    args = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="meterway-tracing-"))
    try:
        results, sink = asyncio.run(compare(args, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if not sink.posts:
        log("the sink received nothing: tracing was not on")
        return 1
    print(report(results, sink))
    return 0


if __name__ == "__main__":
    sys.exit(main())
