"""CPU of the proxy's metrics per request, this working tree against a git revision.

    python -m bench.metrics_cost [--against REV] [--repeat N]

What the proxy records for one metered request (in-flight up and down, one
upstream attempt, four token kinds, the request's count, duration and time to
first byte), timed in a loop for `proxy/metrics.py` of the working tree and of
REV, in one process each, alternately, single-process and as under
`serve --workers N` (`PROMETHEUS_MULTIPROC_DIR`, a fresh directory). The whole
request costs the proxy about 0.6-0.8 ms of CPU (`bench.ab`); this isolates the
part that the metrics are, which `bench.ab`'s noise hides.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.procs import REPO_ROOT

_TIMER = """
import importlib.util, sys, timeit
from types import SimpleNamespace
sys.path.insert(0, sys.argv[2])
spec = importlib.util.spec_from_file_location("metrics_under_test", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
m = module.Metrics()
usage = SimpleNamespace(
    input_tokens=12, cache_read_tokens=3, cache_write_tokens=0, output_tokens=20
)
def one():
    m.in_flight.inc()
    m.upstream_attempt("openai", "chat/completions", 0.012)
    m.count_tokens("openai", "gpt-4o", usage)
    m.in_flight.dec()
    m.request_done("openai", "chat/completions", 200, 0.015, 0.014)
one()
n = 50000
print(min(timeit.repeat(one, number=n, repeat=5)) / n * 1e6)
"""


def time_one(path: Path, multiprocess: bool) -> float:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    with tempfile.TemporaryDirectory(prefix="meterway-metrics-cost-") as directory:
        if multiprocess:
            env["PROMETHEUS_MULTIPROC_DIR"] = directory
        out = subprocess.run(
            [sys.executable, "-c", _TIMER, str(path), str(REPO_ROOT)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    return float(out.stdout.strip())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.metrics_cost", description=__doc__.split("\n")[0]
    )
    p.add_argument("--against", default="HEAD", help="git revision to compare with (HEAD)")
    p.add_argument("--repeat", type=int, default=3, help="alternate runs of each")
    args = p.parse_args(argv)
    old = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "show", f"{args.against}:proxy/metrics.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    with tempfile.TemporaryDirectory(prefix="meterway-metrics-old-") as directory:
        old_path = Path(directory) / "metrics.py"
        old_path.write_text(old)
        new_path = REPO_ROOT / "proxy" / "metrics.py"
        print(f"| metrics CPU µs/request (best of runs) | working tree | {args.against} | ratio |")
        print("|---|---|---|---|")
        for multiprocess in (False, True):
            new_runs, old_runs = [], []
            for _ in range(args.repeat):
                new_runs.append(time_one(new_path, multiprocess))
                old_runs.append(time_one(old_path, multiprocess))
            new, old_ = min(new_runs), min(old_runs)
            mode = "serve --workers N" if multiprocess else "one process"
            print(f"| {mode} | {new:.2f} | {old_:.2f} | {new / old_:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
