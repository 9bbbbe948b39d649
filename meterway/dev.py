"""`meterway dev`: everything for local use in one process.

Migrates, then runs the proxy and a worker (and the dashboard once it exists).
When no real provider key is configured it also runs the upstream simulator,
points both providers at it, and prints a demo key with a curl line that works
offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
from decimal import Decimal
from pathlib import Path

import asyncpg
from aiohttp import web
from argon2 import PasswordHasher

from meterway.context import CommandError
from meterway.embedded import resolve_services
from shared.config import REPO_ROOT, Settings
from shared.db import api_keys, providers, users
from shared.db.migrate import migrate
from shared.keys import SecretBox, hash_proxy_key, new_proxy_key, visible_prefix

DEV_EMAIL = "dev@meterway.local"
DEV_CREDIT = Decimal("10")
DEV_PASSWORD = "meterway-dev"
SIMULATOR_KEY_NAME = "dev-simulator"
SIMULATOR_PORT = 9100
_SECRET_FILE = REPO_ROOT / ".meterway-dev" / "secret-key"


def _dev_secret(settings: Settings) -> str:
    """Keep one secret key across dev runs, so stored provider keys stay readable."""
    if settings.meterway_secret_key:
        return settings.meterway_secret_key
    path = Path(_SECRET_FILE)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


async def _prepare_data(settings: Settings, box: SecretBox, simulate: bool) -> str:
    """Create the demo user, its credit and a fresh key; returns the key."""
    conn = await asyncpg.connect(settings.database_url)
    try:
        if simulate:
            existing = {k.provider for k in await providers.list_keys(conn)}
            for provider in ("openai", "anthropic", "gemini"):
                if provider not in existing:
                    secret = f"sk-sim-{provider}-{secrets.token_hex(8)}"
                    await providers.add_key(
                        conn,
                        provider,
                        SIMULATOR_KEY_NAME,
                        visible_prefix(secret),
                        box.encrypt(secret),
                    )
        user = await users.by_email(conn, DEV_EMAIL) or await users.create(
            conn, DEV_EMAIL, is_admin=True, password_hash=PasswordHasher().hash(DEV_PASSWORD)
        )
        if user.balance_usd <= 0:
            async with conn.transaction():
                await users.change_balance(
                    conn, user.id, DEV_CREDIT, kind="topup", note="dev credit"
                )
        key = new_proxy_key()
        await api_keys.create(conn, user.id, hash_proxy_key(key), visible_prefix(key), name="dev")
        return key
    finally:
        await conn.close()


async def _needs_simulator(settings: Settings) -> bool:
    conn = await asyncpg.connect(settings.database_url)
    try:
        keys = await providers.list_keys(conn)
    finally:
        await conn.close()
    return all(k.name == SIMULATOR_KEY_NAME for k in keys)


async def run_dev(settings: Settings, *, simulator_port: int = SIMULATOR_PORT) -> None:
    from dashboard.app import create_app as create_dashboard
    from proxy.app import create_app
    from simulator.app import start as start_simulator
    from worker.main import create_worker

    _quiet_while_idle()
    settings, embedded = resolve_services(settings)
    try:
        await migrate(settings.database_url)
    except (OSError, asyncpg.PostgresError) as exc:
        raise CommandError(f"cannot reach Postgres at {settings.database_url}: {exc}") from exc
    settings = settings.model_copy(update={"meterway_secret_key": _dev_secret(settings)})
    runners: list[web.AppRunner] = []
    simulate = await _needs_simulator(settings)
    if simulate:
        runners.append(await start_simulator("127.0.0.1", simulator_port))
        base = f"http://127.0.0.1:{simulator_port}"
        settings = settings.model_copy(
            update={
                "upstream_openai_base_url": f"{base}/openai/v1",
                "upstream_anthropic_base_url": f"{base}/anthropic/v1",
                "upstream_gemini_base_url": f"{base}/gemini",
            }
        )
    key = await _prepare_data(settings, SecretBox(settings.require_secret_key()), simulate)
    stripe_sim = None
    if settings.stripe_secret_key is None:  # card top-ups against the Stripe simulator
        settings, stripe_sim, stripe_runner = await _start_stripe_simulator(
            settings, simulator_port + 100
        )
        runners.append(stripe_runner)

    proxy = web.AppRunner(create_app(settings), access_log=None)
    await proxy.setup()
    await web.TCPSite(proxy, settings.proxy_host, settings.proxy_port).start()
    runners.append(proxy)
    dashboard = web.AppRunner(create_dashboard(settings), access_log=None)
    await dashboard.setup()
    await web.TCPSite(dashboard, settings.proxy_host, settings.dashboard_port).start()
    runners.append(dashboard)
    worker = create_worker(settings, handle_signals=False)
    worker_task = asyncio.create_task(worker.async_run())

    _print_welcome(settings, key, simulate)
    if stripe_sim is not None:
        print(
            f"Card top-ups: http://{settings.proxy_host}:{settings.dashboard_port}/billing/add-credit"
            f" (against the Stripe simulator on {settings.stripe_api_base})\n",
            flush=True,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await worker.close()
    worker_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await worker_task
    for runner in reversed(runners):
        await runner.cleanup()
    del embedded  # embedded servers stop when released


def _quiet_while_idle() -> None:
    """Keep the welcome on screen: arq's start-up banner and its line per cron run
    (several a second) are off; what the jobs log when they do something stays,
    as do warnings and errors."""
    logging.getLogger("arq").setLevel(logging.WARNING)


async def _start_stripe_simulator(settings: Settings, port: int):
    """The Stripe API simulator, with settings that point the dashboard at it and a
    webhook secret made for this run; its checkout page pays into the dashboard."""
    from pydantic import SecretStr

    from simulator.stripe_api import StripeSim
    from simulator.stripe_api import start as start_stripe

    secret, webhook_secret = "sk_test_meterway_dev", "whsec_" + secrets.token_hex(24)
    dashboard = f"http://{settings.proxy_host}:{settings.dashboard_port}"
    sim = StripeSim(secret, webhook_secret, f"{dashboard}/webhooks/stripe")
    runner = await start_stripe("127.0.0.1", port, sim)
    settings = settings.model_copy(
        update={
            "stripe_secret_key": SecretStr(secret),
            "stripe_webhook_secret": SecretStr(webhook_secret),
            "stripe_api_base": f"http://127.0.0.1:{port}",
        }
    )
    return settings, sim, runner


def _print_welcome(settings: Settings, key: str, simulate: bool) -> None:
    base = f"http://{settings.proxy_host}:{settings.proxy_port}"
    upstream = "the built-in upstream simulator" if simulate else "the configured providers"
    print(
        f"""
Meterway is running at {base} (upstream: {upstream})
Demo user {DEV_EMAIL}; its new API key:

    {key}

Try it:

    curl {base}/v1/openai/chat/completions \\
      -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\
      -d '{{"model": "gpt-4o", "messages": [{{"role": "user", "content": "Hello"}}]}}'

    curl {base}/v1/account -H "Authorization: Bearer {key}"

Docs: {base}/docs   Dashboard: http://{settings.proxy_host}:{settings.dashboard_port}
(sign in as {DEV_EMAIL} with password "{DEV_PASSWORD}")   Stop with Ctrl-C.
""",
        flush=True,
    )
