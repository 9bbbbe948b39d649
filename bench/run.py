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
from dataclasses import asdict, dataclass
from pathlib import Path

import asyncpg
from redis.asyncio import Redis

from bench import load, procs, report, world
from bench.load import BODY, STREAM_BODY, Tally, Target
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


def _per(value: float, n: int) -> float:
    return value / n if n else float("nan")


class Bench:
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
        dropped = ("UPSTREAM_", "METERWAY", "DATABASE_URL", "REDIS_URL", "LOG_LEVEL", "PROXY_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
        path = os.pathsep.join(p for p in (str(procs.REPO_ROOT), env.get("PYTHONPATH")) if p)
        env.update(
            PYTHONPATH=path,
            DATABASE_URL=self.world.database_url,
            REDIS_URL=self.world.redis_url,
            UPSTREAM_OPENAI_BASE_URL=f"{self.sim_url}/openai/v1",
            UPSTREAM_ANTHROPIC_BASE_URL=f"{self.sim_url}/anthropic/v1",
            METERWAY_SECRET_KEY=world.SECRET_KEY,
            LOG_LEVEL="WARNING",
        )
        return env

    @property
    def expected_records(self) -> int:
        """One usage record per admitted proxy request and per enqueued event."""
        return self.tally.billed + self.enqueued_events

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.results["checks"].append({"name": name, "ok": ok, "detail": detail})
        log(f"check {name}: {'ok' if ok else 'FAILED'} ({detail})")

    # --- processes ------------------------------------------------------------------

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

    # --- the run --------------------------------------------------------------------

    async def run(self) -> dict:
        self.pg = await asyncpg.create_pool(self.world.database_url, min_size=1, max_size=4)
        self.redis = Redis.from_url(self.world.redis_url)
        try:
            self.redis_pid = await self._redis_pid()
            if self.args.only == "worker":  # needs neither simulator nor proxy
                await self.worker_backlog()
            else:
                await self._all_phases()
            procs.check_stop()
            await self.reconcile()
        finally:
            await self.redis.aclose()
            await self.pg.close()
        return self.results

    async def _all_phases(self) -> None:
        self.sim = self.procs.meterway("simulator", "mock-upstream", "--port", str(self.sim_port))
        await procs.wait_http(f"{self.sim_url}/healthz", self.sim)
        self.proxy, self.proxy_url = await self.start_proxy("proxy")
        async with load.new_session() as session:
            self.session = session
            phases = [self.smoke, self.latency, self.throughput]
            if self.args.profile:
                phases.append(self.profile)
            phases += [self.memory, self.settle_backlog]
            if self.args.no_nginx:
                self.results["nginx"] = {"skipped": "--no-nginx given"}
            else:
                phases.append(self.nginx)
            phases.append(self.worker_backlog)
            for phase in phases:
                procs.check_stop()
                await phase()

    async def _redis_pid(self) -> int | None:
        with contextlib.suppress(Exception):
            pid = int((await self.redis.info("server"))["process_id"])
            if procs.comm_of(pid).startswith("redis"):
                return pid
        return None

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

    async def smoke(self) -> None:
        """A few requests with the worker running: the whole pipeline works."""
        log("smoke test: proxy + worker, 100 requests")
        _, proxy = self.targets()
        worker = self.start_worker()
        for body, stream in ((BODY, False), (STREAM_BODY, True)):
            target = proxy.with_headers(x_sim_chunks="20") if stream else proxy
            run = await load.closed_loop(
                self.session,
                target,
                body,
                stream,
                self.tally,
                concurrency=4,
                duration=30,
                max_requests=50,
            )
            if run.errors:
                raise RuntimeError(f"smoke requests failed: {run.error_samples}")
        progress = await world.wait_settled(
            self.pg, self.redis, self.world, expected_records=self.expected_records, timeout=30
        )
        count = await world.usage_count(self.pg)
        self.check(
            "smoke: every admitted request settled once",
            progress.done and count == self.tally.billed,
            f"{count} usage records for {self.tally.billed} admitted requests",
        )
        await self.check_balance("smoke")
        self.procs.stop(worker)

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

    async def latency(self) -> None:
        n = self.sizes.latency_requests
        log(f"latency at c=1: {n} interleaved requests per path, non-streaming then streaming")
        direct, proxy = self.targets()
        sampler = self.sampler(proxy=[self.proxy.pid])
        before, billed_before = sampler.snapshot(), self.tally.billed
        plain = await load.latency_pairs(
            self.session, direct, proxy, BODY, False, n, self.tally, warmup=min(200, n)
        )
        chunks = {"x_sim_chunks": "20"}
        streamed = await load.latency_pairs(
            self.session,
            direct.with_headers(**chunks),
            proxy.with_headers(**chunks),
            STREAM_BODY,
            True,
            n,
            self.tally,
            warmup=min(200, n),
        )
        cpu = CpuSampler.diff_ms(before, sampler.snapshot())

        def compare(direct_s: list[float], proxy_s: list[float]) -> dict:
            d, p = load.summarize_ms(direct_s), load.summarize_ms(proxy_s)
            return {
                "direct": d,
                "proxy": p,
                "added_p50_ms": p["p50"] - d["p50"],
                "added_p99_ms": p["p99"] - d["p99"],
            }

        self.results["latency"] = {
            "n": n,
            "nonstream_total": compare(plain.direct_total, plain.proxy_total),
            "stream_ttfb": compare(streamed.direct_ttfb, streamed.proxy_ttfb),
            "stream_total": compare(streamed.direct_total, streamed.proxy_total),
            "proxy_cpu_ms_per_req_c1": _per(cpu["proxy"], self.tally.billed - billed_before),
            "errors": dict(plain.errors + streamed.errors),
        }

    async def _measured_run(
        self, target: Target, body: bytes, stream: bool, sampler: CpuSampler, duration: float
    ) -> dict:
        concurrency = self.sizes.concurrency
        await load.closed_loop(  # warm the connection pools at this concurrency
            self.session,
            target,
            body,
            stream,
            self.tally,
            concurrency=concurrency,
            duration=min(1.0, duration / 3),
        )
        before = sampler.snapshot()
        run = await load.closed_loop(
            self.session,
            target,
            body,
            stream,
            self.tally,
            concurrency=concurrency,
            duration=duration,
        )
        cpu = CpuSampler.diff_ms(before, sampler.snapshot())
        lat = load.summarize_ms(run.latencies)
        out = {
            "rps": run.rate,
            "requests": run.requests,
            "errors": run.errors,
            "error_samples": run.error_samples,
            "elapsed_s": run.elapsed,
            "p50_ms": lat["p50"],
            "p99_ms": lat["p99"],
            "cpu_ms": cpu,
            "machine_busy_pct": cpu["machine_busy_pct"],
        }
        for name in cpu:
            if name not in ("machine_busy_pct", "wall_s") and ":" not in name:
                out[f"{name}_cpu_ms_per_req"] = _per(cpu[name], run.requests)
        if cpu.get("proxy"):
            out["proxy_sys_pct"] = 100.0 * cpu["proxy:sys"] / cpu["proxy"]
        return out

    async def throughput(self) -> None:
        sizes = self.sizes
        log(f"throughput at c={sizes.concurrency}, {sizes.duration:g} s per run")
        direct, proxy = self.targets()
        sampler = self.sampler(proxy=[self.proxy.pid], sim=[self.sim.pid])
        out: dict = {"concurrency": sizes.concurrency, "duration_s": sizes.duration}
        for kind, body, stream, extra in (
            ("nonstream", BODY, False, {}),
            ("stream", STREAM_BODY, True, {"x_sim_chunks": "20"}),
        ):
            out[kind] = {}
            for target in (direct, proxy):
                target = target.with_headers(**extra)
                res = await self._measured_run(target, body, stream, sampler, sizes.duration)
                if target.name == "direct":  # the proxy was idle
                    res.pop("proxy_cpu_ms_per_req", None)
                    res.pop("proxy_sys_pct", None)
                out[kind][target.name] = res
                log(f"  {kind} {target.name}: {res['rps']:,.0f} req/s, {res['errors']} errors")
        out["proxy_hwm_mib"] = procs.hwm_bytes(self.proxy.pid) / report.MIB
        self.results["throughput"] = out

    async def profile(self) -> None:
        """py-spy on the proxy during an extra non-streaming run (not in the numbers)."""
        if not shutil.which("py-spy"):
            self.results["profile"] = {"samples": 0, "areas": [], "meterway": [], "self": []}
            return
        duration = max(5, int(self.sizes.duration))
        log(f"profiling the proxy with py-spy for {duration} s (non-streaming, c=64)")
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        raw = RESULTS_DIR / f"{self.results_stamp}-proxy-profile.txt"
        argv = ["py-spy", "record", "--format", "raw", "--rate", "200"]
        argv += ["--duration", str(duration), "--pid", str(self.proxy.pid), "--output", str(raw)]
        spy = self.procs.spawn("py-spy", argv)
        await asyncio.sleep(0.5)
        _, proxy = self.targets()
        await load.closed_loop(
            self.session,
            proxy,
            BODY,
            False,
            self.tally,
            concurrency=self.sizes.concurrency,
            duration=duration + 1,
        )
        for _ in range(100):
            if not spy.alive():
                break
            await asyncio.sleep(0.1)
        self.procs.stop(spy)
        text = raw.read_text() if raw.exists() else ""
        self.results["profile"] = {**report.summarize_profile(text), "raw": str(raw)}

    async def memory(self) -> None:
        requested = self.sizes.streams
        nofile = procs.raise_fd_limit()
        n = min(requested, (nofile - 512) // 2)  # the proxy needs 2 descriptors per stream
        log(f"memory: opening {n:,} slow streams through one proxy")
        _, proxy = self.targets()
        slow = proxy.with_headers(x_sim_chunks="1000", x_sim_delay_ms="1000")
        pid = self.proxy.pid
        await asyncio.sleep(1.0)
        rss_idle, fds_idle = procs.rss_bytes(pid), procs.open_fds(pid)
        held = load.HeldStreams(self.session, slow, self.tally)
        try:
            await held.open(n, concurrency=100, time_limit=max(60.0, n / 50))
            await asyncio.sleep(2.0)
            rss_open, fds_open = procs.rss_bytes(pid), procs.open_fds(pid)
            opened = len(held.responses)
            t0 = procs.cpu_ticks(pid)
            await asyncio.sleep(3.0)
            cpu_pct = 100.0 * (procs.cpu_ticks(pid) - t0) / procs.CLK_TCK / 3.0
            hwm = procs.hwm_bytes(pid)
        finally:
            held.close()
        log(
            f"  {opened:,} open, proxy RSS {rss_idle / report.MIB:.0f} ->"
            f" {rss_open / report.MIB:.0f} MiB; closing"
        )
        for _ in range(120):  # at most a minute for the proxy to let go of them
            if procs.open_fds(pid) <= fds_idle + 64:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)
        per_stream = (rss_open - rss_idle) / opened if opened else float("nan")
        note = ""
        if n < requested:
            note = (
                f"{requested:,} streams were asked for but RLIMIT_NOFILE is {nofile:,} (the hard"
                f" limit here) and the proxy needs two descriptors per open stream (client and"
                f" upstream), so {n:,} were opened; the 10,000-stream figure is projected."
            )
        self.results["memory"] = {
            "streams_requested": requested,
            "streams_open": opened,
            "open_seconds": held.open_seconds,
            "rss_idle_bytes": rss_idle,
            "rss_open_bytes": rss_open,
            "rss_per_stream_bytes": per_stream,
            "rss_for_10k_bytes": rss_idle + per_stream * 10_000,
            "rss_after_close_bytes": procs.rss_bytes(pid),
            "hwm_bytes": hwm,
            "proxy_fds_idle": fds_idle,
            "proxy_fds_open": fds_open,
            "proxy_cpu_pct_open": cpu_pct,
            # each open stream gets one chunk a second (x-sim-delay-ms: 1000)
            "proxy_cpu_us_per_chunk": cpu_pct / 100 / opened * 1e6 if opened else None,
            "nofile_limit": nofile,
            "errors": dict(held.errors),
            "note": note,
        }

    async def settle_backlog(self, phase: str = "single-proxy runs") -> None:
        """Start a worker, time how it settles what the proxy runs queued, stop it."""
        before_count = await world.usage_count(self.pg)
        queued = self.expected_records - before_count
        log(f"settling the proxy backlog of {phase} ({queued:,} events)")
        worker = self.start_worker()
        start = time.monotonic()
        progress = await world.wait_settled(
            self.pg,
            self.redis,
            self.world,
            expected_records=self.expected_records,
            timeout=max(120.0, queued / 100),
        )
        wall = time.monotonic() - start
        self.procs.stop(worker)
        self.results.setdefault("proxy_backlog_settle", []).append(
            {
                "phase": phase,
                "queued": queued,
                "settled": await world.usage_count(self.pg) - before_count,
                "complete": progress.done,
                "wall_s": wall,
                "events_per_s": progress.rate,
            }
        )
        await self.check_balance(f"after {phase}")

    async def nginx(self) -> None:
        binary, why = procs.ensure_nginx()
        if binary is None:
            log(f"nginx part skipped: {why}")
            self.results["nginx"] = {"skipped": why}
            return
        sizes = self.sizes
        log(f"two proxies behind nginx, non-streaming c={sizes.concurrency}")
        proxy2, proxy2_url = await self.start_proxy("proxy2")
        ports = [int(self.proxy_url.rsplit(":", 1)[1]), int(proxy2_url.rsplit(":", 1)[1])]
        port = procs.free_port()
        directory = self.workdir / "nginx"
        conf = procs.write_nginx_conf(directory, port, ports)
        ng = self.procs.spawn(
            "nginx",
            [
                binary,
                "-p",
                str(directory),
                "-c",
                str(conf),
                "-e",
                str(directory / "nginx-error.log"),
            ],
        )
        try:
            await procs.wait_http(f"http://127.0.0.1:{port}/healthz", ng)
            workers = procs.children_of(ng.pid)
            _, proxy = self.targets()
            target = Target(
                "nginx",
                f"http://127.0.0.1:{port}/v1/openai/chat/completions",
                proxy.headers,
                billed=True,
            )
            sampler = self.sampler(
                proxy=[self.proxy.pid, proxy2.pid], nginx=[ng.pid, *workers], sim=[self.sim.pid]
            )
            res = await self._measured_run(target, BODY, False, sampler, sizes.duration)
        finally:
            self.procs.stop(ng, signal.SIGQUIT)
            self.procs.stop(proxy2)
        log(f"  {res['rps']:,.0f} req/s, {res['errors']} errors")
        await self.settle_backlog("nginx run")
        bal = await world.balance_check(self.pg, self.redis, self.world)
        self.results["nginx"] = {
            **res,
            "concurrency": sizes.concurrency,
            "duration_s": sizes.duration,
            "balance": bal,
        }

    async def worker_backlog(self) -> None:
        n = self.sizes.events
        log(f"worker: enqueueing {n:,} usage events with no worker running")
        before_count = await world.usage_count(self.pg)
        start = time.monotonic()
        await world.enqueue_backlog(self.redis, self.world, n)
        enqueue_s = time.monotonic() - start
        self.enqueued_events += n
        sampler = self.sampler()
        before = sampler.snapshot()
        log("worker: starting one worker and timing settlement")
        worker = self.start_worker()

        def worker_ticks() -> int:
            try:
                return procs.cpu_ticks(worker.pid)
            except OSError:
                return 0

        start = time.monotonic()
        progress = await world.wait_settled(
            self.pg,
            self.redis,
            self.world,
            expected_records=self.expected_records,
            timeout=max(120.0, n / 200),
            probe=worker_ticks,
        )
        wall = time.monotonic() - start
        cpu = CpuSampler.diff_ms(before, sampler.snapshot())
        self.procs.stop(worker)
        settled = await world.usage_count(self.pg) - before_count
        worker_ms = None
        counted = progress.end_count - progress.first_count
        if counted > 0:
            ticks = progress.end_probe - progress.first_probe
            worker_ms = ticks * 1000 / procs.CLK_TCK / counted
        bal = await self.check_balance("worker backlog")
        self.results["worker"] = {
            "events": n,
            "enqueue_s": enqueue_s,
            "enqueue_per_s": n / enqueue_s if enqueue_s else None,
            "settled": settled,
            "complete": progress.done,
            "wall_s": wall,
            "startup_s": progress.first_time - start if progress.first_time else None,
            "events_per_s": progress.rate,
            "worker_cpu_ms_per_event": worker_ms,
            "postgres_cpu_ms_per_event": _per(cpu.get("postgres", 0.0), settled),
            "redis_cpu_ms_per_event": _per(cpu.get("redis", 0.0), settled),
            "balance": bal,
        }
        rate = progress.rate or 0
        log(f"  settled {settled:,} in {wall:.1f} s ({rate:,.0f} events/s)")

    async def reconcile(self) -> None:
        child = self.procs.meterway("reconcile", "reconcile")
        for _ in range(600):  # at most two minutes
            if not child.alive():
                break
            await asyncio.sleep(0.2)
        self.procs.stop(child)
        code = child.popen.returncode
        self.check("meterway reconcile", code == 0, child.log_tail(3).replace("\n", " / "))


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
        return await bench.run()
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
    stamp, date = report.now_stamp()
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
        "machine": report.machine(),
        "versions": report.versions(),
        "git_commit": report.git_commit(),
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
