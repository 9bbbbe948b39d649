"""The dashboard's aiohttp application: `create_app(settings)` and `run(...)`."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from dashboard import (
    admin_ops,
    admin_providers,
    admin_usage,
    admin_users,
    auth_views,
    billing,
    payments,
    prices,
    user_views,
)
from dashboard.common import STATE, State, headers_middleware, session_middleware
from dashboard.sessions import Invites, SessionStore, Throttle
from shared import redis_client
from shared.balance_view import BalanceView
from shared.config import Settings
from shared.db.pool import create_pool
from shared.http_server import ClientLimits, GuardedAppRunner, serve
from shared.keys import derive_key

HERE = Path(__file__).resolve().parent


def _routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/", user_views.home)
    r.add_get("/login", auth_views.login_page)
    r.add_post("/login", auth_views.login)
    r.add_post("/logout", auth_views.logout)
    r.add_get("/invite/{token}", auth_views.invite_page)
    r.add_post("/invite/{token}", auth_views.invite_submit)
    r.add_get("/keys", user_views.keys_list)
    r.add_post("/keys", user_views.key_create)
    r.add_post("/keys/{key_id}/revoke", user_views.key_revoke)
    r.add_post("/keys/{key_id}/controls", user_views.key_controls_save)
    r.add_get("/usage", user_views.usage)
    r.add_get("/usage.csv", user_views.usage_csv)
    r.add_get("/prices", prices.prices_page)
    r.add_get("/settings", user_views.settings_page)
    r.add_post("/settings", user_views.settings_save)
    r.add_get("/admin/users", admin_users.users_list)
    r.add_post("/admin/users", admin_users.user_create)
    r.add_get("/admin/users/{user_id}", admin_users.user_detail)
    r.add_post("/admin/users/{user_id}/credit", admin_users.user_credit)
    r.add_post("/admin/users/{user_id}/settings", admin_users.user_settings)
    r.add_post("/admin/users/{user_id}/password", admin_users.user_password)
    r.add_post("/admin/users/{user_id}/invite", admin_users.user_invite)
    r.add_post("/admin/users/{user_id}/keys", admin_users.user_key_create)
    r.add_post("/admin/users/{user_id}/keys/{key_id}/controls", admin_users.user_key_controls)
    r.add_post("/admin/users/{user_id}/keys/{key_id}/revoke", admin_users.user_key_revoke)
    r.add_get("/admin/audit", admin_ops.audit_page)
    r.add_get("/admin/usage", admin_usage.usage_search)
    r.add_get("/admin/requests/{request_id}", admin_usage.request_detail)
    r.add_get("/usage/requests/{request_id}", admin_usage.own_request_detail)
    r.add_get("/admin/providers", admin_providers.providers_page)
    r.add_post("/admin/providers", admin_providers.provider_add)
    r.add_post("/admin/providers/{provider}/thresholds", admin_providers.provider_thresholds)
    r.add_post("/admin/providers/{provider}/remove", admin_providers.provider_remove)
    r.add_post("/admin/providers/{provider}/{action:pause|resume}",
               admin_providers.provider_pause)  # fmt: skip
    r.add_get("/admin/provider-keys", admin_ops.provider_keys_page)
    r.add_post("/admin/provider-keys", admin_ops.provider_key_add)
    r.add_post(
        "/admin/provider-keys/{key_id}/{action:disable|enable|remove}",
        admin_ops.provider_key_action,
    )
    r.add_get("/admin/alerts", admin_ops.alerts_page)
    r.add_get("/admin/catalog", admin_ops.catalog_page)
    r.add_get("/admin/system", admin_ops.system_page)
    r.add_post("/admin/reconcile", admin_ops.reconcile_run)
    r.add_get("/billing", billing.billing_page)
    r.add_get("/billing/statement.csv", billing.statement_csv)
    r.add_post("/billing/redeem", billing.redeem)
    r.add_get("/billing/add-credit", payments.add_credit_page)
    r.add_post("/billing/add-credit", payments.add_credit)
    r.add_get("/billing/add-credit/success", payments.add_credit_success)
    r.add_get("/billing/add-credit/cancel", payments.add_credit_cancel)
    r.add_post(payments.WEBHOOK_PATH, payments.stripe_webhook)  # no session, no CSRF: signed
    r.add_get("/admin/users/{user_id}/billing", billing.admin_billing_page)
    r.add_get("/admin/users/{user_id}/billing/statement.csv", billing.admin_statement_csv)
    r.add_get("/admin/codes", billing.codes_page)
    r.add_post("/admin/codes", billing.codes_create)
    r.add_static("/static/", HERE / "static")


def cookie_key(settings: Settings) -> bytes:
    """Session cookies are signed with a key derived from METERWAY_SECRET_KEY;
    without one, a random key (sessions end when the dashboard restarts)."""
    if settings.meterway_secret_key:
        return derive_key(settings.meterway_secret_key, "meterway dashboard sessions v1")
    return secrets.token_bytes(32)


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[headers_middleware, session_middleware],
                          client_max_size=1024 * 1024)  # fmt: skip
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
    )

    async def resources(app: web.Application) -> AsyncIterator[None]:
        pg = await create_pool(settings.database_url, max_size=5)
        redis = redis_client.connect(settings)  # a cluster when REDIS_CLUSTER=1
        app[STATE] = State(
            settings, pg, redis, SessionStore(redis), Throttle(redis), Invites(redis),
            BalanceView(redis), cookie_key(settings),
        )  # fmt: skip
        yield
        await redis.aclose()
        await pg.close()

    app.cleanup_ctx.append(resources)
    _routes(app)
    return app


def make_runner(settings: Settings) -> web.AppRunner:
    """The dashboard app in a runner with the client limits (slow or huge clients)."""
    return GuardedAppRunner(
        create_app(settings), ClientLimits.from_settings(settings), access_log=None
    )


def run(settings: Settings, host: str = "127.0.0.1", port: int | None = None) -> None:
    """Serve the dashboard until interrupted (`meterway dashboard`)."""
    port = port or settings.dashboard_port
    serve(
        create_app(settings), ClientLimits.from_settings(settings), host=host, port=port,
        access_log=None, on_start=lambda: print(f"dashboard on http://{host}:{port}"),
    )  # fmt: skip
