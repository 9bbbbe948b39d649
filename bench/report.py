"""The Markdown report of a run's results."""

from __future__ import annotations

import math

from bench.procs import MIB
from bench.targets import COMPARISON, targets, value_at


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
            _ms(value_at(results, "throughput", "nonstream", "proxy", "proxy_cpu_ms_per_req")),
            _ms(value_at(results, "latency", "nonstream_total", "added_p50_ms")),
            _f(value_at(results, "throughput", "nonstream", "proxy", "rps")),
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
