"""Alert rules checked after each settlement, and the provider auto-pause.

Rules (each fires at most once per UTC day per subject, across all workers:
a Redis SET NX gates it, a unique row in Postgres records it):
- user_daily_spend: the user's spend today reached `daily_alert_usd`;
- user_low_balance: the balance fell below `low_balance_usd` (default 1 USD);
- provider_daily_warn: a provider's spend today reached its `warn_usd`;
- provider_auto_paused: a provider's spend since its last resume today reached
  `stop_usd`; the provider is paused at once and every proxy refuses it with 429.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import NamedTuple

import structlog
from redis.asyncio import Redis

from shared import daily, invalidation, redis_keys
from shared.config import Settings
from shared.db import alerts as db_alerts
from shared.events import UsageEvent
from shared.money import price_display, usd_display

log = structlog.get_logger("meterway.alerts")
GATE_SECONDS = 2 * 24 * 3600


class Charge(NamedTuple):
    """A settled usage record, as the daily counters need it (a tuple: one is
    made per settled event, and a tuple is the cheapest to make)."""

    user_id: int
    provider: str
    model: str
    api_key_id: int | None  # None: the key was deleted since
    created_at: datetime
    cost_usd: Decimal

    @classmethod
    def of(cls, event: UsageEvent, cost: Decimal) -> Charge:
        return cls(
            event.user_id, event.provider, event.model, event.api_key_id, event.created_at, cost
        )

    @classmethod
    def of_record(cls, row: Mapping) -> Charge:
        return cls(
            row["user_id"], row["provider"], row["model"], row["api_key_id"], row["created_at"],
            row["cost_usd"],
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Payer:
    """The settled user's alert settings, read in the settlement transaction."""

    user_id: int
    email: str
    daily_alert_usd: Decimal | None
    low_balance_usd: Decimal | None
    balance_usd: Decimal


async def fire(
    pg,
    redis: Redis,
    settings: Settings,
    rule: str,
    subject: str,
    message: str,
    recipients: list[str],
    occurrence: int = 0,
) -> bool:
    """Record an alert once per rule, subject and day; the mailer sends it."""
    day = daily.today()
    gate = redis_keys.alert_gate(day.isoformat(), rule, subject, occurrence)
    if not await redis.set(gate, 1, nx=True, ex=GATE_SECONDS):
        return False
    try:
        recorded = await db_alerts.record(
            pg, rule, subject, day, message, recipients, occurrence,
            webhook=bool(settings.alert_webhook_url),
        )  # fmt: skip
    except Exception:
        await redis.delete(gate)  # let the next settlement try again
        raise
    if not recorded:
        return False
    log.warning("alert", rule=rule, subject=subject, alert_message=message)
    return True


def shown(amount: Decimal, threshold: Decimal) -> tuple[str, str]:
    """An amount and the threshold it crossed, by the display rule; both exact
    where the rule would show two different amounts alike (`$0.4999 below $0.50`
    must not read `$0.50 below $0.50`)."""
    a, b = usd_display(amount), usd_display(threshold)
    if a == b and amount != threshold:
        return price_display(amount), price_display(threshold)  # every digit
    return a, b


def daily_spend_text(spend: Decimal, alert: Decimal) -> str:
    spend_text, alert_text = shown(spend, alert)
    return (
        f"Your Meterway spend today is {spend_text}, at or above your daily alert of {alert_text}."
    )


def low_balance_text(balance: Decimal, alert: Decimal) -> str:
    balance_text, alert_text = shown(balance, alert)
    return f"Your Meterway balance is {balance_text}, below your low-balance alert of {alert_text}."


def provider_warn_text(provider: str, spend: Decimal, warn: Decimal) -> str:
    spend_text, warn_text = shown(spend, warn)
    return f"{provider} spend today is {spend_text}, at or above the warn threshold of {warn_text}."


def auto_pause_reason(spend: Decimal, stop: Decimal) -> str:
    spend_text, stop_text = shown(spend, stop)
    return f"auto: daily spend {spend_text} reached stop threshold {stop_text}"


async def check_after_batch(
    pg,
    redis: Redis,
    settings: Settings,
    charges: list[Charge],
    payers: dict[int, Payer],
) -> None:
    """Count the batch's charges and check every rule they may have crossed."""
    user_spend, provider_spend = await record_daily(redis, charges)
    # providers first: an auto-pause must not wait behind users' alert mails
    for provider, spend_today in provider_spend.items():
        await check_provider(pg, redis, settings, provider, spend_today)
    for user_id, spend_today in user_spend.items():
        payer = payers[user_id]
        if payer.daily_alert_usd is not None and spend_today >= payer.daily_alert_usd:
            await fire(
                pg, redis, settings, "user_daily_spend", f"user:{user_id}",
                daily_spend_text(spend_today, payer.daily_alert_usd),
                [payer.email],
            )  # fmt: skip
        if payer.low_balance_usd is not None and payer.balance_usd < payer.low_balance_usd:
            await fire(
                pg, redis, settings, "user_low_balance", f"user:{user_id}",
                low_balance_text(payer.balance_usd, payer.low_balance_usd),
                [payer.email],
            )  # fmt: skip


async def record_daily(
    redis: Redis, charges: list[Charge]
) -> tuple[dict[int, Decimal], dict[str, Decimal]]:
    """What `daily.record` does, for a whole batch: the charges are summed per
    (day, user, provider, model, key) first, so each cost is rounded to pico-USD
    once (as `daily.record` does, per charge) and each counter key built once.
    Returns the spend today of each user and provider involved."""
    groups: dict[tuple, list[int]] = {}
    for c in charges:
        group = (c.created_at.astimezone(UTC).date(), c.user_id, c.provider, c.model, c.api_key_id)
        total = groups.get(group)
        if total is None:
            total = groups[group] = [0, 0]
        total[0] += daily.to_pico(c.cost_usd)
        total[1] += 1
    totals: dict[tuple[str, str | int, str], list[int]] = {}
    for (day, *names), (pico, count) in groups.items():
        for kind, name in zip(("user", "provider", "model", "key"), names, strict=True):
            if name is None:
                continue
            total = totals.setdefault((kind, name, daily.counter_key(kind, name, day)), [0, 0])
            total[0] += pico
            total[1] += count
    pipe = redis.pipeline(transaction=False)
    for (_, _, key), (pico, count) in totals.items():
        pipe.hincrby(key, "spend", pico)
        pipe.hincrby(key, "requests", count)
        pipe.expire(key, daily.KEEP_SECONDS)
    results = await pipe.execute()
    users: dict[int, Decimal] = {}
    providers: dict[str, Decimal] = {}
    for (kind, name, _), spend in zip(totals, results[::3], strict=True):
        if kind == "user":
            users[int(name)] = daily.from_pico(spend)
        elif kind == "provider":
            providers[str(name)] = daily.from_pico(spend)
    return users, providers


async def check_provider(
    pg, redis: Redis, settings: Settings, provider: str, spend_today: Decimal
) -> None:
    row = await pg.fetchrow(
        "SELECT paused, warn_usd, stop_usd FROM providers WHERE name = $1", provider
    )
    if row is None:
        return
    if row["warn_usd"] is not None and spend_today >= row["warn_usd"]:
        await fire(
            pg, redis, settings, "provider_daily_warn", f"provider:{provider}",
            provider_warn_text(provider, spend_today, row["warn_usd"]),
            settings.operator_emails,
        )  # fmt: skip
    if row["stop_usd"] is None or row["paused"]:
        return
    since_resume = await daily.spend_since_resume(redis, provider)
    if since_resume >= row["stop_usd"]:
        await auto_pause(pg, redis, settings, provider, spend_today, row["stop_usd"])


async def auto_pause(
    pg, redis: Redis, settings: Settings, provider: str, spend: Decimal, stop: Decimal
) -> None:
    reason = auto_pause_reason(spend, stop)
    paused = await pg.fetchval(
        "UPDATE providers SET paused = true, paused_reason = $2, paused_at = now(),"
        " updated_at = now() WHERE name = $1 AND NOT paused RETURNING name",
        provider,
        reason,
    )
    if paused is None:
        return  # another worker (or an operator) paused it first
    await invalidation.publish(redis, invalidation.PROVIDERS_MESSAGE)
    occurrence = await redis.hincrby(daily.counter_key("provider", provider), "pauses", 1)
    await fire(
        pg, redis, settings, "provider_auto_paused", f"provider:{provider}",
        f"{provider} was paused automatically: {reason}. Resume it with"
        f" `meterway provider resume {provider}`.",
        settings.operator_emails, occurrence=occurrence,
    )  # fmt: skip
