"""`meterway provider add|remove`: providers as configuration (contract section 5)."""

from __future__ import annotations

from meterway.context import CommandError, Context
from shared import invalidation
from shared import provider_config as config
from shared.db import audit


def _fields(spec: config.ProviderSpec) -> dict:
    """A provider as the audit log shows it: fixed header names, never values."""
    return {
        "name": spec.name,
        "kind": spec.kind,
        "base_url": spec.base_url,
        "auth_header": spec.auth_header,
        "headers": [name for name, _ in spec.headers],
    }


async def add(
    ctx: Context,
    name: str,
    kind: str,
    base_url: str,
    auth_header: str | None,
    headers: list[str],
) -> None:
    try:
        async with ctx.pg.transaction():
            spec = await config.add_provider(ctx.pg, name, kind, base_url, auth_header, headers)
            await audit.record(ctx.pg, audit.cli_actor(), "provider.add", f"provider:{name}",
                               None, _fields(spec))  # fmt: skip
    except config.ProviderConfigError as exc:
        raise CommandError(str(exc)) from exc
    await ctx.notify(invalidation.PROVIDERS_MESSAGE)
    effective = config.effective_base_url(name, spec.base_url, ctx.settings)
    print(f"added provider {name} (kind {spec.kind}) at {effective}")
    print(f"  served at /v1/{name}/ within 5 s; add its key: meterway provider-key add {name} -")


async def remove(ctx: Context, name: str) -> None:
    try:
        async with ctx.pg.transaction():
            before = await config.get_provider_spec(ctx.pg, name, ctx.settings)
            await config.remove_provider(ctx.pg, name)
            await audit.record(ctx.pg, audit.cli_actor(), "provider.remove", f"provider:{name}",
                               _fields(before) if before else None, None)  # fmt: skip
    except config.ProviderConfigError as exc:
        raise CommandError(str(exc)) from exc
    await ctx.notify(invalidation.PROVIDERS_MESSAGE)
    print(f"removed provider {name}: its paths answer 404 within 5 s (keys and records kept)")
