"""Load phases through one proxy: smoke test, latency at c=1, throughput, py-spy profile."""

from __future__ import annotations

import asyncio
import shutil

from bench import load, procs, world
from bench.harness import RESULTS_DIR, Bench, log, per
from bench.load import BODY, STREAM_BODY, Target
from bench.procs import MIB, CpuSampler
from bench.profile_summary import summarize_profile


async def smoke(bench: Bench) -> None:
    """A few requests with the worker running: the whole pipeline works."""
    log("smoke test: proxy + worker, 100 requests")
    _, proxy = bench.targets()
    worker = bench.start_worker()
    for body, stream in ((BODY, False), (STREAM_BODY, True)):
        target = proxy.with_headers(x_sim_chunks="20") if stream else proxy
        run = await load.closed_loop(
            bench.session,
            target,
            body,
            stream,
            bench.tally,
            concurrency=4,
            duration=30,
            max_requests=50,
        )
        if run.errors:
            raise RuntimeError(f"smoke requests failed: {run.error_samples}")
    progress = await world.wait_settled(
        bench.pg, bench.redis, bench.world, expected_records=bench.expected_records, timeout=30
    )
    count = await world.usage_count(bench.pg)
    bench.check(
        "smoke: every admitted request settled once",
        progress.done and count == bench.tally.billed,
        f"{count} usage records for {bench.tally.billed} admitted requests",
    )
    await bench.check_balance("smoke")
    bench.procs.stop(worker)


async def latency(bench: Bench) -> None:
    n = bench.sizes.latency_requests
    log(f"latency at c=1: {n} interleaved requests per path, non-streaming then streaming")
    direct, proxy = bench.targets()
    sampler = bench.sampler(proxy=[bench.proxy.pid])
    before, billed_before = sampler.snapshot(), bench.tally.billed
    plain = await load.latency_pairs(
        bench.session, direct, proxy, BODY, False, n, bench.tally, warmup=min(200, n)
    )
    chunks = {"x_sim_chunks": "20"}
    streamed = await load.latency_pairs(
        bench.session,
        direct.with_headers(**chunks),
        proxy.with_headers(**chunks),
        STREAM_BODY,
        True,
        n,
        bench.tally,
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

    bench.results["latency"] = {
        "n": n,
        "nonstream_total": compare(plain.direct_total, plain.proxy_total),
        "stream_ttfb": compare(streamed.direct_ttfb, streamed.proxy_ttfb),
        "stream_total": compare(streamed.direct_total, streamed.proxy_total),
        "proxy_cpu_ms_per_req_c1": per(cpu["proxy"], bench.tally.billed - billed_before),
        "errors": dict(plain.errors + streamed.errors),
    }


async def measured_run(
    bench: Bench, target: Target, body: bytes, stream: bool, sampler: CpuSampler, duration: float
) -> dict:
    """A warm-up, then one closed-loop run at the bench concurrency, with CPU per request."""
    concurrency = bench.sizes.concurrency
    await load.closed_loop(  # warm the connection pools at this concurrency
        bench.session,
        target,
        body,
        stream,
        bench.tally,
        concurrency=concurrency,
        duration=min(1.0, duration / 3),
    )
    before = sampler.snapshot()
    run = await load.closed_loop(
        bench.session,
        target,
        body,
        stream,
        bench.tally,
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
            out[f"{name}_cpu_ms_per_req"] = per(cpu[name], run.requests)
    if cpu.get("proxy"):
        out["proxy_sys_pct"] = 100.0 * cpu["proxy:sys"] / cpu["proxy"]
    return out


async def throughput(bench: Bench) -> None:
    sizes = bench.sizes
    log(f"throughput at c={sizes.concurrency}, {sizes.duration:g} s per run")
    direct, proxy = bench.targets()
    sampler = bench.sampler(proxy=[bench.proxy.pid], sim=[bench.sim.pid])
    out: dict = {"concurrency": sizes.concurrency, "duration_s": sizes.duration}
    for kind, body, stream, extra in (
        ("nonstream", BODY, False, {}),
        ("stream", STREAM_BODY, True, {"x_sim_chunks": "20"}),
    ):
        out[kind] = {}
        for target in (direct, proxy):
            target = target.with_headers(**extra)
            res = await measured_run(bench, target, body, stream, sampler, sizes.duration)
            if target.name == "direct":  # the proxy was idle
                res.pop("proxy_cpu_ms_per_req", None)
                res.pop("proxy_sys_pct", None)
            out[kind][target.name] = res
            log(f"  {kind} {target.name}: {res['rps']:,.0f} req/s, {res['errors']} errors")
    out["proxy_hwm_mib"] = procs.hwm_bytes(bench.proxy.pid) / MIB
    bench.results["throughput"] = out


async def profile(bench: Bench) -> None:
    """py-spy on the proxy during an extra non-streaming run (not in the numbers)."""
    if not shutil.which("py-spy"):
        bench.results["profile"] = {"samples": 0, "areas": [], "meterway": [], "self": []}
        return
    duration = max(5, int(bench.sizes.duration))
    log(f"profiling the proxy with py-spy for {duration} s (non-streaming, c=64)")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    raw = RESULTS_DIR / f"{bench.results_stamp}-proxy-profile.txt"
    argv = ["py-spy", "record", "--format", "raw", "--rate", "200"]
    argv += ["--duration", str(duration), "--pid", str(bench.proxy.pid), "--output", str(raw)]
    spy = bench.procs.spawn("py-spy", argv)
    await asyncio.sleep(0.5)
    _, proxy = bench.targets()
    await load.closed_loop(
        bench.session,
        proxy,
        BODY,
        False,
        bench.tally,
        concurrency=bench.sizes.concurrency,
        duration=duration + 1,
    )
    for _ in range(100):
        if not spy.alive():
            break
        await asyncio.sleep(0.1)
    bench.procs.stop(spy)
    text = raw.read_text() if raw.exists() else ""
    bench.results["profile"] = {**summarize_profile(text), "raw": str(raw)}
