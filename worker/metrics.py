"""The worker's Prometheus metrics (contract section 9), on `GET /metrics` at
`PROXY_HOST:METRICS_PORT` when `METRICS_PORT` is set.

- `meterway_settled_events_total`: usage events charged (a redelivered event,
  settled before, is not counted again);
- `meterway_settled_usd_total{provider,model}`: what they were charged. Money
  is Decimal everywhere; a Prometheus counter is a float, so each batch's exact
  Decimal sum per provider and model is converted at the last moment (a metric,
  never a balance);
- `meterway_dead_letters_total`: events moved to `mw:usage:dead`;
- `meterway_usage_queue_depth` and `meterway_settlement_lag_seconds` (the age
  of the oldest unsettled usage event, queued in Redis or spooled in Postgres;
  0 when none), both measured when scraped.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from decimal import Decimal

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import generate_latest

from shared import usage_queue

log = structlog.get_logger("meterway.worker.metrics")


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.settled_events = Counter(
            "meterway_settled_events", "Usage events settled (charged once).", registry=r
        )
        self.settled_usd = Counter(
            "meterway_settled_usd",
            "USD charged for settled usage events, by provider and model.",
            ["provider", "model"],
            registry=r,
        )
        self.dead_letters = Counter(
            "meterway_dead_letters",
            "Usage events no worker can settle, moved to the dead-letter stream.",
            registry=r,
        )
        self.queue_depth = Gauge(
            "meterway_usage_queue_depth", "Usage events queued and not settled yet.", registry=r
        )
        self.lag = Gauge(
            "meterway_settlement_lag_seconds",
            "Age of the oldest unsettled usage event (0 when none).",
            registry=r,
        )
        self._usd: dict[tuple[str, str], object] = {}  # cached label children

    def count_settled(self, charged: Iterable, costs: dict[str, Decimal]) -> None:
        """After a batch commits: its newly charged events and their exact costs."""
        totals: dict[tuple[str, str], Decimal] = {}
        n = 0
        for event in charged:
            key = (event.provider, event.model)
            totals[key] = totals.get(key, Decimal(0)) + costs[event.request_id]
            n += 1
        if not n:
            return
        self.settled_events.inc(n)
        for key, total in totals.items():
            child = self._usd.get(key)
            if child is None:
                child = self._usd[key] = self.settled_usd.labels(*key)
            child.inc(float(total))  # the one float: a metric, at the last moment

    async def measure(self, redis, pg) -> None:
        """Queue depth and settlement lag, now."""
        depth, first_ms = await usage_queue.queue_depth(redis)
        now = time.time()
        oldest = now
        if first_ms is not None:
            oldest = first_ms / 1000
        spooled = await pg.fetchval(
            "SELECT extract(epoch FROM min(created_at)) FROM spooled_events"
        )
        if spooled is not None:
            oldest = min(oldest, float(spooled))
        self.queue_depth.set(depth)
        self.lag.set(max(0.0, now - oldest))

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS = WorkerMetrics()  # this process's; settle and consumer count into it


async def start_server(metrics: WorkerMetrics, redis, pg, host: str, port: int):
    """Serve `GET /metrics`; returns the runner to clean up, or None when the
    port is taken (logged: settling goes on without metrics)."""

    async def handle(request: web.Request) -> web.Response:
        try:
            await metrics.measure(redis, pg)
        except Exception as exc:  # Redis or Postgres away: the counters still answer
            log.warning("metrics_measure_failed", error=str(exc)[:200])
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        log.error("metrics_port_unavailable", host=host, port=port, error=str(exc))
        await runner.cleanup()
        return None
    return runner
