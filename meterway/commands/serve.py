"""`meterway serve --workers N` (contract section 8): N proxy processes on one port.

The supervisor binds the listening socket once and starts N processes that
inherit it (a pre-forked listener: the kernel hands each new connection to
one of the processes accepting on it, and no process's exit can drop
connections queued for another, as closing one of several SO_REUSEPORT
sockets can). Each process is a whole proxy with its own event loop, its own
connections to Redis and Postgres and its own invalidation listener, so
revocation, pause and provider changes reach every process as they reach any
proxy.

`/metrics`: the supervisor points `PROMETHEUS_MULTIPROC_DIR` at a fresh
directory; every process writes its values there and each scrape, whichever
process answers, sums all of them (`proxy.metrics.Metrics`).

SIGTERM or SIGINT to the supervisor goes to every process, each drains as a
single proxy does (`proxy.app.run`), and the supervisor exits 0 when all have
exited 0. A process that dies while not shutting down is started again. A
supervisor that is killed outright (SIGKILL) leaves no process behind: each
asks the kernel for SIGTERM when its parent dies (Linux PR_SET_PDEATHSIG) and
drains like any proxy; one whose parent is already gone when it starts exits.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import structlog

from shared.config import Settings

log = structlog.get_logger("meterway.serve")

LISTEN_FD = "METERWAY_LISTEN_FD"
SUPERVISOR_PID = "METERWAY_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1
_CHILD = "import sys; from meterway.commands.serve import child; sys.exit(child())"


def listening_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def serve_workers(settings: Settings, host: str, port: int, workers: int) -> int:
    """Run `workers` proxy processes on host:port until SIGTERM or SIGINT."""
    sock = listening_socket(host, port)
    metrics_dir = tempfile.mkdtemp(prefix="meterway-metrics-")
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
        LISTEN_FD: str(sock.fileno()),
        SUPERVISOR_PID: str(os.getpid()),
    }
    env.pop("PROXY_WORKERS", None)
    procs: dict[int, subprocess.Popen] = {}
    started: dict[int, float] = {}
    stopping = False
    failed = False

    def spawn() -> None:
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, host, str(port)], env=env, pass_fds=(sock.fileno(),)
        )
        procs[proc.pid] = proc
        started[proc.pid] = time.monotonic()

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs.values():
            if proc.returncode is None:
                try:
                    proc.send_signal(signum)
                except ProcessLookupError:
                    pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        for _ in range(workers):
            spawn()
        log.info("serve_workers_started", workers=workers, host=host, port=port)
        from prometheus_client import multiprocess

        while procs:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            proc = procs.pop(pid, None)
            if proc is None:
                continue
            proc.returncode = code = os.waitstatus_to_exitcode(status)
            multiprocess.mark_process_dead(pid, metrics_dir)  # its live gauges go
            if stopping:
                failed = failed or code != 0
                continue
            log.warning("serve_worker_died", pid=pid, exit_code=code)
            if time.monotonic() - started.pop(pid, 0.0) < 2.0:
                time.sleep(1.0)  # dying at start: do not spin
            if not stopping:
                spawn()
    finally:
        for proc in procs.values():  # an error of our own: take the processes with us
            if proc.poll() is None:
                proc.terminate()
        sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 1 if failed else 0


def child() -> int:
    """One serving process of `serve_workers`, on the inherited listening socket."""
    from proxy.app import run
    from shared.config import get_settings
    from shared.logs import configure_logging, use_fast_event_loop

    _die_with_supervisor()
    configure_logging()
    use_fast_event_loop()
    host, port = sys.argv[1], int(sys.argv[2])
    sock = socket.socket(fileno=int(os.environ.pop(LISTEN_FD)))
    run(get_settings(), host, port, sock=sock)
    return 0


def _die_with_supervisor() -> None:
    """SIGTERM to this process when the supervisor dies, even by SIGKILL (Linux);
    elsewhere, or if the supervisor is already gone, the check below still holds."""
    supervisor = int(os.environ.pop(SUPERVISOR_PID, "0") or 0)
    if sys.platform.startswith("linux"):
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            log.warning("parent_death_signal_not_set", errno=ctypes.get_errno())
    if supervisor and os.getppid() != supervisor:  # it died before the line above
        sys.exit(0)
