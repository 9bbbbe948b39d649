"""The compose topology without Docker (contract section 8): three proxies behind a
real nginx (Debian's package, started here with a generated config), two
workers, mixed JSON and streaming load through nginx with the official SDKs,
every proxy restarted one by one with SIGTERM (a rolling deploy) and one worker
SIGKILLed meanwhile. Every 2xx the clients saw is billed exactly once, no
stream the clients completed was cut, balances are exact, reconcile is clean."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from decimal import Decimal
from pathlib import Path

import pytest

from tests.clients import anthropic_client, openai_client
from tests.conftest import wait_settled
from tests.stack import wait_http
from tests.test_faults import HELLO, assert_books_close
from tests.util import free_port

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
pytestmark = [
    pytest.mark.usefixtures("provider_keys"),
    pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx)"),
]

DRAIN = "1.5"  # seconds; nginx's upstream keep-alive (1 s) is shorter, as it must be


def nginx_config(workdir: Path, port: int, proxies: list[int]) -> Path:
    """deploy/nginx.conf's proxy settings, with a static upstream of local ports."""
    servers = "\n".join(
        f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;" for p in proxies
    )
    user = "user root root;" if os.geteuid() == 0 else ""
    conf = f"""
{user}
worker_processes 2;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    client_max_body_size 33m;
    proxy_request_buffering off;
    upstream meterway {{
{servers}
        keepalive 32;
        keepalive_timeout 1s;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://meterway;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_cache off;
            proxy_connect_timeout 1s;
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries 3;
        }}
    }}
}}
"""
    path = workdir / "nginx.conf"
    path.write_text(conf)
    return path


class Load:
    """Clients sending a mix of requests until stopped; what they saw."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key
        self.ok: list[str] = []  # request ids of 2xx answers, streams read to their end
        self.errors: list[str] = []
        self.stopping = False

    async def openai_json(self, client) -> None:
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=HELLO, max_tokens=20
        )
        assert raw.parse().usage.completion_tokens > 0
        self.ok.append(raw.headers["x-request-id"])

    async def openai_stream(self, client) -> None:
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=HELLO, stream=True, max_tokens=50
        )
        finish = [c.choices[0].finish_reason async for c in raw.parse() if c.choices]
        assert finish and finish[-1] == "stop", "the stream was cut"
        self.ok.append(raw.headers["x-request-id"])

    async def anthropic_stream(self, client) -> None:
        raw = await client.messages.with_raw_response.create(
            model="claude-haiku-4-5", max_tokens=50, messages=HELLO, stream=True
        )
        kinds = [event.type async for event in await raw.parse()]
        assert kinds[-1] == "message_stop", "the stream was cut"
        self.ok.append(raw.headers["x-request-id"])

    async def run(self, n: int) -> None:
        sim = {"x-sim-chunks": "12", "x-sim-delay-ms": "40"}
        # clients retry as the SDKs do by default: a request sent on a kept-alive
        # connection that a draining proxy closes at that moment is answered 502 by
        # nginx, which retries no POST; it never reached the proxy, so a retry is
        # billed once (the billing checks below would catch a double)
        oa, an = (
            openai_client(self.url, self.key, max_retries=2, **sim),
            anthropic_client(self.url, self.key, max_retries=2, **sim),
        )
        kinds = [lambda: self.openai_json(oa), lambda: self.openai_stream(oa)]
        kinds.append(lambda: self.anthropic_stream(an))
        i = n
        while not self.stopping:
            try:
                await kinds[i % 3]()
            except Exception as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            i += 1


async def test_rolling_deploy_behind_nginx(stack, books, pg, private_redis, tmp_path):
    _, redis = private_redis
    workers = [await stack.worker(), await stack.worker()]
    ports = [free_port() for _ in range(3)]
    extra = {"SHUTDOWN_DRAIN_SECONDS": DRAIN, "SHUTDOWN_GRACE_SECONDS": "20"}

    async def start_proxy(port: int):
        proc = await stack._spawn("serve", "--port", str(port), **extra)
        await wait_http(f"http://127.0.0.1:{port}/readyz", timeout=20)
        return proc

    proxies = [await start_proxy(p) for p in ports]
    lb_port = free_port()
    conf = nginx_config(tmp_path, lb_port, ports)
    nginx = await asyncio.create_subprocess_exec(
        NGINX, "-c", str(conf), "-p", str(tmp_path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{lb_port}"
        await wait_http(f"{url}/readyz", timeout=10)
        acct = await books.create("50")
        load = Load(url, acct.key)
        clients = [asyncio.create_task(load.run(i)) for i in range(6)]
        await asyncio.sleep(1.5)
        before = len(load.ok)
        for index, port in enumerate(ports):  # the rolling deploy
            old = proxies[index]
            old.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(old.wait(), 30) == 0
            if index == 1:  # a worker dies meanwhile; the other claims what it held
                await stack.kill(workers[0])
            proxies[index] = await start_proxy(port)
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)
        load.stopping = True
        await asyncio.wait_for(asyncio.gather(*clients), 30)
        assert not load.errors, load.errors[:5]
        assert len(load.ok) > before + 20, "too little traffic went through the restarts"

        await wait_settled(pg, load.ok, timeout=30)
        usage = await assert_books_close(pg, redis, stack, acct.user_id, Decimal(50))
        billed = [r["request_id"] for r in usage]
        assert sorted(billed) == sorted(load.ok)  # every 2xx billed, each exactly once
        rows = await pg.fetch(
            "SELECT outcome, count(*) AS n FROM usage_records WHERE user_id = $1 GROUP BY 1",
            acct.user_id,
        )
        assert {r["outcome"] for r in rows} == {"completed"}, rows
    finally:
        if nginx.returncode is None:
            nginx.send_signal(signal.SIGQUIT)
            try:
                await asyncio.wait_for(nginx.wait(), 10)
            except TimeoutError:
                nginx.kill()
                await nginx.wait()


def test_nginx_config_in_the_repository_is_valid(tmp_path):
    """deploy/nginx.conf as CI checks it (`nginx -t`)."""
    import subprocess

    conf = Path(__file__).resolve().parent.parent / "deploy" / "nginx.conf"
    started = time.monotonic()
    out = subprocess.run(
        [NGINX, "-t", "-q", "-c", str(conf), "-p", str(tmp_path)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert time.monotonic() - started < 10
