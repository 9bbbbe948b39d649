"""Operator pages: providers, provider keys, alerts log, model catalog, system."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from aiohttp import web

from dashboard import proxy_metrics
from dashboard.admin_providers import served
from dashboard.common import (
    SESSION_KEY,
    State,
    actor,
    admin_required,
    confirmed,
    field,
    flash_redirect,
    has_control,
    int_param,
    log,
    page_number,
    query_text,
    render,
    state,
    take_flash,
)
from shared import invalidation, provider_state, redis_keys, usage_queue
from shared.catalog import load_catalog
from shared.db import audit
from shared.db import dashboard as q
from shared.db import providers as db
from shared.db.usage import start_of_utc_day
from shared.keys import SecretBox, visible_prefix
from shared.reconcile import find_differences


@admin_required
async def provider_keys_page(request: web.Request) -> web.StreamResponse:
    st = state(request)
    cooling = await provider_state.cooling_key_ids(st.redis)
    rows = [
        {"id": k.id, "provider": k.provider, "name": k.name, "prefix": k.prefix,
         "status": provider_state.key_status(k.status, k.id, cooling),
         "created_at": k.created_at}
        for k in await db.list_keys(st.pg)
    ]  # fmt: skip
    return render(request, "admin_provider_keys.html", {"title": "Provider keys", "rows": rows,
                  "providers": await served(request),
                  "flash": await take_flash(request)})  # fmt: skip


@admin_required
async def provider_key_add(request: web.Request) -> web.StreamResponse:
    st = state(request)
    form = await request.post()
    provider = field(form, "provider", 100)
    secret = field(form, "secret", 4097).strip()
    name = field(form, "name", 81).strip()
    if provider not in await served(request):
        await flash_redirect(request, "/admin/provider-keys", "Choose a provider.", error=True)
    if (len(secret) < 8 or len(secret) > 4096 or not secret.isascii() or not secret.isprintable()
            or any(c.isspace() for c in secret)):  # fmt: skip
        await flash_redirect(
            request, "/admin/provider-keys", "That does not look like a key.", error=True
        )
    if len(name) > 80 or has_control(name):
        await flash_redirect(request, "/admin/provider-keys", "The name must be at most"
                             " 80 characters, no control characters.", error=True)  # fmt: skip
    try:
        box = SecretBox(st.settings.require_secret_key())
    except RuntimeError as exc:
        await flash_redirect(request, "/admin/provider-keys", str(exc), error=True)
    prefix = visible_prefix(secret)
    async with st.pg.acquire() as conn, conn.transaction():
        key_id = await db.add_key(conn, provider, name, prefix, box.encrypt(secret))
        await audit.record(conn, actor(request), "provider_key.add", f"provider_key:{key_id}",
                           None, {"provider": provider, "name": name, "prefix": prefix,
                                  "status": "active"})  # fmt: skip
    await st.notify(invalidation.PROVIDERS_MESSAGE)
    await flash_redirect(request, "/admin/provider-keys",
                         f"Added {provider} key {key_id} ({visible_prefix(secret)}…).")  # fmt: skip


@admin_required
async def provider_key_action(request: web.Request) -> web.StreamResponse:
    """Enable, or (after a confirmation with a reason) disable or remove; audited."""
    st = state(request)
    key_id = int_param(request, "key_id")
    action = request.match_info["action"]
    before = await audit.provider_key_fields(st.pg, key_id)
    if before is None:
        raise web.HTTPNotFound()
    form = await request.post()
    reason = None
    if action != "enable":
        what = f"{before['provider']} key {before['name'] or key_id} ({before['prefix']}…)"
        reason, page = confirmed(
            request, form, title=f"{action.capitalize()} provider key {key_id}?",
            button=f"{action.capitalize()} key",
            message=f"{what} is {'deleted for good' if action == 'remove' else 'no longer used'}"
            " for upstream requests.", back="/admin/provider-keys",
        )  # fmt: skip
        if page is not None:
            return page
    async with st.pg.acquire() as conn, conn.transaction():
        if action == "remove":
            done, after = await db.remove_key(conn, key_id), None
        else:
            status = "disabled" if action == "disable" else "active"
            done = await db.set_key_status(conn, key_id, status, "set by operator")
            after = {**before, "status": status}
        if done:
            await audit.record(conn, actor(request), f"provider_key.{action}",
                               f"provider_key:{key_id}", before, after, reason)  # fmt: skip
    if not done:
        raise web.HTTPNotFound()
    await st.notify(invalidation.PROVIDERS_MESSAGE)
    verb = {"remove": "removed", "disable": "disabled", "enable": "enabled"}[action]
    await flash_redirect(request, "/admin/provider-keys", f"Provider key {key_id} {verb}.")


RULE_NAMES = {
    "user_daily_spend": "Daily spend alert",
    "user_low_balance": "Low balance",
    "provider_daily_warn": "Provider daily spend warning",
    "provider_auto_paused": "Provider paused automatically",
    "provider_key_disabled": "Provider key disabled",
}
ALERTS_PAGE = 50


@admin_required
async def alerts_page(request: web.Request) -> web.StreamResponse:
    """The alerts log, paged, with readable rule names and subjects (emails, not ids)."""
    st = state(request)
    page = page_number(request)
    rows = await st.pg.fetch(
        "SELECT a.id, a.rule, a.subject, a.day, a.message, a.recipients, a.created_at,"
        " a.emailed_at, a.email_error, a.webhook_state, a.webhook_attempts, a.webhook_error,"
        " u.email AS user_email, pk.provider AS key_provider, pk.name AS key_name,"
        " pk.prefix AS key_prefix FROM alerts a LEFT JOIN users u"
        " ON a.subject LIKE 'user:%' AND u.id::text = substr(a.subject, 6)"
        " LEFT JOIN provider_keys pk"
        " ON a.subject LIKE 'provider\\_key:%' AND pk.id::text = substr(a.subject, 14)"
        " ORDER BY a.id DESC LIMIT $1 OFFSET $2",
        ALERTS_PAGE + 1,
        (page - 1) * ALERTS_PAGE,
    )
    return render(request, "admin_alerts.html", {"title": "Alerts log", "rows": rows[:ALERTS_PAGE],
                  "rules": RULE_NAMES, "page": page, "more": len(rows) > ALERTS_PAGE,
                  "query": {}})  # fmt: skip


@admin_required
async def catalog_page(request: web.Request) -> web.StreamResponse:
    try:
        catalog = load_catalog(state(request).settings.model_catalog)
        models, error = sorted(catalog.models.items(), key=lambda m: (m[1].provider, m[0])), None
    except ValueError as exc:
        models, error = [], str(exc)
    return render(request, "admin_catalog.html", {"title": "Model catalog", "models": models,
                  "error": error})  # fmt: skip


def _age(then: datetime | None) -> str:
    if then is None:
        return "-"
    seconds = max(0, int((datetime.now(UTC) - then).total_seconds()))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


async def queue_stats(st: State) -> tuple[int, datetime | None]:
    """Unsettled usage events and when the oldest was queued: stream entries are
    deleted once settled, and their ids start with their epoch milliseconds."""
    depth, oldest_ms = await usage_queue.queue_depth(st.redis)  # every shard's stream
    if oldest_ms is None:
        return depth, None
    return depth, datetime.fromtimestamp(oldest_ms / 1000, UTC)


async def _health(st: State) -> list[tuple[str, str, bool]]:
    """(what, state, ok) of Postgres, Redis, the workers and the dead letters;
    each probe fails alone (an unreachable Redis does not hide Postgres)."""
    checks: list[tuple[str, str, bool]] = []
    try:
        await st.pg.fetchval("SELECT 1")
        checks.append(("Postgres", "reachable", True))
    except Exception as exc:
        checks.append(("Postgres", f"unreachable: {str(exc)[:120]}", False))
    try:
        await st.redis.ping()
        checks.append(("Redis", "reachable", True))
    except Exception as exc:
        checks.append(("Redis", f"unreachable: {str(exc)[:120]}", False))
        return checks
    try:
        consumers = await usage_queue.consumers(st.redis)
        live = [c for c in consumers if int(c.get("idle", 10**9)) < 60_000]
        checks.append(("Workers (settling consumers seen in the last minute)",
                       f"{len(live)} of {len(consumers)}", bool(live)))  # fmt: skip
    except Exception:
        checks.append(("Workers", "no worker has joined the usage stream", False))
    try:
        dead = await st.redis.xlen(redis_keys.USAGE_DEAD_LETTERS)
        checks.append(("Dead letters (events no worker could settle)", f"{dead}", dead == 0))
    except Exception as exc:
        checks.append(("Dead letters", f"unknown: {str(exc)[:80]}", False))
    return checks


@admin_required
async def system_page(request: web.Request) -> web.StreamResponse:
    st = state(request)
    health = await _health(st)
    try:
        depth, oldest_queued = await queue_stats(st)
    except Exception:
        depth, oldest_queued = -1, None
    stats = await q.system_stats(st.pg, start_of_utc_day())
    facts = [
        ("Queue depth (unsettled usage events)", f"{depth:,}" if depth >= 0 else "unknown"),
        ("Settlement lag (oldest queued event)", _age(oldest_queued)
         + (" ago" if oldest_queued else "")),
        ("Spooled events (saved while Redis was down)", f"{stats['spooled']:,}"),
        ("Oldest spooled event", _age(stats["oldest_spooled"])
         + (" ago" if stats["oldest_spooled"] else "")),
        ("Usage records today (UTC)", f"{stats['records_today']:,}"),
        ("Estimated usage records today", f"{stats['estimated_today']:,}"),
        ("Orphaned holds released today", f"{stats['orphaned_today']:,}"),
    ]  # fmt: skip
    try:
        cooling = await provider_state.cooling_key_ids(st.redis)
    except Exception:
        cooling = set()
    keys = [{"id": k.id, "provider": k.provider, "name": k.name, "prefix": k.prefix,
             "status": provider_state.key_status(k.status, k.id, cooling)}
            for k in await db.list_keys(st.pg)]  # fmt: skip
    try:
        rates = await proxy_metrics.collect(proxy_metrics.metrics_urls(st.settings), st.redis)
    except Exception as exc:  # the page loads whatever the proxies do
        log.warning("proxy_metrics_unread", error=str(exc)[:200])
        rates = proxy_metrics.Rates(failed=[("proxies", str(exc)[:120])])
    names = set(await served(request))
    providers = [p for p in await db.list_providers(st.pg) if p.name in names]
    return render(request, "admin_system.html", {"title": "System", "facts": facts,
                  "rates": rates, "health": health, "keys": keys, "providers": providers,
                  "reconcile": await st.sessions.pop_flash(request[SESSION_KEY]),
                  "now": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())})  # fmt: skip


@admin_required
async def reconcile_run(request: web.Request) -> web.StreamResponse:
    """`meterway reconcile` from the System page; its result is shown there."""
    st = state(request)
    async with st.pg.acquire() as conn:
        problems = await find_differences(conn, st.redis)
        await audit.record(conn, actor(request), "reconcile.run", "system", None,
                           {"differences": len(problems)})  # fmt: skip
    if problems:
        shown = problems[:50]
        more = f" (and {len(problems) - 50} more)" if len(problems) > 50 else ""
        text = f"Reconcile: {len(problems)} difference(s){more}:\n" + "\n".join(shown)
    else:
        text = "Reconcile: ledger, usage records and Redis balances agree."
    await flash_redirect(request, "/admin/system", text)


AUDIT_PAGE = 50


@admin_required
async def audit_page(request: web.Request) -> web.StreamResponse:
    """The audit log, newest first, filtered by days, actor, action and subject; paged."""
    days_text = query_text(request, "days", 6).strip() or "7"
    days = int(days_text) if days_text.isdigit() and 0 < int(days_text) <= 36_500 else 7
    actor_q = query_text(request, "actor", 200).strip()
    action_q = query_text(request, "action", 60).strip()
    subject_q = query_text(request, "subject", 200).strip()
    page = page_number(request)
    rows = await audit.recent(state(request).pg, days=days, actor=actor_q or None,
                              action=action_q or None, subject=subject_q or None,
                              limit=AUDIT_PAGE + 1, offset=(page - 1) * AUDIT_PAGE)  # fmt: skip
    more = len(rows) > AUDIT_PAGE
    filters = {"days": days, "actor": actor_q, "action": action_q, "subject": subject_q}
    return render(request, "admin_audit.html", {
        "title": "Audit log", "rows": rows[:AUDIT_PAGE], "filters": filters,
        "actions": audit.ACTIONS, "page": page, "more": more,
        "query": {k: v for k, v in filters.items() if v},
    })  # fmt: skip
