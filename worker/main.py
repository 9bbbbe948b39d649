"""The metering worker: an arq worker whose start-up launches the usage-stream
consumer (batched settlement) and whose cron jobs reap orphaned holds, settle
spooled events and mail alerts."""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog
from arq.connections import ArqRedis, RedisSettings
from arq.cron import cron
from arq.worker import Worker
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import redis_client, redis_keys
from shared.balance_view import BalanceView
from shared.catalog import load_catalog
from shared.config import Settings
from shared.db.pool import create_pool
from worker import metrics as worker_metrics
from worker import webhooks
from worker.consumer import UsageConsumer
from worker.mailer import send_pending
from worker.reaper import reap_orphaned_holds
from worker.settle import SettleDeps
from worker.spool import drain_spool

log = structlog.get_logger("meterway.worker")


async def reap_holds(ctx: dict) -> int:
    deps: SettleDeps = ctx["deps"]
    return await reap_orphaned_holds(deps.redis, deps.pg, deps.view)


async def settle_spooled(ctx: dict) -> int:
    return await drain_spool(ctx["deps"])


async def mail_alerts(ctx: dict) -> int:
    deps: SettleDeps = ctx["deps"]
    return await send_pending(deps.pg, deps.settings)


EVERY_5_SECONDS = set(range(0, 60, 5))


def worker_options(settings: Settings) -> dict:
    timeout = settings.settle_job_timeout

    async def startup(ctx: dict) -> None:
        # arq's queue may live on another Redis (ARQ_REDIS_URL: always with a cluster)
        redis: ArqRedis = ctx["redis"]
        if settings.redis_cluster or settings.arq_url != settings.redis_url:
            redis = ctx["data_redis"] = redis_client.connect(settings)
        # a cluster pipelines no scripts in redis-py: a batch's releases go by the runner
        runner = ctx["runner"] = (
            redis_client.script_runner(settings) if settings.redis_cluster else None
        )
        ctx["deps"] = deps = SettleDeps(
            pg=await create_pool(settings.database_url, min_size=1, max_size=10),
            catalog=load_catalog(settings.model_catalog),
            view=BalanceView(redis, runner),
            redis=redis,
            settings=settings,
        )
        # two lanes: one batch's Postgres work overlaps the next batch's Python work
        ctx["settlers"] = settlers = [
            UsageConsumer(deps, redis, lane) for lane in range(settings.settle_lanes)
        ]
        ctx["consumers"] = [asyncio.create_task(c.run()) for c in settlers]
        ctx["webhooks"] = asyncio.create_task(webhooks.run(deps.pg, settings))
        if settings.metrics_port:
            ctx["metrics"] = await worker_metrics.start_server(
                worker_metrics.METRICS, redis, deps.pg, settings.proxy_host, settings.metrics_port
            )

    async def shutdown(ctx: dict) -> None:
        # SIGTERM (arq's handler ends the main task, then this runs): the consumers
        # finish the batch in hand and stop reading; one still stuck after the job
        # timeout is cancelled, its batch left pending for another worker to claim
        for settler in ctx.get("settlers", []):
            settler.stop()
        if ctx.get("consumers"):
            _, stuck = await asyncio.wait(ctx["consumers"], timeout=timeout)
            if stuck:
                log.warning("settle_stopped_mid_batch", lanes=len(stuck))
        if "webhooks" in ctx:
            await webhooks.stop(ctx["webhooks"])
        if ctx.get("metrics") is not None:
            await ctx["metrics"].cleanup()
        for consumer in ctx.get("consumers", []):
            consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await consumer
        deps: SettleDeps | None = ctx.get("deps")
        if deps is not None:
            await deps.pg.close()
        if ctx.get("runner") is not None:
            await ctx["runner"].close()
        if ctx.get("data_redis") is not None:
            await ctx["data_redis"].aclose()

    return {
        "functions": [],
        "cron_jobs": [
            # arq re-runs a dead worker's cron job after its timeout + 10 s
            cron(reap_holds, second=EVERY_5_SECONDS, run_at_startup=True, timeout=timeout),
            cron(settle_spooled, second=EVERY_5_SECONDS, run_at_startup=True, timeout=timeout),
            cron(mail_alerts, second=EVERY_5_SECONDS, run_at_startup=True, timeout=timeout),
        ],
        "on_startup": startup,
        "on_shutdown": shutdown,
        "queue_name": redis_keys.ARQ_QUEUE,
        "redis_settings": RedisSettings.from_dsn(settings.arq_url),
        "keep_result": 60,
        "poll_delay": 0.5,
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
