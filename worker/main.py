"""The metering worker: arq settings, jobs and start-up."""

from __future__ import annotations

import time

import asyncpg
import structlog
from arq import Retry
from arq.connections import ArqRedis, RedisSettings
from arq.cron import cron
from arq.worker import Worker, func
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.balance_view import BalanceView
from shared.catalog import load_catalog
from shared.config import Settings
from shared.db.pool import create_pool
from shared.events import SETTLE_JOB, UsageEvent
from shared.usage_queue import job_deserializer, job_serializer
from worker.mailer import send_pending
from worker.reaper import reap_orphaned_holds
from worker.settle import SettleDeps, settle_event
from worker.spool import drain_spool

log = structlog.get_logger("meterway.worker")

# A Postgres outage must not drop an event: keep retrying for a long time.
MAX_TRIES = 10_000


async def settle_usage(ctx: dict, event_json: str) -> str:
    event = UsageEvent.from_json(event_json)
    try:
        result = await settle_event(ctx["deps"], event)
    except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
        raise Retry(defer=min(2 ** min(ctx["job_try"], 5), 30)) from exc
    return str(result.cost_usd)


async def reap_holds(ctx: dict) -> int:
    return await reap_orphaned_holds(ctx["redis"], ctx["deps"].pg)


async def settle_spooled(ctx: dict) -> int:
    return await drain_spool(ctx["deps"])


async def mail_alerts(ctx: dict) -> int:
    deps: SettleDeps = ctx["deps"]
    return await send_pending(deps.pg, deps.settings)


EVERY_5_SECONDS = set(range(0, 60, 5))


def worker_options(settings: Settings) -> dict:
    timeout = settings.settle_job_timeout

    async def startup(ctx: dict) -> None:
        redis: ArqRedis = ctx["redis"]
        ctx["deps"] = SettleDeps(
            pg=await create_pool(settings.database_url, min_size=1, max_size=10),
            catalog=load_catalog(settings.model_catalog),
            view=BalanceView(redis),
            redis=redis,
            settings=settings,
        )

    async def shutdown(ctx: dict) -> None:
        deps: SettleDeps | None = ctx.get("deps")
        if deps is not None:
            await deps.pg.close()

    return {
        "functions": [
            func(
                settle_usage,
                name=SETTLE_JOB,
                timeout=timeout,
                max_tries=MAX_TRIES,
            )
        ],
        "cron_jobs": [
            # arq re-runs a dead worker's jobs after the longest timeout + 10 s,
            # so no job may have a longer timeout than settlement's
            cron(reap_holds, second=EVERY_5_SECONDS, run_at_startup=True, timeout=timeout),
            cron(settle_spooled, second=EVERY_5_SECONDS, run_at_startup=True, timeout=timeout),
            cron(mail_alerts, second=EVERY_5_SECONDS, run_at_startup=True, timeout=timeout),
        ],
        "on_startup": startup,
        "on_shutdown": shutdown,
        "queue_name": settings.queue_name,
        "redis_settings": RedisSettings.from_dsn(settings.redis_url),
        "keep_result": 60,
        "max_jobs": 50,
        "poll_delay": 0.05,
        "job_serializer": job_serializer,
        "job_deserializer": job_deserializer,
    }


def create_worker(settings: Settings, *, handle_signals: bool = True) -> Worker:
    return Worker(**worker_options(settings), handle_signals=handle_signals)


def run(settings: Settings) -> None:
    """Run a worker; when Redis goes away, wait for it and start again."""
    while True:
        try:
            create_worker(settings).run()
            return
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            log.warning("worker_lost_redis", error=str(exc))
            time.sleep(1.0)
