"""Daily counters in Redis: spend and requests per user, provider, model and
API key for the current UTC day, kept for a week.

Spend is counted in integer pico-dollars (1e-12 USD) with HINCRBY, so reads are
one HGET and sums stay exact for every catalog price. The worker increments
them once per settled request (only when Postgres recorded a new charge).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

from redis.asyncio import Redis

from shared import redis_keys
from shared.events import UsageEvent
from shared.money import exact

PICO = Decimal("1e-12")
PICO_PER_USD = 10**12
KEEP_SECONDS = 8 * 24 * 3600


def today() -> date:
    return datetime.now(UTC).date()


def counter_key(kind: str, name: str | int, day: date | None = None) -> str:
    """`kind` is user, provider, model or key."""
    return redis_keys.daily_counter((day or today()).isoformat(), kind, name)


def to_pico(amount: Decimal) -> int:
    """USD -> integer pico-USD, half to even, by integer arithmetic (no Decimal
    context involved: exact whatever the number of digits)."""
    numerator, denominator = amount.as_integer_ratio()
    whole, rest = divmod(numerator * PICO_PER_USD, denominator)
    if 2 * rest > denominator or (2 * rest == denominator and whole % 2):
        whole += 1
    return whole


def from_pico(value: int | bytes | str | None) -> Decimal:
    with exact():
        return Decimal(int(value or 0)).scaleb(-12)


async def record(
    redis: Redis, charges: list[tuple[UsageEvent, Decimal]]
) -> tuple[dict[int, Decimal], dict[str, Decimal]]:
    """Count settled requests in one round trip; returns the spend today of each
    user and each provider involved, after these charges."""
    totals: dict[str, list[int]] = {}
    for event, cost in charges:
        day = event.created_at.astimezone(UTC).date()
        for kind, name in (
            ("user", event.user_id),
            ("provider", event.provider),
            ("model", event.model),
            ("key", event.api_key_id),
        ):
            total = totals.setdefault(counter_key(kind, name, day), [0, 0])
            total[0] += to_pico(cost)
            total[1] += 1
    pipe = redis.pipeline(transaction=False)
    for key, (pico, count) in totals.items():
        pipe.hincrby(key, "spend", pico)
        pipe.hincrby(key, "requests", count)
        pipe.expire(key, KEEP_SECONDS)
    results = await pipe.execute()
    spends = dict(zip(totals, results[::3], strict=True))
    users: dict[int, Decimal] = {}
    providers: dict[str, Decimal] = {}
    for key, value in spends.items():
        kind, name = key.rsplit(":", 2)[-2:]
        if kind == "user":
            users[int(name)] = from_pico(value)
        elif kind == "provider":
            providers[name] = from_pico(value)
    return users, providers


async def spend(redis: Redis, kind: str, name: str | int, day: date | None = None) -> Decimal:
    return from_pico(await redis.hget(counter_key(kind, name, day), "spend"))


async def requests(redis: Redis, kind: str, name: str | int, day: date | None = None) -> int:
    return int(await redis.hget(counter_key(kind, name, day), "requests") or 0)


async def mark_resume(redis: Redis, provider: str) -> Decimal:
    """Remember the provider's spend at a manual resume: its stop threshold then
    counts again from here, so a resume is not undone by the very next request."""
    key = counter_key("provider", provider)
    current = await redis.hget(key, "spend")
    await redis.hset(key, "resumed_at_spend", int(current or 0))
    await redis.expire(key, KEEP_SECONDS)
    return from_pico(current)


async def spend_since_resume(redis: Redis, provider: str) -> Decimal:
    values = await redis.hmget(counter_key("provider", provider), "spend", "resumed_at_spend")
    return from_pico(int(values[0] or 0) - int(values[1] or 0))
