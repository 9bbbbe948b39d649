"""`meterway serve --workers 2` whose supervisor is SIGKILLed: no serving process
lingers (each gets SIGTERM from the kernel and drains), and the port is free again."""

from __future__ import annotations

import asyncio
import os
import signal

import aiohttp
import pytest

from tests.stack import wait_http
from tests.util import free_port

pytestmark = pytest.mark.usefixtures("provider_keys")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) counts as gone
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_children_exit_when_the_supervisor_is_killed(stack):
    port = free_port()
    proc = await stack._spawn(
        "serve", "--port", str(port), "--workers", "2", SHUTDOWN_DRAIN_SECONDS="0"
    )
    url = f"http://127.0.0.1:{port}"
    await wait_http(f"{url}/readyz", timeout=20)
    pids: set[int] = set()

    async def pid_of_one() -> int:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as resp:
            return (await resp.json())["pid"]

    deadline = asyncio.get_running_loop().time() + 20
    while len(pids) < 2 and asyncio.get_running_loop().time() < deadline:
        pids.update(await asyncio.gather(*(pid_of_one() for _ in range(8))))
        await asyncio.sleep(0.1)
    assert len(pids) == 2 and proc.pid not in pids

    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    for _ in range(200):  # they drain (no requests in flight) and exit
        if not any(_alive(p) for p in pids):
            break
        await asyncio.sleep(0.1)
    assert not [p for p in pids if _alive(p)], "a serving process outlived its supervisor"
    with pytest.raises(aiohttp.ClientError):  # nobody accepts on the port any more
        async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as resp:
            await resp.read()
