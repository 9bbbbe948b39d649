"""The issue's targets, each with the measured value and whether it is met, and the
figures the issue gives for other gateways."""

from __future__ import annotations

import math

from bench.procs import GIB, MIB

# From the issue: LiteLLM and Portkey measured on this machine class.
COMPARISON = {
    "LiteLLM proxy": {"cpu_ms": 14.9, "added_p50_ms": 14.7, "rps_c64": 95},
    "Portkey gateway": {"cpu_ms": 1.2, "added_p50_ms": 1.0, "rps_c64": 900},
}


def value_at(results: dict, *path: str) -> float | None:
    node: object = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    if isinstance(node, int | float) and not math.isnan(node):
        return float(node)
    return None


def targets(results: dict) -> list[dict]:
    """Each issue target with the measured value and whether it is met."""
    rows = []

    def add(name: str, value: float | None, goal: str, fmt: str, ok, note: str = "") -> None:
        if value is None:
            rows.append({"target": name, "measured": "n/a", "goal": goal, "status": "not run"})
            return
        status = "met" if ok(value) else "not met"
        measured = fmt.format(value) + (f" ({note})" if note else "")
        rows.append({"target": name, "measured": measured, "goal": goal, "status": status})

    tp = ("throughput",)
    add(
        "proxy CPU per request, non-streaming (c=64)",
        value_at(results, *tp, "nonstream", "proxy", "proxy_cpu_ms_per_req"),
        "≤ 0.3 ms",
        "{:.3f} ms",
        lambda v: v <= 0.3,
    )
    add(
        "proxy CPU per 20-chunk stream (c=64)",
        value_at(results, *tp, "stream", "proxy", "proxy_cpu_ms_per_req"),
        "≤ 0.6 ms",
        "{:.3f} ms",
        lambda v: v <= 0.6,
    )
    add(
        "added latency p50, non-streaming (c=1)",
        value_at(results, "latency", "nonstream_total", "added_p50_ms"),
        "≤ 1 ms",
        "{:.2f} ms",
        lambda v: v <= 1.0,
    )
    add(
        "added latency p99, non-streaming (c=1)",
        value_at(results, "latency", "nonstream_total", "added_p99_ms"),
        "≤ 3 ms",
        "{:.2f} ms",
        lambda v: v <= 3.0,
    )
    add(
        "added time to first byte p50, streaming (c=1)",
        value_at(results, "latency", "stream_ttfb", "added_p50_ms"),
        "≤ 1 ms",
        "{:.2f} ms",
        lambda v: v <= 1.0,
    )
    add(
        "requests/s, non-streaming, one proxy (c=64)",
        value_at(results, *tp, "nonstream", "proxy", "rps"),
        "≥ 2,000",
        "{:,.0f}",
        lambda v: v >= 2000,
    )
    add(
        "streams/s (20 chunks), one proxy (c=64)",
        value_at(results, *tp, "stream", "proxy", "rps"),
        "≥ 1,000",
        "{:,.0f}",
        lambda v: v >= 1000,
    )
    mem = results.get("memory") or {}
    rss10k = value_at(results, "memory", "rss_for_10k_bytes")
    note = ""
    if rss10k is not None and mem.get("streams_open", 0) < 10_000:
        note = f"projected from {mem.get('streams_open', 0):,} open streams"
    add(
        "proxy RSS with 10,000 open streams",
        None if rss10k is None else rss10k / MIB,
        "≤ 1 GiB",
        "{:,.0f} MiB",
        lambda v: v * MIB <= GIB,
        note,
    )
    add(
        "worker settlement events/s",
        value_at(results, "worker", "events_per_s"),
        "≥ 10,000",
        "{:,.0f}",
        lambda v: v >= 10_000,
    )
    return rows
