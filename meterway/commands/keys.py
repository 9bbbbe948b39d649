"""`meterway key create|set|list|revoke`: proxy API keys and their controls
(per-minute limits, a budget per UTC period, a models list, an expiry)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from meterway.commands.accounts import amount_arg, find_user
from meterway.context import CommandError, Context
from shared import invalidation
from shared.catalog import load_catalog
from shared.db import api_keys, audit
from shared.db.api_keys import UNSET
from shared.key_view import key_document, spend_period
from shared.keys import hash_proxy_key, new_proxy_key, visible_prefix
from shared.money import tokens_display, usd_display, usd_display_exact
from shared.periods import PERIODS

# what `key set` takes to clear a control
CLEAR_BUDGET, CLEAR_MODELS, CLEAR_EXPIRY, CLEAR_LIMIT = "none", "all", "never", "none"


@dataclass(slots=True)
class Controls:
    """Typed control options; absent (not given) stays UNSET, a clear is None."""

    budget_usd: Any = UNSET
    budget_period: Any = UNSET
    models: Any = UNSET
    expires_at: Any = UNSET
    rpm: Any = UNSET
    tpm: Any = UNSET
    given: list[str] = field(default_factory=list)

    def changes(self) -> dict[str, Any]:
        names = ("budget_usd", "budget_period", "models", "expires_at", "rpm", "tpm")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not UNSET}


def parse_models(text: str, catalog_path: Any) -> tuple[str, ...]:
    """`ID,ID,...`: every id in the catalog (the unknown ones named), duplicates
    dropped, order kept."""
    ids = [part.strip() for part in text.split(",")]
    if not any(ids) or "" in ids:
        raise CommandError(
            "--models takes a comma-separated list of catalog model ids (or 'all' with key set)"
        )
    try:
        catalog = load_catalog(catalog_path)
    except ValueError as exc:
        raise CommandError(str(exc).splitlines()[0]) from exc
    unknown = [i for i in dict.fromkeys(ids) if catalog.get(i) is None]
    if unknown:
        shown = ", ".join(repr(u[:80]) for u in unknown[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise CommandError(f"--models: not in the model catalog: {shown}{more}")
    return tuple(dict.fromkeys(ids))


def parse_expiry(text: str) -> datetime:
    """ISO 8601 with `Z` or an offset; stored as UTC."""
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise CommandError(
            f"--expires-at must be ISO 8601 such as 2026-12-31T23:59:59Z, got {text[:40]!r}"
        ) from exc
    if at.tzinfo is None or at.utcoffset() is None:
        raise CommandError(
            f"--expires-at needs a time zone: add Z (UTC) or an offset such as +02:00,"
            f" got {text[:40]!r}"
        )
    return at.astimezone(UTC)


def parse_limit(value: str | int | None, label: str, *, clearable: bool) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        if clearable and value.strip().lower() == CLEAR_LIMIT:
            return None
        text = value.strip()
        if not text.isascii() or not text.isdigit():
            hint = " (or 'none' to clear)" if clearable else ""
            raise CommandError(f"{label} must be a positive integer{hint}, got {value[:40]!r}")
        value = int(text)
    if value <= 0 or value >= 2**31:
        raise CommandError(f"{label} must be a positive integer below 2147483648")
    return value


def parse_controls(
    ctx: Context,
    *,
    budget_usd: str | None,
    budget_period: str | None,
    models: str | None,
    expires_at: str | None,
    rpm: str | int | None,
    tpm: str | int | None,
    clearable: bool,
) -> Controls:
    """The options as typed (None: not given) to typed controls; one-line errors."""
    c = Controls()
    if budget_usd is not None:
        c.given.append("--budget-usd")
        if clearable and budget_usd.strip().lower() == CLEAR_BUDGET:
            c.budget_usd = None
        else:
            c.budget_usd = amount_arg(budget_usd, "--budget-usd", negative=False)
    if budget_period is not None:
        c.given.append("--budget-period")
        if budget_period not in PERIODS:
            raise CommandError("--budget-period takes day, week, month or total")
        c.budget_period = budget_period
    if models is not None:
        c.given.append("--models")
        if clearable and models.strip().lower() == CLEAR_MODELS:
            c.models = None
        else:
            c.models = parse_models(models, ctx.settings.model_catalog)
    if expires_at is not None:
        c.given.append("--expires-at")
        if clearable and expires_at.strip().lower() == CLEAR_EXPIRY:
            c.expires_at = None
        else:
            c.expires_at = parse_expiry(expires_at)
    for label, value, name in (("--rpm", rpm, "rpm"), ("--tpm", tpm, "tpm")):
        if value is not None:
            c.given.append(label)
            setattr(c, name, parse_limit(value, label, clearable=clearable))
    return c


def _summary(key: api_keys.ApiKey) -> str:
    doc = key_document(key, Decimal(0))
    if doc["budget_usd"] is None:
        budget = "none"
    elif doc["budget_period"] == "total":
        budget = f"{usd_display_exact(doc['budget_usd'])} in total"
    else:
        budget = f"{usd_display_exact(doc['budget_usd'])} per {doc['budget_period']}"
    parts = [
        f"budget {budget}",
        f"models {','.join(doc['models']) if doc['models'] else 'all'}",
        f"expires {doc['expires_at'] or 'never'}",
        f"rpm {doc['rpm'] or 'none'}",
        f"tpm {tokens_display(doc['tpm']) if doc['tpm'] else 'none'}",
    ]
    return "; ".join(parts)


async def key_create(
    ctx: Context,
    email: str,
    name: str,
    rpm: int | None,
    tpm: int | None,
    budget_usd: str | None = None,
    budget_period: str | None = None,
    models: str | None = None,
    expires_at: str | None = None,
) -> None:
    c = parse_controls(ctx, budget_usd=budget_usd, budget_period=budget_period, models=models,
                       expires_at=expires_at, rpm=rpm, tpm=tpm, clearable=False)  # fmt: skip
    if c.budget_period is not UNSET and c.budget_usd is UNSET:
        raise CommandError("--budget-period needs --budget-usd: a period of what budget?")
    user = await find_user(ctx, email)
    secret = new_proxy_key()
    async with ctx.pg.transaction():
        key = await _create(ctx, user, secret, name, c)
        await audit.record(ctx.pg, audit.cli_actor(), "key.create", f"key:{key.id}", None,
                           {**audit.key_fields(key), "user": user.email})  # fmt: skip
    if c.given:
        print(f"key {key.id}: {_summary(key)}")
    print(f"created key {key.id} ({key.name or 'unnamed'}) for {user.email}; it is shown once:")
    print(secret)


async def _create(ctx: Context, user: Any, secret: str, name: str, c: Controls) -> api_keys.ApiKey:
    return await api_keys.create(
        ctx.pg,
        user.id,
        hash_proxy_key(secret),
        visible_prefix(secret),
        name=name,
        rpm_limit=None if c.rpm is UNSET else c.rpm,
        tpm_limit=None if c.tpm is UNSET else c.tpm,
        budget_usd=None if c.budget_usd is UNSET else c.budget_usd,
        budget_period=None if c.budget_period is UNSET else c.budget_period,
        models=None if c.models is UNSET else c.models,
        expires_at=None if c.expires_at is UNSET else c.expires_at,
    )


async def _key_by_id_or_secret(ctx: Context, key_or_id: str) -> tuple[api_keys.ApiKey, bytes]:
    if key_or_id.isascii() and key_or_id.isdigit() and len(key_or_id) <= 18:
        key_hash = await api_keys.hash_of(ctx.pg, int(key_or_id))
        if key_hash is None:
            raise CommandError(f"no key with id {key_or_id}")
        key = await api_keys.get(ctx.pg, int(key_or_id))
    else:
        key_hash = hash_proxy_key(key_or_id)
        owner = await api_keys.owner_by_hash(ctx.pg, key_hash)
        key = await api_keys.get(ctx.pg, owner.api_key_id) if owner else None
    if key is None:
        raise CommandError("no such key")
    return key, key_hash


async def key_set(
    ctx: Context,
    key_or_id: str,
    *,
    budget_usd: str | None = None,
    budget_period: str | None = None,
    models: str | None = None,
    expires_at: str | None = None,
    rpm: str | None = None,
    tpm: str | None = None,
) -> None:
    c = parse_controls(ctx, budget_usd=budget_usd, budget_period=budget_period, models=models,
                       expires_at=expires_at, rpm=rpm, tpm=tpm, clearable=True)  # fmt: skip
    if not c.given:
        raise CommandError(
            "nothing to change: give --budget-usd, --budget-period, --models, --expires-at,"
            " --rpm or --tpm"
        )
    key, key_hash = await _key_by_id_or_secret(ctx, key_or_id)
    if key.revoked_at is not None:
        raise CommandError(f"key {key.id} is revoked")
    if c.budget_period is not UNSET:
        budget_after = key.budget_usd if c.budget_usd is UNSET else c.budget_usd
        if budget_after is None:
            raise CommandError(
                f"--budget-period needs a budget: key {key.id} has none (give --budget-usd)"
            )
    async with ctx.pg.transaction():
        updated = await api_keys.set_controls(ctx.pg, key.id, **c.changes())
        if updated is None:
            raise CommandError(f"no key with id {key.id}")
        await audit.record(ctx.pg, audit.cli_actor(), "key.set", f"key:{key.id}",
                           audit.key_fields(key), audit.key_fields(updated))  # fmt: skip
    # every proxy drops its cached owner of this key now (the contract allows 5 s)
    await ctx.notify(invalidation.key_message(key_hash))
    print(f"updated key {updated.id}: {_summary(updated)}")


async def key_list(ctx: Context, email: str, as_json: bool) -> None:
    user = await find_user(ctx, email)
    keys = await api_keys.list_for_user(ctx.pg, user.id)
    now = datetime.now(UTC)
    rows = [
        key_document(k, await api_keys.spend_in_period(ctx.pg, k.id, spend_period(k), now))
        for k in keys
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    print(
        f"{'id':>6}  {'name':<20} {'prefix':<12} {'created':<20} {'last used':<20} {'revoked':<7}"
        f"  {'budget':<18} {'spent':<14} {'models':<24} {'expires':<20} {'rpm':>6} {'tpm':>8}"
    )
    for r in rows:
        if r["budget_usd"] is None:
            budget, spent = "-", f"{usd_display(r['spend_period_usd'])}/month"
        else:
            budget = f"{usd_display(r['budget_usd'])}/{r['budget_period']}"
            spent = usd_display(r["spend_period_usd"])
        models = ",".join(r["models"]) if r["models"] is not None else "all"
        if len(models) > 24:
            models = models[:23] + "…"
        print(
            f"{r['id']:>6}  {r['name'][:20]:<20} {r['prefix']:<12} {r['created'][:19]:<20}"
            f" {(r['last_used'] or '-')[:19]:<20} {'yes' if r['revoked'] else 'no':<7}"
            f"  {budget:<18} {spent:<14} {models:<24} {(r['expires_at'] or 'never'):<20}"
            f" {r['rpm'] or '-':>6} {tokens_display(r['tpm']) if r['tpm'] else '-':>8}"
        )
