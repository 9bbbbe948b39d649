"""Child processes of the benchmark and what /proc says about them.

Every process is started through `Processes`, which stops all of them (SIGTERM,
then SIGKILL) when the benchmark ends, however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

REPO_ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024**2
GIB = 1024**3
_METERWAY_MAIN = "import sys; from meterway.cli import main; sys.exit(main())"


@contextlib.contextmanager
def revision_tree(rev: str, workdir: Path) -> Iterator[Path]:
    """The code of git revision `rev` as a detached worktree in `workdir/old`,
    for a benchmark that runs it beside the working tree; removed afterwards."""
    old_root = workdir / "old"
    git = ["git", "-C", str(REPO_ROOT)]
    subprocess.run(
        [*git, "worktree", "add", "--detach", str(old_root), rev], check=True, capture_output=True
    )
    try:
        yield old_root
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(old_root)], check=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (children inherit it); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class _Stop:
    """Set by the signal handler. Loops and phase boundaries check it, so the run
    ends even if some library swallowed the task cancellation."""

    requested = False


STOP = _Stop()


def check_stop() -> None:
    if STOP.requested:
        raise asyncio.CancelledError("stop requested")


# --- /proc readers -----------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # fields from `state` (field 3) on


def cpu_ticks(pid: int, *, children: bool = False) -> int:
    """utime + stime of `pid` in clock ticks (plus its reaped children's)."""
    f = _stat_fields(pid)
    ticks = int(f[11]) + int(f[12])
    if children:
        ticks += int(f[13]) + int(f[14])
    return ticks


def ppid_of(pid: int) -> int:
    return int(_stat_fields(pid)[1])


def _status_kb(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def rss_bytes(pid: int) -> int:
    return _status_kb(pid, "VmRSS") * 1024


def hwm_bytes(pid: int) -> int:
    return _status_kb(pid, "VmHWM") * 1024


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _all_pids() -> Iterable[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def comm_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def pids_by_comm(comm: str) -> list[int]:
    found = []
    for pid in _all_pids():
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == comm:
                found.append(pid)
    return found


def children_of(parent: int) -> list[int]:
    found = []
    for pid in _all_pids():
        with contextlib.suppress(OSError, ValueError, IndexError):
            if ppid_of(pid) == parent:
                found.append(pid)
    return found


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine, all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(values[:8])
    idle = values[3] + values[4]
    return total - idle, total


@dataclass
class CpuSampler:
    """CPU of named processes between two snapshots, in milliseconds.

    `pids` maps a name to one or more pids; `comms` sums every process with that
    command name (with its reaped children, so short-lived Postgres backends
    count too). The benchmark process itself is "client". "<name>:sys" is the
    part of a named process's CPU spent in the kernel.
    """

    pids: dict[str, list[int]] = field(default_factory=dict)
    comms: dict[str, str] = field(default_factory=dict)

    def snapshot(self) -> dict[str, float]:
        snap: dict[str, float] = {}
        for name, pids in self.pids.items():
            total = system = 0
            for pid in pids:
                with contextlib.suppress(OSError):
                    total += cpu_ticks(pid)
                    system += int(_stat_fields(pid)[12])
            snap[name] = total
            snap[f"{name}:sys"] = system
        for name, comm in self.comms.items():
            total = 0
            for pid in pids_by_comm(comm):
                with contextlib.suppress(OSError):
                    total += cpu_ticks(pid, children=True)
            snap[name] = total
        t = os.times()
        snap["client"] = (t.user + t.system) * CLK_TCK
        busy, all_ticks = machine_ticks()
        snap["_machine_busy"] = busy
        snap["_machine_total"] = all_ticks
        snap["_wall"] = time.monotonic()
        return snap

    @staticmethod
    def diff_ms(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        """Per-process CPU ms between the snapshots, plus machine busy % (of all cores)."""
        out = {
            name: (after[name] - before[name]) * 1000.0 / CLK_TCK
            for name in before
            if not name.startswith("_")
        }
        total = after["_machine_total"] - before["_machine_total"]
        busy = after["_machine_busy"] - before["_machine_busy"]
        out["machine_busy_pct"] = 100.0 * busy / total if total else 0.0
        out["wall_s"] = after["_wall"] - before["_wall"]
        return out


# --- child processes ---------------------------------------------------------------


@dataclass
class Child:
    name: str
    popen: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


class Processes:
    """Starts children and guarantees they are stopped (`stop_all` in a finally)."""

    def __init__(self, workdir: Path, base_env: dict[str, str]) -> None:
        self.workdir = workdir
        self.base_env = base_env
        self.children: list[Child] = []

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        log = self.workdir / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                argv,
                cwd=self.workdir,
                env=env if env is not None else self.base_env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us only; we stop them in order
            )
        child = Child(name, popen, log)
        self.children.append(child)
        return child

    def meterway(self, name: str, *args: str, **extra_env: str) -> Child:
        env = dict(self.base_env)
        env.update(extra_env)
        return self.spawn(name, [sys.executable, "-c", _METERWAY_MAIN, *args], env)

    def stop(self, child: Child, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if child.alive():
            with contextlib.suppress(ProcessLookupError):
                child.popen.send_signal(sig)
            try:
                child.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    child.popen.kill()
                child.popen.wait(5)
        with contextlib.suppress(ValueError):
            self.children.remove(child)

    def stop_all(self) -> None:
        for child in list(reversed(self.children)):
            with contextlib.suppress(Exception):
                self.stop(child, timeout=5.0)


async def wait_http(url: str, child: Child | None = None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            if child is not None and not child.alive():
                raise RuntimeError(f"{child.name} exited:\n{child.log_tail()}")
            if time.monotonic() > deadline:
                tail = child.log_tail() if child else ""
                raise RuntimeError(f"{url} did not come up\n{tail}")
            await asyncio.sleep(0.1)


# --- nginx -------------------------------------------------------------------------

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 16384;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream meterway {{
{servers}
        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://meterway;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


def ensure_nginx() -> tuple[str | None, str]:
    """The nginx binary, installing the Debian package if needed; or (None, why not)."""
    from shutil import which

    found = which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found:
        return found, "already installed"
    try:
        proc = subprocess.run(
            ["apt-get", "install", "-y", "nginx"],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"apt-get install nginx failed: {exc}"
    found = which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found:
        return found, "installed with apt-get"
    return None, f"apt-get install nginx failed (rc {proc.returncode}): {proc.stderr[-300:]}"


def write_nginx_conf(directory: Path, port: int, upstream_ports: list[int]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    servers = "\n".join(f"        server 127.0.0.1:{p};" for p in upstream_ports)
    conf = directory / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=directory, port=port, servers=servers))
    return conf
