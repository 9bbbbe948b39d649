"""Operator pages for providers (contract section 5): every provider with its
kind and base URL, pause (confirmed, with a reason) and resume, the daily
thresholds (a blank field clears one), and adding or removing a provider
(removal confirmed). Every change is audited and heard by every proxy."""

from __future__ import annotations

from aiohttp import web
from redis.exceptions import RedisError

from dashboard.common import (
    FormError,
    actor,
    admin_required,
    confirmed,
    field,
    flash_redirect,
    parse_amount,
    render,
    state,
    take_flash,
)
from shared import daily, invalidation
from shared import provider_config as config
from shared.db import audit
from shared.db import dashboard as q
from shared.db import providers as db
from shared.db.usage import start_of_utc_day

BACK = "/admin/providers"


async def served(request: web.Request) -> list[str]:
    """The names of the providers that are served (built-ins and added ones)."""
    return await config.served_names(state(request).pg)


async def _provider(request: web.Request) -> str:
    name = request.match_info["provider"]
    if name not in await served(request):
        raise web.HTTPNotFound()
    return name


def _fields(spec: config.ProviderSpec) -> dict:
    """A provider as the audit log shows it: fixed header names, never their values."""
    return {"name": spec.name, "kind": spec.kind, "base_url": spec.base_url,
            "auth_header": spec.auth_header,
            "headers": [name for name, _ in spec.headers]}  # fmt: skip


async def _page(request: web.Request, *, error: str | None = None, form: dict | None = None,
                status: int = 200) -> web.Response:  # fmt: skip
    st = state(request)
    specs = await config.list_provider_specs(st.pg, st.settings)
    rows = {r.name: r for r in await db.list_providers(st.pg)}
    spend = await q.provider_spend_since(st.pg, start_of_utc_day())
    cards = [{"spec": s, "row": rows.get(s.name), "spend": spend.get(s.name, 0)} for s in specs]
    return render(request, "admin_providers.html", {
        "title": "Providers", "cards": cards, "kinds": config.KINDS, "error": error,
        "form": form or {}, "default_auth": config.DEFAULT_AUTH_HEADER,
        "flash": await take_flash(request),
    }, status=status)  # fmt: skip


@admin_required
async def providers_page(request: web.Request) -> web.StreamResponse:
    return await _page(request)


@admin_required
async def provider_add(request: web.Request) -> web.StreamResponse:
    """Register a provider: name, kind, base URL, auth header, fixed headers (one a line)."""
    st = state(request)
    form = await request.post()
    values = {n: field(form, n, 4000).strip() for n in ("name", "kind", "base_url", "auth_header")}
    values["headers"] = field(form, "headers", 50_000)
    lines = [line for line in values["headers"].splitlines() if line.strip()]
    try:
        async with st.pg.acquire() as conn, conn.transaction():
            spec = await config.add_provider(conn, values["name"], values["kind"],
                                             values["base_url"], values["auth_header"] or None,
                                             lines)  # fmt: skip
            await audit.record(conn, actor(request), "provider.add", f"provider:{spec.name}",
                               None, _fields(spec))  # fmt: skip
    except config.ProviderConfigError as exc:
        return await _page(request, error=str(exc), form=values, status=400)
    await st.notify(invalidation.PROVIDERS_MESSAGE)
    await flash_redirect(request, BACK, f"Added provider {spec.name} ({spec.kind}): served at"
                         f" /v1/{spec.name}/ within seconds; add a key for it under"
                         " Provider keys.")  # fmt: skip


@admin_required
async def provider_remove(request: web.Request) -> web.StreamResponse:
    """Stop serving an added provider, after a confirmation with a reason (audited)."""
    st = state(request)
    name = await _provider(request)
    before = await config.get_provider_spec(st.pg, name, st.settings)
    if before is None:
        raise web.HTTPNotFound()
    if before.builtin:
        await flash_redirect(
            request, BACK, f"{name} is built in and cannot be removed.", error=True
        )
    reason, page = confirmed(
        request, await request.post(), title=f"Remove provider {name}?",
        button=f"Remove {name}", back=BACK,
        message=f"/v1/{name}/ answers 404 from now on; its keys, thresholds and usage records"
        " stay, and adding it again brings it back.",
    )  # fmt: skip
    if page is not None:
        return page
    try:
        async with st.pg.acquire() as conn, conn.transaction():
            await config.remove_provider(conn, name)
            await audit.record(conn, actor(request), "provider.remove", f"provider:{name}",
                               _fields(before), None, reason)  # fmt: skip
    except config.ProviderConfigError as exc:
        await flash_redirect(request, BACK, str(exc), error=True)
    await st.notify(invalidation.PROVIDERS_MESSAGE)
    await flash_redirect(request, BACK, f"Provider {name} removed.")


@admin_required
async def provider_pause(request: web.Request) -> web.StreamResponse:
    """Pause (after a confirmation with a reason) or resume a provider; audited."""
    st = state(request)
    name = await _provider(request)
    paused = request.match_info["action"] == "pause"
    form = await request.post()
    reason = field(form, "reason", 501).strip() or None
    if paused:
        reason, page = confirmed(
            request, form, title=f"Pause {name}?", button=f"Pause {name}",
            message=f"Every request to {name} gets 429 until it is reactivated.", back=BACK,
        )  # fmt: skip
        if page is not None:
            return page
    note = ""
    async with st.pg.acquire() as conn, conn.transaction():
        await audit.set_paused(conn, actor(request), name, paused, reason)
    if not paused:
        try:
            await daily.mark_resume(st.redis, name)
        except RedisError as exc:
            note = f" (Redis did not take the resume point: {exc})"
    await st.notify(invalidation.PROVIDERS_MESSAGE)
    await flash_redirect(request, BACK, f"{name} {'paused' if paused else 'active'}{note}.")


@admin_required
async def provider_thresholds(request: web.Request) -> web.StreamResponse:
    """Set the daily thresholds; a blank field clears that threshold. Audited."""
    st = state(request)
    name = await _provider(request)
    form = await request.post()
    try:
        warn = parse_amount(field(form, "warn_usd"), "Warn", allow_blank=True, negative=False)
        stop = parse_amount(field(form, "stop_usd"), "Stop", allow_blank=True, negative=False)
    except FormError as exc:
        await flash_redirect(request, BACK, str(exc), error=True)
    async with st.pg.acquire() as conn, conn.transaction():
        await audit.set_thresholds(conn, actor(request), name, warn_usd=warn, stop_usd=stop)
    await st.notify(invalidation.PROVIDERS_MESSAGE)
    await flash_redirect(request, BACK, f"{name}: thresholds saved.")
