"""`meterway provider ...` and `provider-key ...`: upstream providers and keys."""

from __future__ import annotations

import json
import os
import sys
from typing import TextIO

from redis.exceptions import RedisError

from meterway.commands.accounts import amount_arg
from meterway.context import CommandError, Context
from shared import daily, invalidation, provider_state
from shared.db import audit
from shared.db import providers as db
from shared.db.usage import start_of_utc_day
from shared.keys import SecretBox, visible_prefix
from shared.money import usd_display, usd_str
from shared.provider_config import list_provider_specs, served_names


async def check_provider(ctx: Context, name: str) -> str:
    names = await served_names(ctx.pg)
    if name not in names:
        raise CommandError(f"unknown provider {name!r}: use one of {', '.join(names)}")
    return name


STDIN = "-"


def read_secret(
    positional: str | None,
    env_var: str | None,
    *,
    stdin: TextIO | None = None,
    environ: dict[str, str] | None = None,
) -> str:
    """The provider key's secret from exactly one source: `-` (stdin, one
    trailing newline stripped), `--secret-env VAR`, or the positional SECRET
    (kept for compatibility; it shows in `ps` and shell history). Errors never
    contain the secret."""
    if (positional is None) == (env_var is None):
        raise CommandError(
            "give the secret exactly once: '-' to read it from stdin, --secret-env VAR, or SECRET"
        )
    if env_var is not None:
        secret = (os.environ if environ is None else environ).get(env_var, "")
        where = f"environment variable {env_var}"
        if not secret:
            raise CommandError(f"{where} is not set or empty")
    elif positional == STDIN:
        secret = (sys.stdin if stdin is None else stdin).read()
        secret = secret.removesuffix("\n").removesuffix("\r")
        where = "stdin"
        if not secret:
            raise CommandError("no secret on stdin")
    else:
        secret = positional
        where = "SECRET"
        if not secret:
            raise CommandError("the secret is empty")
    if any(ch.isspace() or not ch.isprintable() for ch in secret):
        raise CommandError(f"the secret from {where} must be one word without spaces or lines")
    return secret


async def key_add(
    ctx: Context, provider: str, secret_arg: str | None, secret_env: str | None, name: str
) -> None:
    await check_provider(ctx, provider)
    secret = read_secret(secret_arg, secret_env)
    try:
        box = SecretBox(ctx.settings.require_secret_key())
    except RuntimeError as exc:
        raise CommandError(str(exc)) from exc
    async with ctx.pg.transaction():
        key_id = await db.add_key(
            ctx.pg, provider, name, visible_prefix(secret), box.encrypt(secret)
        )
        after = {"provider": provider, "name": name, "prefix": visible_prefix(secret),
                 "status": "active"}  # fmt: skip
        await audit.record(ctx.pg, audit.cli_actor(), "provider_key.add",
                           f"provider_key:{key_id}", None, after)  # fmt: skip
    await ctx.notify(invalidation.PROVIDERS_MESSAGE)
    print(f"added {provider} key {key_id} ({visible_prefix(secret)}...)")


async def key_list(ctx: Context, provider: str | None, as_json: bool) -> None:
    if provider is not None:
        await check_provider(ctx, provider)
    cooling = await provider_state.cooling_key_ids(ctx.redis)
    rows = [
        {
            "id": k.id,
            "provider": k.provider,
            "name": k.name,
            "prefix": k.prefix,
            "status": provider_state.key_status(k.status, k.id, cooling),
            "created": k.created_at.isoformat(),
        }
        for k in await db.list_keys(ctx.pg, provider)
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'id':>5}  {'provider':<10} {'name':<20} {'prefix':<12} status")
    for r in rows:
        name = r["name"][:20]
        print(f"{r['id']:>5}  {r['provider']:<10} {name:<20} {r['prefix']:<12} {r['status']}")


async def key_set_status(ctx: Context, key_id: int, status: str) -> None:
    async with ctx.pg.transaction():
        before = await key_fields(ctx, key_id)
        if before is None or not await db.set_key_status(ctx.pg, key_id, status, "set by operator"):
            raise CommandError(f"no provider key with id {key_id}")
        action = "provider_key.disable" if status == "disabled" else "provider_key.enable"
        await audit.record(ctx.pg, audit.cli_actor(), action, f"provider_key:{key_id}", before,
                           {**before, "status": status})  # fmt: skip
    await ctx.notify(invalidation.PROVIDERS_MESSAGE)
    print(f"provider key {key_id} {status}")


async def key_fields(ctx: Context, key_id: int) -> dict | None:
    """A provider key as the audit log shows it (never its secret)."""
    return await audit.provider_key_fields(ctx.pg, key_id)


async def key_remove(ctx: Context, key_id: int) -> None:
    async with ctx.pg.transaction():
        before = await key_fields(ctx, key_id)
        if before is None or not await db.remove_key(ctx.pg, key_id):
            raise CommandError(f"no provider key with id {key_id}")
        await audit.record(ctx.pg, audit.cli_actor(), "provider_key.remove",
                           f"provider_key:{key_id}", before, None)  # fmt: skip
    await ctx.notify(invalidation.PROVIDERS_MESSAGE)
    print(f"provider key {key_id} removed")


async def pause(ctx: Context, provider: str, paused: bool) -> None:
    await check_provider(ctx, provider)
    try:
        async with ctx.pg.transaction():
            await audit.set_paused(ctx.pg, audit.cli_actor(), provider, paused)
        if not paused:
            await daily.mark_resume(ctx.redis, provider)
    except RedisError as exc:
        raise CommandError(f"resumed, but Redis did not take the resume point: {exc}") from exc
    finally:
        await ctx.notify(invalidation.PROVIDERS_MESSAGE)
    print(f"{provider} {'paused' if paused else 'active'}")


async def set_thresholds(ctx: Context, provider: str, warn: str | None, stop: str | None) -> None:
    await check_provider(ctx, provider)
    if warn is None and stop is None:
        raise CommandError("nothing to change: give --warn-usd and/or --stop-usd")
    warn_usd, stop_usd = _threshold(warn, "--warn-usd"), _threshold(stop, "--stop-usd")
    async with ctx.pg.transaction():
        await audit.set_thresholds(ctx.pg, audit.cli_actor(), provider,
                                   warn_usd=warn_usd, stop_usd=stop_usd)  # fmt: skip
    await ctx.notify(invalidation.PROVIDERS_MESSAGE)
    print(f"{provider}: thresholds updated")


def _threshold(text: str | None, what: str):
    """Not given: kept; `none`: cleared; else a plain non-negative decimal."""
    if text is None:
        return audit.KEEP
    if text.strip().lower() == "none":
        return None
    return amount_arg(text, what, negative=False)


async def provider_list(ctx: Context, as_json: bool) -> None:
    spend = dict(
        await ctx.pg.fetch(
            "SELECT provider, SUM(cost_usd) FROM usage_records WHERE created_at >= $1"
            " GROUP BY provider",
            start_of_utc_day(),
        )
    )
    state = {p.name: p for p in await db.list_providers(ctx.pg)}
    rows = []
    for spec in await list_provider_specs(ctx.pg, ctx.settings):
        p = state[spec.name]
        rows.append(
            {
                "provider": spec.name,
                "kind": spec.kind,
                "base_url": spec.base_url,
                "auth_header": spec.auth_header,
                "headers": [name for name, _ in spec.headers],  # names only: values may be secret
                "builtin": spec.builtin,
                "status": "paused" if p.paused else "active",
                "warn_usd": usd_str(p.warn_usd) if p.warn_usd is not None else None,
                "stop_usd": usd_str(p.stop_usd) if p.stop_usd is not None else None,
                "spend_today_usd": usd_str(spend.get(p.name) or 0),
            }
        )
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    print(
        f"{'provider':<12} {'kind':<9} {'status':<8} {'warn_usd':>10} {'stop_usd':>10}"
        f" {'spend_today':>14}  base_url"
    )
    for r in rows:  # amounts in the one display rule; --json keeps them exact
        warn = usd_display(r["warn_usd"]) if r["warn_usd"] is not None else "-"
        stop = usd_display(r["stop_usd"]) if r["stop_usd"] is not None else "-"
        spend = usd_display(r["spend_today_usd"], cost=True)
        print(
            f"{r['provider']:<12} {r['kind']:<9} {r['status']:<8} {warn:>10}"
            f" {stop:>10} {spend:>14}  {r['base_url']}"
        )
