"""The benchmark's data: a throwaway database, a user with credit, keys, and the
checks and waits that read it back (balances exact, everything settled)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from redis.asyncio import Redis

from bench.procs import check_stop
from shared.balance_view import BalanceView
from shared.db import api_keys, providers, users
from shared.db.migrate import migrate
from shared.events import TokenUsage, UsageEvent
from shared.keys import SecretBox, hash_proxy_key, new_proxy_key, visible_prefix
from shared.usage_queue import UsageQueue

SECRET_KEY = "bench-secret-key-that-is-long-enough-0123456789abcdef"
QUEUE_NAME = "meterway:queue"  # the arq queue, for a UsageQueue that takes its name
CREDIT_USD = Decimal("1000000")
SENTINEL = "bench:sentinel"  # gone if anything else flushes our Redis db during the run
PROVIDER_SECRETS = {"openai": "sk-bench-openai-0001", "anthropic": "sk-ant-bench-0001"}


@dataclass
class World:
    database_url: str
    admin_url: str
    db_name: str
    redis_url: str
    user_id: int = 0
    api_key_id: int = 0
    proxy_key: str = ""
    provider_key_ids: dict[str, int] | None = None
    start_balance: Decimal = Decimal(0)


async def create_world(server_url: str, redis_url: str) -> World:
    """Create and migrate `meterway_bench_<hex>`, flush the Redis db, add the bench
    user (with CREDIT_USD), a proxy key and one provider key per provider."""
    name = f"meterway_bench_{secrets.token_hex(4)}"
    url = urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
    world = World(database_url=url, admin_url=server_url, db_name=name, redis_url=redis_url)
    redis = Redis.from_url(redis_url)
    try:
        await redis.flushdb()
        await redis.set(SENTINEL, name)
        await migrate(url)
        conn = await asyncpg.connect(url)
        try:
            box = SecretBox(SECRET_KEY)
            world.provider_key_ids = {}
            for provider, secret in PROVIDER_SECRETS.items():
                world.provider_key_ids[provider] = await providers.add_key(
                    conn, provider, "bench", visible_prefix(secret), box.encrypt(secret)
                )
            user = await users.create(conn, f"bench-{secrets.token_hex(4)}@example.com")
            async with conn.transaction():
                balance, version = await users.change_balance(
                    conn, user.id, CREDIT_USD, kind="topup", note="bench credit"
                )
            await BalanceView(redis).publish(user.id, balance, version)
            key = new_proxy_key()
            row = await api_keys.create(
                conn, user.id, hash_proxy_key(key), visible_prefix(key), name="bench"
            )
        finally:
            await conn.close()
    finally:
        await redis.aclose()
    world.user_id = user.id
    world.api_key_id = row.id
    world.proxy_key = key
    world.start_balance = balance
    return world


async def drop_world(world: World) -> None:
    with contextlib.suppress(Exception):
        redis = Redis.from_url(world.redis_url)
        await redis.flushdb()
        await redis.aclose()
    admin = await asyncpg.connect(world.admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{world.db_name}" WITH (FORCE)')
    finally:
        await admin.close()


async def usage_count(pg: asyncpg.Pool) -> int:
    return await pg.fetchval("SELECT count(*) FROM usage_records")


async def balance_check(pg: asyncpg.Pool, redis: Redis, world: World) -> dict:
    """start - balance == sum(cost_usd), to the last digit; ledger and Redis agree."""
    row = await pg.fetchrow(
        "SELECT u.balance_usd,"
        " (SELECT coalesce(sum(cost_usd), 0) FROM usage_records WHERE user_id = u.id) AS cost,"
        " (SELECT count(*) FROM usage_records WHERE user_id = u.id) AS records,"
        " (SELECT coalesce(sum(amount_usd), 0) FROM ledger WHERE user_id = u.id) AS ledger"
        " FROM users u WHERE u.id = $1",
        world.user_id,
    )
    balance, cost, ledger = row["balance_usd"], row["cost"], row["ledger"]
    held = await BalanceView(redis).held_units(world.user_id)
    sentinel = await redis.get(SENTINEL)
    return {
        "redis_untouched": sentinel is not None and sentinel.decode() == world.db_name,
        "exact": world.start_balance - balance == cost and ledger == balance,
        "start_usd": str(world.start_balance),
        "balance_usd": str(balance),
        "charged_usd": str(world.start_balance - balance),
        "sum_cost_usd": str(cost),
        "ledger_sum_usd": str(ledger),
        "usage_records": row["records"],
        "redis_held_units": held,
    }


@dataclass
class Progress:
    """How settlement went: counts and times (monotonic) at the first new record
    and at the end, with `probe()` readings (e.g. worker CPU) at both."""

    done: bool = False
    first_time: float = 0.0
    first_count: int = 0
    first_probe: int = 0
    end_time: float = 0.0
    end_count: int = 0
    end_probe: int = 0

    @property
    def rate(self) -> float | None:
        """Records per second from the first new record to the last."""
        span = self.end_time - self.first_time
        return (self.end_count - self.first_count) / span if span > 0 else None


async def wait_settled(
    pg: asyncpg.Pool,
    redis: Redis,
    world: World,
    *,
    expected_records: int,
    timeout: float = 300.0,
    stall: float = 30.0,
    probe: Callable[[], int] = lambda: 0,
) -> Progress:
    """Until the usage records reach `expected_records` and no hold or pending
    charge is left in Redis. Gives up after `timeout`, or after `stall` seconds
    without a new record (events lost: waiting longer would not help)."""
    view = BalanceView(redis)
    start = last_change = time.monotonic()
    progress = Progress()
    baseline = last_count = await usage_count(pg)
    while time.monotonic() - start < timeout and time.monotonic() - last_change < stall:
        check_stop()
        count = await usage_count(pg)
        now = time.monotonic()
        if count != last_count:
            if last_count == baseline and not progress.first_time:
                progress.first_time, progress.first_count = now, count
                progress.first_probe = probe()
            last_count, last_change = count, now
            progress.end_time, progress.end_count, progress.end_probe = now, count, probe()
        if count >= expected_records and await view.held_units(world.user_id) == 0:
            progress.done = True
            break
        await asyncio.sleep(0.05)
    return progress


async def enqueue_backlog(redis: Redis, world: World, n: int, *, concurrency: int = 64) -> str:
    """Enqueue `n` usage events straight into the queue, as a proxy would (with no
    pending charge). Returns the request id prefix they share."""
    assert world.provider_key_ids is not None
    # `UsageQueue(redis, queue_name)` (arq queue) or `UsageQueue(redis)` (stream)
    takes_name = "queue_name" in inspect.signature(UsageQueue.__init__).parameters
    queue = UsageQueue(redis, QUEUE_NAME) if takes_name else UsageQueue(redis)
    prefix = f"req_bench_{secrets.token_hex(4)}_"
    next_index = 0

    async def producer() -> None:
        nonlocal next_index
        while next_index < n:
            i = next_index
            next_index += 1
            event = UsageEvent(
                request_id=f"{prefix}{i}",
                user_id=world.user_id,
                api_key_id=world.api_key_id,
                provider="openai",
                provider_key_id=world.provider_key_ids["openai"],
                model="gpt-4o-mini",
                endpoint="chat/completions",
                stream=bool(i % 2),
                usage=TokenUsage(uncached_input_tokens=12 + i % 7, output_tokens=20 + i % 13),
                hold_units=0,
            )
            await queue.enqueue(event, pending_units=0)

    await asyncio.gather(*(producer() for _ in range(concurrency)))
    return prefix
