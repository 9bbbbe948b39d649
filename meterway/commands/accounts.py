"""`meterway user ...`, `credits add`, `key revoke`: users, balances, proxy keys
(`key create|set|list` are in keys.py)."""

from __future__ import annotations

from decimal import Decimal

import asyncpg
from argon2 import PasswordHasher

from meterway.context import CommandError, Context
from shared import invalidation
from shared.db import api_keys, audit, users
from shared.keys import hash_proxy_key
from shared.money import (
    AmountError,
    BalanceOutOfRange,
    parse_amount,
    parse_multiplier,
    usd_display_exact,
)
from shared.passwords import password_problem


def amount_arg(text: str, what: str = "amount", *, negative: bool = True) -> Decimal:
    """A typed amount (contract section 10: a plain decimal, at most 12 digits
    after the point, below 1e9 in absolute value), or a one-line CommandError."""
    try:
        return parse_amount(text, what, negative=negative)
    except AmountError as exc:
        raise CommandError(str(exc)) from exc


def multiplier_arg(text: str, what: str = "rate multiplier") -> Decimal:
    """A typed rate multiplier: a plain decimal in (0, 1000], at most 6 digits
    after the point, or a one-line CommandError."""
    try:
        return parse_multiplier(text, what)
    except AmountError as exc:
        raise CommandError(str(exc)) from exc


async def find_user(ctx: Context, email: str) -> users.User:
    user = await users.by_email(ctx.pg, email)
    if user is None:
        raise CommandError(f"no user with email {email}")
    return user


async def user_create(
    ctx: Context, email: str, admin: bool, password: str | None, rate: str | None
) -> None:
    if "@" not in email:
        raise CommandError(f"not an email address: {email}")
    rate_value = multiplier_arg(rate, "--rate-multiplier") if rate is not None else Decimal(1)
    if password is not None:
        problem = password_problem(password)
        if problem is not None:
            raise CommandError(f"--password: {problem}")
    hashed = PasswordHasher().hash(password) if password is not None else None
    try:
        async with ctx.pg.transaction():
            user = await users.create(
                ctx.pg, email, is_admin=admin, password_hash=hashed, rate_multiplier=rate_value
            )
            after = {**audit.user_fields(user), "password_set": password is not None}
            await audit.record(ctx.pg, audit.cli_actor(), "user.create", f"user:{user.email}",
                               None, after)  # fmt: skip
    except asyncpg.UniqueViolationError as exc:
        raise CommandError(f"a user with email {email} exists already") from exc
    print(f"created user {user.id} {user.email}{' (admin)' if admin else ''}")


async def user_set(ctx: Context, email: str, **changes: str | None) -> None:
    user = await find_user(ctx, email)
    fields: dict[str, object] = {}
    if changes.get("rate_multiplier") is not None:
        fields["rate_multiplier"] = multiplier_arg(changes["rate_multiplier"], "--rate-multiplier")
    for name in ("daily_alert_usd", "low_balance_usd"):
        if changes.get(name) is not None:
            option = "--" + name.replace("_", "-")
            fields[name] = amount_arg(changes[name], option, negative=False)
    if changes.get("disabled") is not None:
        if changes["disabled"] not in ("true", "false"):
            raise CommandError("--disabled takes true or false")
        fields["disabled"] = changes["disabled"] == "true"
    if not fields:
        raise CommandError("nothing to change: give at least one option")
    async with ctx.pg.transaction():
        await users.update(ctx.pg, user.id, **fields)
        await audit.record(ctx.pg, audit.cli_actor(), "user.set", f"user:{user.email}",
                           audit.user_fields(user, fields), fields)  # fmt: skip
    await ctx.notify(invalidation.user_message(user.id))
    shown = {k: usd_display_exact(v) if k.endswith("_usd") else v for k, v in fields.items()}
    print(f"updated user {user.email}: " + ", ".join(f"{k}={v}" for k, v in shown.items()))


async def credits_add(ctx: Context, email: str, amount_text: str, note: str | None) -> None:
    amount = amount_arg(amount_text, "AMOUNT_USD")
    user = await find_user(ctx, email)
    kind = "topup" if amount >= 0 else "adjustment"
    try:
        async with ctx.pg.transaction():
            before = await ctx.pg.fetchval(
                "SELECT balance_usd FROM users WHERE id = $1 FOR UPDATE", user.id
            )
            balance, version = await users.change_balance(
                ctx.pg, user.id, amount, kind=kind, note=note or "meterway credits add"
            )
            await audit.record(ctx.pg, audit.cli_actor(), "credits.add", f"user:{user.email}",
                               {"balance_usd": before},
                               {"balance_usd": balance, "amount_usd": amount, "kind": kind},
                               reason=note)  # fmt: skip
    except BalanceOutOfRange as exc:
        raise CommandError(f"{user.email}: {exc}") from exc
    await ctx.publish_balance(user.id, balance, version)
    print(f"{user.email}: balance {usd_display_exact(balance)}")


async def key_revoke(ctx: Context, key_or_id: str) -> None:
    if key_or_id.isdigit():
        key_hash = await api_keys.hash_of(ctx.pg, int(key_or_id))
        if key_hash is None:
            raise CommandError(f"no key with id {key_or_id}")
    else:
        key_hash = hash_proxy_key(key_or_id)
    async with ctx.pg.transaction():
        owner = await api_keys.owner_by_hash(ctx.pg, key_hash)
        before = await api_keys.get(ctx.pg, owner.api_key_id) if owner else None
        key_id = await api_keys.revoke_by_hash(ctx.pg, key_hash)
        if key_id is None or before is None:
            raise CommandError("no such key")
        if before.revoked_at is None:
            after = await api_keys.get(ctx.pg, key_id)
            await audit.record(ctx.pg, audit.cli_actor(), "key.revoke", f"key:{key_id}",
                               {**audit.key_fields(before), "user": owner.email},
                               {**audit.key_fields(after), "user": owner.email})  # fmt: skip
    await ctx.notify(invalidation.key_message(key_hash))
    print(f"revoked key {key_id}")
