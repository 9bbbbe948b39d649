"""Shared fixtures: a fresh Postgres database, a Redis database, the upstream
simulator, and a running proxy and worker, all over real sockets.

Environment: TEST_DATABASE_URL (a server URL; a throwaway database is created
on it), TEST_REDIS_URL (a whole Redis database is flushed: default db 13).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiohttp import web
from redis.asyncio import Redis

from proxy.app import make_runner
from shared import invalidation
from shared.balance_view import BalanceView
from shared.config import REPO_ROOT, Settings
from shared.db import api_keys, providers, users
from shared.db.migrate import migrate
from shared.keys import SecretBox, hash_proxy_key, new_proxy_key, visible_prefix
from simulator.app import start as start_simulator
from tests import cluster
from tests.stack import Stack
from tests.util import SECRET_KEY, free_port
from worker.main import create_worker

TEST_MODELS = {
    # a model with a markup, to test the model multiplier
    "gpt-4o-markup": {
        "provider": "openai",
        "input_per_mtok": 2.5,
        "output_per_mtok": 10,
        "cache_read_per_mtok": 1.25,
        "multiplier": 1.5,
        "max_output_tokens": 16384,
    },
    # models of providers the tests add with `meterway provider add` (section 5)
    "compat-chat": {
        "provider": "compat",
        "input_per_mtok": 0.59,
        "output_per_mtok": 0.79,
        "max_output_tokens": 8192,
    },
    "compat-claude": {
        "provider": "compat-anthropic",
        "input_per_mtok": 1.1,
        "output_per_mtok": 5.3,
        "max_output_tokens": 8192,
    },
    # no cache prices: cache tokens are priced at the input price
    "claude-plain": {
        "provider": "anthropic",
        "input_per_mtok": 0.8,
        "output_per_mtok": 4,
        "max_output_tokens": 8192,
    },
}


@pytest.fixture(scope="session")
def catalog_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    catalog = json.loads((REPO_ROOT / "model_catalog.json").read_text())
    catalog["models"].update(TEST_MODELS)
    path = tmp_path_factory.mktemp("catalog") / "model_catalog.json"
    path.write_text(json.dumps(catalog))
    return path


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    server = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"meterway_test_{secrets.token_hex(4)}"
    url = urlunsplit(urlsplit(server)._replace(path=f"/{name}"))
    await migrate(url)
    yield url
    admin = await asyncpg.connect(server)
    with contextlib.suppress(Exception):
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await admin.close()


@pytest.fixture(scope="session")
async def redis_url() -> AsyncIterator[str]:
    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
    client = Redis.from_url(url)
    await client.flushdb()
    await client.aclose()
    if cluster.CLUSTER:  # TEST_REDIS_CLUSTER=1: a local 3-master cluster (arq stays on url)
        server = cluster.RedisClusterServer()
        await server.start()
        yield server.url
        await server.destroy()
        return
    yield url


@pytest.fixture(scope="session")
async def pg(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=5)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = cluster.client(redis_url)
    yield client
    await client.aclose()


@dataclass
class Upstream:
    port: int
    runner: web.AppRunner

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def recorded(self) -> list[dict]:
        from simulator import recorded_requests

        return recorded_requests(self.runner.app)

    def clear(self) -> None:
        """Forget the recorded requests (the simulator keeps the last 1000 only)."""
        from simulator.state import RECORDER_KEY

        self.runner.app[RECORDER_KEY].clear()


@pytest.fixture(scope="session")
async def upstream() -> AsyncIterator[Upstream]:
    port = free_port()
    runner = await start_simulator("127.0.0.1", port)
    yield Upstream(port, runner)
    await runner.cleanup()


@pytest.fixture(scope="session")
def settings(database_url: str, redis_url: str, upstream: Upstream, catalog_path: Path) -> Settings:
    return Settings(
        _env_file=None,
        database_url=database_url,
        redis_url=redis_url,
        proxy_port=free_port(),
        upstream_openai_base_url=f"{upstream.base}/openai/v1",
        upstream_anthropic_base_url=f"{upstream.base}/anthropic/v1",
        upstream_gemini_base_url=f"{upstream.base}/gemini",
        model_catalog=catalog_path,
        meterway_secret_key=SECRET_KEY,
        max_request_bytes=1_000_000,
        settle_job_timeout=10,
        # The in-process worker shares the database with the alert tests' own workers.
        # Without an SMTP_URL its mailer would mark their alerts "not mailed"; with one
        # that refuses at once it leaves them for the workers that can mail them.
        smtp_url="smtp://127.0.0.1:9",
        **cluster.settings_overrides(),
    )


PROVIDER_SECRETS = {
    "openai": "sk-upstream-openai-0001",
    "anthropic": "sk-ant-upstream-0001",
    "gemini": "AIza-upstream-gemini-0001",
}


@pytest.fixture(scope="session")
async def provider_keys(pg: asyncpg.Pool) -> dict[str, int]:
    box = SecretBox(SECRET_KEY)
    ids = {}
    for provider, secret in PROVIDER_SECRETS.items():
        ids[provider] = await providers.add_key(
            pg, provider, "main", visible_prefix(secret), box.encrypt(secret)
        )
    return ids


async def start_proxy(settings: Settings) -> tuple[web.AppRunner, str]:
    runner = make_runner(settings)  # with the real client limits of `settings`
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", settings.proxy_port).start()
    return runner, f"http://127.0.0.1:{settings.proxy_port}"


@pytest.fixture(scope="session")
async def proxy_url(settings: Settings, provider_keys: dict[str, int]) -> AsyncIterator[str]:
    runner, url = await start_proxy(settings)
    yield url
    await runner.cleanup()


@pytest.fixture(scope="session")
async def worker(settings: Settings) -> AsyncIterator[None]:
    w = create_worker(settings, handle_signals=False)
    task = asyncio.create_task(w.async_run())
    yield
    await w.close()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@dataclass
class Account:
    user_id: int
    email: str
    key: str
    api_key_id: int


class Accounts:
    """Creates users with credit and keys, the way the CLI does."""

    def __init__(self, pg: asyncpg.Pool, redis: Redis) -> None:
        self.pg = pg
        self.redis = redis

    async def create(
        self, credit: str = "10", *, rate_multiplier: str = "1", rpm: int | None = None
    ) -> Account:
        email = f"user-{secrets.token_hex(5)}@example.com"
        user = await users.create(self.pg, email, rate_multiplier=Decimal(rate_multiplier))
        if Decimal(credit):
            await self.top_up(user.id, Decimal(credit))
        key = new_proxy_key()
        row = await api_keys.create(
            self.pg, user.id, hash_proxy_key(key), visible_prefix(key), name="t", rpm_limit=rpm
        )
        return Account(user.id, email, key, row.id)

    async def top_up(self, user_id: int, amount: Decimal) -> None:
        async with self.pg.acquire() as conn, conn.transaction():
            balance, version = await users.change_balance(conn, user_id, amount, kind="topup")
        await BalanceView(self.redis).publish(user_id, balance, version)

    async def balance(self, user_id: int) -> Decimal:
        return await self.pg.fetchval("SELECT balance_usd FROM users WHERE id = $1", user_id)

    async def revoke(self, account: Account) -> None:
        key_hash = hash_proxy_key(account.key)
        await api_keys.revoke_by_hash(self.pg, key_hash)
        await invalidation.publish(self.redis, invalidation.key_message(key_hash))


@pytest.fixture(autouse=True)
async def _close_sdk_clients() -> AsyncIterator[None]:
    from tests.clients import close_all

    yield
    await close_all()


@pytest.fixture
async def accounts(pg: asyncpg.Pool, redis: Redis) -> Accounts:
    return Accounts(pg, redis)


async def wait_settled(pg: asyncpg.Pool, request_ids: list[str], timeout: float = 15.0) -> None:
    """Wait until every request id has a usage record (the worker settled it)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        count = await pg.fetchval(
            "SELECT count(*) FROM usage_records WHERE request_id = ANY($1::text[])", request_ids
        )
        if count == len(request_ids):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"only {count} of {len(request_ids)} requests settled")
        await asyncio.sleep(0.05)


async def wait_holds_released(redis: Redis, user_id: int, timeout: float = 10.0) -> None:
    view = BalanceView(redis)
    deadline = asyncio.get_running_loop().time() + timeout
    while await view.held_units(user_id):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("holds were not released")
        await asyncio.sleep(0.05)


# --- real processes (fault, alert and limit tests) ------------------------------------------


@pytest.fixture
async def private_redis():
    server = cluster.private_server()
    await server.start()
    client = cluster.client(server.url)
    yield server, client
    await client.aclose()
    await (server.destroy() if hasattr(server, "destroy") else server.stop())


@pytest.fixture
async def stack(database_url, private_redis, upstream, catalog_path):
    server, _ = private_redis
    s = Stack(database_url, server.url, upstream.base, str(catalog_path))
    s.extra_env = getattr(server, "env", {})  # a cluster's settings
    yield s
    await s.stop_all()


@pytest.fixture
def books(pg, private_redis):
    return Accounts(pg, private_redis[1])
