"""Memory phase: proxy RSS per open slow stream, and its CPU while holding them."""

from __future__ import annotations

import asyncio

from bench import load, procs
from bench.harness import Bench, log
from bench.procs import MIB


async def memory(bench: Bench) -> None:
    requested = bench.sizes.streams
    nofile = procs.raise_fd_limit()
    n = min(requested, (nofile - 512) // 2)  # the proxy needs 2 descriptors per stream
    log(f"memory: opening {n:,} slow streams through one proxy")
    _, proxy = bench.targets()
    slow = proxy.with_headers(x_sim_chunks="1000", x_sim_delay_ms="1000")
    pid = bench.proxy.pid
    await asyncio.sleep(1.0)
    rss_idle, fds_idle = procs.rss_bytes(pid), procs.open_fds(pid)
    held = load.HeldStreams(bench.session, slow, bench.tally)
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
    log(f"  {opened:,} open, proxy RSS {rss_idle / MIB:.0f} -> {rss_open / MIB:.0f} MiB; closing")
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
    bench.results["memory"] = {
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
