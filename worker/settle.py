"""Idempotent settlement: price a usage event and charge it in Postgres once.

One Postgres transaction writes the usage record (unique by request id), the
ledger charge and the new balance. A redelivered or duplicated event finds its
request id already recorded and changes nothing in Postgres; it still
republishes the balance view and releases the hold, so a worker that died
between the commit and the Redis update leaves nothing behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import asyncpg
import structlog
from redis.asyncio import Redis

from shared.balance_view import BalanceView
from shared.catalog import Catalog
from shared.config import Settings
from shared.db import usage as db_usage
from shared.db import users as db_users
from shared.events import UsageEvent
from shared.pricing import cost_usd
from worker.alerts import Payer, check_after_settlement

log = structlog.get_logger("meterway.settle")


class UnpricedModel(Exception):
    """The worker's catalog has no price for a model the proxy accepted."""


@dataclass(frozen=True, slots=True)
class Settlement:
    request_id: str
    cost_usd: Decimal
    charged: bool  # False: this request id was settled before
    balance_usd: Decimal


@dataclass(slots=True)
class SettleDeps:
    pg: asyncpg.Pool
    catalog: Catalog
    view: BalanceView
    redis: Redis
    settings: Settings


async def settle_event(deps: SettleDeps, event: UsageEvent) -> Settlement:
    price = deps.catalog.get(event.model)
    if price is None:
        raise UnpricedModel(f"no price for model {event.model!r}")
    async with deps.pg.acquire() as conn, conn.transaction():
        user = await conn.fetchrow(
            "SELECT email, rate_multiplier, daily_alert_usd, low_balance_usd FROM users"
            " WHERE id = $1 FOR UPDATE",
            event.user_id,
        )
        if user is None:
            raise LookupError(f"no user {event.user_id}")
        cost = cost_usd(event.usage, price, user["rate_multiplier"])
        charged = await db_usage.insert(conn, event, cost)
        if charged:
            balance, version = await db_users.change_balance(
                conn, event.user_id, -cost, kind="charge", request_id=event.request_id
            )
            await conn.execute(
                "UPDATE api_keys SET last_used_at = GREATEST(last_used_at, $2) WHERE id = $1",
                event.api_key_id,
                event.created_at,
            )
        else:
            current = await db_users.balance(conn, event.user_id)
            assert current is not None
            balance, version = current
    await deps.view.publish(event.user_id, balance, version, release_request_id=event.request_id)
    if charged:
        payer = Payer(
            event.user_id, user["email"], user["daily_alert_usd"], user["low_balance_usd"], balance
        )
        try:
            await check_after_settlement(deps.pg, deps.redis, deps.settings, event, cost, payer)
        except Exception:  # counters and alerts must never undo a settlement
            log.exception("alert_check_failed", request_id=event.request_id)
    log.info(
        "settled" if charged else "already_settled",
        request_id=event.request_id,
        cost_usd=str(cost),
        estimated=event.estimated,
    )
    return Settlement(event.request_id, cost, charged, balance)
