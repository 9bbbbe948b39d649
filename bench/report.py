"""Machine description, targets, the Markdown report and the py-spy summary."""

from __future__ import annotations

import math
import os
import platform
import subprocess
from collections import Counter
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from bench.procs import REPO_ROOT

# From the issue: LiteLLM and Portkey measured on this machine class.
COMPARISON = {
    "LiteLLM proxy": {"cpu_ms": 14.9, "added_p50_ms": 14.7, "rps_c64": 95},
    "Portkey gateway": {"cpu_ms": 1.2, "added_p50_ms": 1.0, "rps_c64": 900},
}
GIB = 1024**3
MIB = 1024**2


def machine() -> dict:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
    }


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions() -> dict:
    return {
        "python": platform.python_version(),
        "aiohttp": _version("aiohttp"),
        "redis": _version("redis"),
        "arq": _version("arq"),
        "asyncpg": _version("asyncpg"),
        "uvloop": _version("uvloop"),
    }


def git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{commit}+dirty" if dirty else commit


def now_stamp() -> tuple[str, str]:
    now = datetime.now(UTC)
    return now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y-%m-%d %H:%M UTC")


# --- targets ------------------------------------------------------------------------


def _get(results: dict, *path: str) -> float | None:
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
        _get(results, *tp, "nonstream", "proxy", "proxy_cpu_ms_per_req"),
        "≤ 0.3 ms",
        "{:.3f} ms",
        lambda v: v <= 0.3,
    )
    add(
        "proxy CPU per 20-chunk stream (c=64)",
        _get(results, *tp, "stream", "proxy", "proxy_cpu_ms_per_req"),
        "≤ 0.6 ms",
        "{:.3f} ms",
        lambda v: v <= 0.6,
    )
    add(
        "added latency p50, non-streaming (c=1)",
        _get(results, "latency", "nonstream_total", "added_p50_ms"),
        "≤ 1 ms",
        "{:.2f} ms",
        lambda v: v <= 1.0,
    )
    add(
        "added latency p99, non-streaming (c=1)",
        _get(results, "latency", "nonstream_total", "added_p99_ms"),
        "≤ 3 ms",
        "{:.2f} ms",
        lambda v: v <= 3.0,
    )
    add(
        "added time to first byte p50, streaming (c=1)",
        _get(results, "latency", "stream_ttfb", "added_p50_ms"),
        "≤ 1 ms",
        "{:.2f} ms",
        lambda v: v <= 1.0,
    )
    add(
        "requests/s, non-streaming, one proxy (c=64)",
        _get(results, *tp, "nonstream", "proxy", "rps"),
        "≥ 2,000",
        "{:,.0f}",
        lambda v: v >= 2000,
    )
    add(
        "streams/s (20 chunks), one proxy (c=64)",
        _get(results, *tp, "stream", "proxy", "rps"),
        "≥ 1,000",
        "{:,.0f}",
        lambda v: v >= 1000,
    )
    mem = results.get("memory") or {}
    rss10k = _get(results, "memory", "rss_for_10k_bytes")
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
        _get(results, "worker", "events_per_s"),
        "≥ 10,000",
        "{:,.0f}",
        lambda v: v >= 10_000,
    )
    return rows


# --- Markdown ------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _ms(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def _ms3(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _f(v: float | None, spec: str = ",.0f") -> str:
    return "n/a" if v is None else format(v, spec)


def markdown(results: dict) -> str:
    meta = results["meta"]
    m, v = meta["machine"], meta["versions"]
    out = [
        f"# Meterway benchmark, {meta['date']}",
        "",
        f"- command: `{meta['command']}`",
        f"- machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['memory_gib']} GiB RAM,"
        f" Linux {m['kernel']}",
        f"- Python {v['python']}, aiohttp {v['aiohttp']}, redis-py {v['redis']},"
        f" arq {v['arq']}, asyncpg {v['asyncpg']}, uvloop {v['uvloop']}"
        f" (load generator on {meta.get('load_generator_loop', 'asyncio')})",
        f"- git commit: {meta['git_commit']}",
        f"- load average before the run: {meta.get('loadavg_before', 'n/a')}"
        f" (anything else running on the machine skews the numbers)",
        f"- sizes: {results['config']}",
        "",
        "Everything (load generator, simulator, proxy, worker, Redis, Postgres, nginx)"
        " shares this machine's cores; the worker is stopped while load is measured.",
        "",
        "## Targets",
        "",
        _table(
            ["target", "measured", "goal", "status"],
            [[r["target"], r["measured"], r["goal"], r["status"]] for r in targets(results)],
        ),
    ]
    out += _comparison(results)
    out += _latency_section(results)
    out += _throughput_section(results)
    out += _memory_section(results)
    out += _worker_section(results)
    out += _nginx_section(results)
    out += _checks_section(results)
    out += _profile_section(results)
    return "\n".join(out) + "\n"


def _comparison(results: dict) -> list[str]:
    rows = [
        [
            "Meterway (this run)",
            _ms(_get(results, "throughput", "nonstream", "proxy", "proxy_cpu_ms_per_req")),
            _ms(_get(results, "latency", "nonstream_total", "added_p50_ms")),
            _f(_get(results, "throughput", "nonstream", "proxy", "rps")),
        ]
    ]
    for name, c in COMPARISON.items():
        rows.append(
            [
                f"{name} (from the issue)",
                f"{c['cpu_ms']}",
                f"+{c['added_p50_ms']}",
                f"~{c['rps_c64']}",
            ]
        )
    return [
        "",
        "## Comparison (non-streaming)",
        "",
        _table(["gateway", "CPU ms/request", "added p50 ms", "req/s at c=64"], rows),
        "",
        "The issue's figures were taken on this machine class, not in this run.",
    ]


def _latency_section(results: dict) -> list[str]:
    lat = results.get("latency")
    if not lat:
        return []
    rows = []
    for key, label in (
        ("nonstream_total", "non-streaming, total"),
        ("stream_ttfb", "stream (20 chunks), first byte"),
        ("stream_total", "stream (20 chunks), total"),
    ):
        d = lat[key]
        rows.append(
            [
                label,
                _ms(d["direct"]["p50"]),
                _ms(d["proxy"]["p50"]),
                _ms(d["added_p50_ms"]),
                _ms(d["direct"]["p99"]),
                _ms(d["proxy"]["p99"]),
                _ms(d["added_p99_ms"]),
            ]
        )
    errors = lat.get("errors") or {}
    return [
        "",
        f"## Latency at concurrency 1 ({lat['n']:,} interleaved requests per path, ms)",
        "",
        _table(
            ["", "direct p50", "proxy p50", "added p50", "direct p99", "proxy p99", "added p99"],
            rows,
        ),
        "",
        f"proxy CPU per request at c=1: {_ms(lat.get('proxy_cpu_ms_per_req_c1'))} ms"
        " (non-streaming and streaming requests mixed)" + (f"; errors: {errors}" if errors else ""),
    ]


def _throughput_section(results: dict) -> list[str]:
    tp = results.get("throughput")
    if not tp:
        return []
    rows = []
    for kind, label in (("nonstream", "non-streaming"), ("stream", "stream, 20 chunks")):
        for path in ("direct", "proxy"):
            d = tp[kind][path]
            rows.append(
                [
                    f"{label}, {path}",
                    _f(d["rps"]),
                    _ms(d["p50_ms"]),
                    _ms(d["p99_ms"]),
                    _ms(d.get("proxy_cpu_ms_per_req")),
                    _f(d.get("proxy_sys_pct"), ".0f"),
                    _ms(d["sim_cpu_ms_per_req"]),
                    _ms(d["client_cpu_ms_per_req"]),
                    _ms(d["redis_cpu_ms_per_req"]),
                    _f(d["machine_busy_pct"], ".0f") + " %",
                    str(d["errors"]),
                ]
            )
    return [
        "",
        f"## Throughput at concurrency {tp['concurrency']}, one proxy process"
        f" ({tp['duration_s']:g} s per run)",
        "",
        _table(
            [
                "run",
                "req/s",
                "p50 ms",
                "p99 ms",
                "proxy CPU ms/req",
                "of which kernel %",
                "simulator CPU ms/req",
                "load generator CPU ms/req",
                "Redis CPU ms/req",
                "machine busy",
                "errors",
            ],
            rows,
        ),
        "",
        f"proxy peak RSS (VmHWM) after the throughput runs: {_f(tp['proxy_hwm_mib'], '.0f')} MiB."
        " One proxy process is one event loop, so with a core to itself it tops out near"
        f" 1000 / (CPU ms per request): {_ceiling(tp, 'nonstream')} req/s non-streaming,"
        f" {_ceiling(tp, 'stream')} streams/s.",
    ]


def _ceiling(tp: dict, kind: str) -> str:
    cpu = tp[kind]["proxy"].get("proxy_cpu_ms_per_req")
    return _f(1000.0 / cpu) if cpu else "n/a"


def _memory_section(results: dict) -> list[str]:
    mem = results.get("memory")
    if not mem:
        return []
    lines = [
        "",
        f"## Memory with {mem['streams_open']:,} open slow streams (one proxy)",
        "",
        _table(
            ["", "value"],
            [
                [
                    "streams requested / open",
                    f"{mem['streams_requested']:,} / {mem['streams_open']:,}",
                ],
                ["time to open them all", f"{mem['open_seconds']:.1f} s"],
                ["proxy RSS idle", f"{mem['rss_idle_bytes'] / MIB:,.0f} MiB"],
                ["proxy RSS with the streams open", f"{mem['rss_open_bytes'] / MIB:,.0f} MiB"],
                ["RSS per open stream", f"{mem['rss_per_stream_bytes'] / 1024:,.1f} KiB"],
                ["projected RSS for 10,000 streams", f"{mem['rss_for_10k_bytes'] / MIB:,.0f} MiB"],
                [
                    "proxy CPU while holding them (1 chunk/s each)",
                    f"{mem['proxy_cpu_pct_open']:.0f} %",
                ],
                [
                    "proxy CPU per relayed chunk while holding them",
                    _f(mem.get("proxy_cpu_us_per_chunk"), ".0f") + " µs",
                ],
                ["proxy RSS after closing them", f"{mem['rss_after_close_bytes'] / MIB:,.0f} MiB"],
                ["proxy peak RSS (VmHWM)", f"{mem['hwm_bytes'] / MIB:,.0f} MiB"],
            ],
        ),
    ]
    if mem.get("note"):
        lines += ["", mem["note"]]
    if mem.get("errors"):
        lines += ["", f"errors: {mem['errors']}"]
    return lines


def _worker_section(results: dict) -> list[str]:
    lines = []
    backlog = results.get("proxy_backlog_settle")
    w = results.get("worker")
    if w:
        lines += [
            "",
            "## Worker settlement (one worker process)",
            "",
            _table(
                ["", "value"],
                [
                    ["backlog enqueued", f"{w['events']:,} events ({w['enqueue_per_s']:,.0f}/s)"],
                    ["settled", f"{w['settled']:,} in {w['wall_s']:.1f} s from worker start"],
                    ["first record after worker start", f"{_ms(w.get('startup_s'))} s"],
                    ["events/s (first to last new record)", _f(w["events_per_s"])],
                    ["worker CPU per event", f"{_ms3(w['worker_cpu_ms_per_event'])} ms"],
                    ["Postgres CPU per event", f"{_ms3(w['postgres_cpu_ms_per_event'])} ms"],
                    ["Redis CPU per event", f"{_ms3(w['redis_cpu_ms_per_event'])} ms"],
                    ["balance exact afterwards", str(w["balance"]["exact"])],
                ],
            ),
        ]
    if backlog:
        lines += [
            "",
            "Settling what the proxy runs left queued (real proxy events): "
            + "; ".join(
                f"{b['phase']}: {b['settled']:,} events at {_f(b['events_per_s'])}/s"
                for b in backlog
            ),
        ]
    return lines


def _nginx_section(results: dict) -> list[str]:
    ng = results.get("nginx")
    if not ng:
        return []
    if ng.get("skipped"):
        return ["", "## Two proxies behind nginx", "", f"Skipped: {ng['skipped']}"]
    return [
        "",
        f"## Two proxies behind nginx (non-streaming, c={ng['concurrency']},"
        f" {ng['duration_s']:g} s)",
        "",
        _table(
            ["", "value"],
            [
                ["requests/s", _f(ng["rps"])],
                ["p50 / p99 ms", f"{_ms(ng['p50_ms'])} / {_ms(ng['p99_ms'])}"],
                [
                    "CPU ms/req: proxies, nginx, simulator, load generator",
                    f"{_ms(ng['proxy_cpu_ms_per_req'])}, {_ms(ng['nginx_cpu_ms_per_req'])},"
                    f" {_ms(ng['sim_cpu_ms_per_req'])}, {_ms(ng['client_cpu_ms_per_req'])}",
                ],
                ["machine busy", f"{ng['machine_busy_pct']:.0f} %"],
                ["errors", str(ng["errors"])],
                ["balance exact afterwards", str(ng["balance"]["exact"])],
            ],
        ),
    ]


def _checks_section(results: dict) -> list[str]:
    checks = results.get("checks") or []
    if not checks:
        return []
    rows = [[c["name"], "yes" if c["ok"] else "NO", c["detail"]] for c in checks]
    return ["", "## Correctness checks", "", _table(["check", "ok", "detail"], rows)]


def _profile_section(results: dict) -> list[str]:
    prof = results.get("profile")
    if not prof:
        return []
    lines = [
        "",
        f"## Proxy profile (py-spy, non-streaming c=64, {prof['samples']:,} samples)",
        "",
        "py-spy samples the proxy's thread whenever it is runnable, so on a saturated machine"
        " a share also counts time spent waiting for a core; a send() to a local peer (Redis,"
        " the simulator, the client) includes the kernel's loopback work and often a switch"
        " to that peer. With uvloop, the loop's C code (epoll, recv(), transport writes) is"
        " charged to the Python function that called into it.",
        "",
        "Self time by area:",
        "",
        _table(["area", "share"], [[k, f"{v:.1f} %"] for k, v in prof["areas"]]),
        "",
        "Inclusive time of Meterway functions:",
        "",
        _table(["function", "share"], [[k, f"{v:.1f} %"] for k, v in prof["meterway"]]),
        "",
        "Top self time:",
        "",
        _table(["function", "share"], [[k, f"{v:.1f} %"] for k, v in prof["self"]]),
    ]
    if prof.get("raw"):
        lines += ["", f"collapsed stacks (py-spy raw): `{prof['raw']}`"]
    return lines


# --- py-spy raw output ----------------------------------------------------------------

_AREAS = (
    ("proxy/", "meterway proxy code"),
    ("shared/", "meterway shared code"),
    ("aiohttp/web", "aiohttp server"),
    ("aiohttp/client", "aiohttp client"),
    ("aiohttp/connector", "aiohttp client"),
    ("aiohttp/", "aiohttp other (http parser, streams, helpers)"),
    ("multidict/", "aiohttp other (http parser, streams, helpers)"),
    ("yarl/", "yarl (URLs)"),
    ("redis/", "redis-py"),
    ("asyncio/", "asyncio in Python (tasks, timeouts, streams, selector loop)"),
    ("selectors", "asyncio in Python (tasks, timeouts, streams, selector loop)"),
    ("socket", "asyncio in Python (tasks, timeouts, streams, selector loop)"),
    ("pydantic", "pydantic"),
    ("structlog/", "structlog"),
    ("contextvars", "structlog"),
    ("orjson", "orjson"),
)


def _frame_file(frame: str) -> str:
    start = frame.rfind("(")
    return frame[start + 1 : frame.rfind(":")] if start >= 0 else frame


def _frame_name(frame: str) -> str:
    start = frame.rfind(":")
    return frame[:start] + ")" if start >= 0 else frame


def _area(frames: list[str]) -> str:
    """What a sample was doing: a socket call by peer, waiting, or a package's code."""
    leaf = frames[-1]
    func, path = leaf.split(" (", 1)[0], _frame_file(leaf)
    # asyncio's transport, or (uvloop: the C transport is invisible) its Python caller
    if "write" in func.lower() and path in _WRITERS:
        if any("redis/" in f for f in frames):
            return "send() to Redis"
        if any("client_reqrep" in f for f in frames):
            return "send() upstream"
        if any("aiohttp/web_" in f for f in frames):
            return "send() to the client"
        return "send() other"
    if leaf.startswith("_SelectorSocketTransport._read_ready"):
        return "recv()"
    if leaf.startswith("EpollSelector.select "):
        return "epoll wait"
    if func in _LOOP_ENTRIES:  # uvloop: its C loop (epoll, recv(), callbacks) shows as the caller
        return "event loop core (uvloop, C: epoll, recv(), callbacks)"
    path = _frame_file(leaf)
    return next((label for prefix, label in _AREAS if prefix in path), "other")


_LOOP_ENTRIES = ("run_app", "run_forever", "run_until_complete", "BaseEventLoop.run_forever")
_WRITERS = ("asyncio/selector_events.py", "asyncio/streams.py", "aiohttp/http_writer.py")
_ENTRY_POINTS = ("run (proxy/app.py)", "main (meterway/cli.py)", "_dispatch (meterway/cli.py)")


def summarize_profile(raw: str, top: int = 15) -> dict:
    """Self time per function and area, inclusive time per Meterway function."""
    self_time: Counter = Counter()
    areas: Counter = Counter()
    inclusive: Counter = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        self_time[_frame_name(frames[-1])] += count
        areas[_area(frames)] += count
        seen = set()
        for frame in frames:
            path = _frame_file(frame)
            if path.startswith(("proxy/", "shared/")):
                name = _frame_name(frame)
                if name not in seen and name not in _ENTRY_POINTS:
                    seen.add(name)
                    inclusive[name] += count
    if not total:
        return {"samples": 0, "areas": [], "meterway": [], "self": []}

    def share(counter: Counter, n: int = top) -> list[tuple[str, float]]:
        return [(k, 100.0 * c / total) for k, c in counter.most_common(n)]

    return {
        "samples": total,
        "areas": share(areas, 30),
        "meterway": share(inclusive),
        "self": share(self_time),
    }
