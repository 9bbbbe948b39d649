"""Idempotent settlement: price usage events and charge them in Postgres once.

A batch of events is settled in one Postgres transaction: the users involved
are locked (in id order, so concurrent workers cannot deadlock), each event is
priced, the usage records are inserted in one statement (unique by request
id: an event seen before inserts nothing), and only the new ones write ledger
charges and move balances. After the commit one Redis round trip publishes the
new balances and releases every hold of the batch, including the holds of
events that were settled before: a worker that died between its commit and
its Redis update leaves nothing behind.
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
from shared.events import UsageEvent
from shared.pricing import cost_usd
from worker import batch_sql
from worker.alerts import Payer, check_after_batch

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


def _unique(events: list[UsageEvent]) -> list[UsageEvent]:
    seen: dict[str, UsageEvent] = {}
    for event in events:
        seen.setdefault(event.request_id, event)
    return list(seen.values())


async def settle_batch(deps: SettleDeps, events: list[UsageEvent]) -> list[Settlement]:
    """Settle events; an event of an unpriced model or unknown user raises before
    anything is written, so the caller can set it aside and settle the rest."""
    events = _unique(events)
    if not events:
        return []
    for event in events:
        if deps.catalog.get(event.model) is None:
            raise UnpricedModel(f"no price for model {event.model!r} ({event.request_id})")
    async with deps.pg.acquire() as conn, conn.transaction():
        users = await batch_sql.lock_users(conn, sorted({e.user_id for e in events}))
        missing = {e.user_id for e in events} - users.keys()
        if missing:
            raise LookupError(f"no users {sorted(missing)}")
        costs = {
            e.request_id: cost_usd(
                e.usage,
                deps.catalog.models[e.model],
                e.rate_multiplier
                if e.rate_multiplier is not None
                else users[e.user_id]["rate_multiplier"],
            )
            for e in events
        }
        new_ids = await batch_sql.insert_usage(conn, events, costs)
        charged = [e for e in events if e.request_id in new_ids]
        balances = await batch_sql.charge(conn, charged, costs, users)
    settlements = [
        Settlement(
            e.request_id, costs[e.request_id], e.request_id in new_ids, balances[e.user_id][0]
        )
        for e in events
    ]
    await _publish(deps, events, balances)
    await _count_and_alert(deps, events, users, balances)
    log.info("settled", events=len(events), charged=len(charged))
    return settlements


async def settle_event(deps: SettleDeps, event: UsageEvent) -> Settlement:
    return (await settle_batch(deps, [event]))[0]


async def _publish(
    deps: SettleDeps, events: list[UsageEvent], balances: dict[int, tuple[Decimal, int]]
) -> None:
    """New balance views and hold releases for the whole batch, one round trip."""
    pipe = deps.redis.pipeline(transaction=False)
    published: set[int] = set()
    for event in events:
        if event.user_id in published:
            await deps.view.release_in(pipe, event.user_id, event.request_id)
            continue
        balance, version = balances[event.user_id]
        await deps.view.publish_in(pipe, event.user_id, balance, version, event.request_id)
        published.add(event.user_id)
    await pipe.execute()


async def _count_and_alert(deps, events, users, balances) -> None:
    """Daily counters and alerts, once per record: a batch retried after a crash
    between its commit and this point counts what the first try did not."""
    try:
        uncounted = await batch_sql.claim_counting(deps.pg, [e.request_id for e in events])
    except Exception:
        log.exception("counting_claim_failed")
        return
    if not uncounted:
        return
    payers = {
        user_id: Payer(
            user_id,
            row["email"],
            row["daily_alert_usd"],
            row["low_balance_usd"],
            balances[user_id][0],
        )
        for user_id, row in users.items()
    }
    try:
        await check_after_batch(
            deps.pg,
            deps.redis,
            deps.settings,
            [(e, uncounted[e.request_id]) for e in events if e.request_id in uncounted],
            payers,
        )
    except Exception:  # counters and alerts must never undo a settlement
        log.exception("alert_check_failed")
