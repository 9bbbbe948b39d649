"""The proxy's aiohttp application: routes, start-up and shutdown. Nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import structlog
from aiohttp import web
from redis.asyncio import Redis

from proxy import docs
from proxy.account import account, account_usage
from proxy.account_key import account_key
from proxy.auth import KeyCache
from proxy.dispatch import fixed_path, provider_path
from proxy.holds import Holds
from proxy.keypool import KeyPool
from proxy.listener import listen_for_invalidations, refresh_periodically
from proxy.metrics import CONTENT_TYPE, Metrics
from proxy.middleware import refusals_for, request_context
from proxy.models import not_found
from proxy.readiness import READINESS, Readiness, readyz
from proxy.redeem import redeem
from proxy.routes import exact_paths
from proxy.state import GATEWAY, SETTINGS, Gateway
from proxy.upstream import UpstreamClient
from shared import redis_client
from shared.balance_view import BalanceView
from shared.catalog import load_catalog
from shared.config import Settings
from shared.db.pool import create_pool
from shared.http_server import ClientLimits, Drain, GuardedAppRunner, serve
from shared.keys import SecretBox
from shared.provider_config import BUILTINS
from shared.usage_queue import UsageQueue

log = structlog.get_logger("meterway.proxy")


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[request_context], client_max_size=settings.max_request_bytes)
    app[SETTINGS] = settings
    app[READINESS] = Readiness()
    app.cleanup_ctx.append(_lifecycle)
    _add_routes(app)
    return app


def _add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/v1/account", account)
    r.add_get("/v1/account/usage", account_usage)
    r.add_get("/v1/account/key", account_key)
    r.add_post("/v1/account/redeem", redeem)
    r.add_route("*", "/v1/account/{tail:.*}", not_found)
    # every provider, built in or added, by name (contract section 5); the
    # built-in providers' metered paths also as exact paths (found in one lookup)
    for name in BUILTINS:  # a built-in provider's kind is its name
        for tail in exact_paths(name):
            r.add_route("*", f"/v1/{name}/{tail}", fixed_path(name, tail))
    r.add_route("*", "/v1/{provider}/{tail:.*}", provider_path)
    r.add_route("*", "/v1/{tail:.*}", not_found)
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/metrics", metrics)
    r.add_get("/docs", docs.docs_page)
    r.add_get("/docs/pricing", docs.pricing_page)
    r.add_get("/public/{path:.+}", docs.public_file)  # proxy/static/ only


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def metrics(request: web.Request) -> web.Response:
    body = request.app[GATEWAY].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    catalog = load_catalog(settings.model_catalog)
    redis = redis_client.connect(
        settings, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
    )
    listener_redis = Redis.from_url(settings.redis_url, socket_connect_timeout=2)
    runner = redis_client.script_runner(settings)  # the two scripts of every request
    pg = await create_pool(settings.database_url, min_size=1, max_size=8)
    upstream = UpstreamClient(
        connect_timeout=settings.upstream_connect_timeout,
        read_timeout=settings.upstream_read_timeout,
    )
    box = SecretBox(settings.meterway_secret_key) if settings.meterway_secret_key else None
    gw = Gateway(
        settings=settings,
        catalog=catalog,
        redis=redis,
        pg=pg,
        upstream=upstream,
        keys=KeyCache(pg),
        holds=Holds(BalanceView(redis, runner), pg, settings.hold_ttl_seconds),
        pool=KeyPool(box, settings),
        queue=UsageQueue(redis, runner),
        metrics=Metrics(),
    )
    await gw.pool.load(pg)
    app[GATEWAY] = gw
    app[READINESS].start(redis)
    tasks = [
        asyncio.create_task(listen_for_invalidations(gw, listener_redis)),
        # a missed invalidation still reaches routing within 5 s (contract section 5)
        asyncio.create_task(refresh_periodically(gw, every=4.0)),
    ]
    yield
    if gw.background:  # usage events of requests cut short by the shutdown
        await asyncio.wait(gw.background, timeout=10)
    await app[READINESS].stop()
    await gw.holds.close()
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await upstream.close()
    await pg.close()
    await redis.aclose()
    await listener_redis.aclose()
    await runner.close()


def make_runner(settings: Settings) -> web.AppRunner:
    """The proxy app in a runner with the client limits (slow or huge clients)."""
    app = create_app(settings)
    return GuardedAppRunner(
        app,
        ClientLimits.from_settings(settings),
        error_response=refusals_for(app),
        access_log=None,
    )


def run(settings: Settings, host: str, port: int, *, sock: socket.socket | None = None) -> None:
    """Serve until SIGTERM, then drain (contract section 8): /readyz 503 at once,
    serving on for SHUTDOWN_DRAIN_SECONDS, then the listener closes and requests
    in flight get SHUTDOWN_GRACE_SECONDS; streams still running then are cut at
    the upstream side, so the relay ends and bills them as broken streams."""
    app = create_app(settings)

    def cut_streams() -> None:
        gw = app.get(GATEWAY)
        if gw is not None:
            cut = gw.upstream.break_busy("proxy shutting down: grace period over")
            log.warning("shutdown_grace_expired", upstream_exchanges_cut=cut)

    serve(
        app,
        ClientLimits.from_settings(settings),
        host=host,
        port=port,
        error_response=refusals_for(app),
        access_log=None,
        sock=sock,
        drain=Drain.from_settings(
            settings, on_drain=app[READINESS].drain, on_grace_expired=cut_streams
        ),
    )
