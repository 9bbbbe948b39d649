"""Idempotent settlement: price usage events and charge them in Postgres once.

A batch of events is settled in one Postgres transaction: the users involved
are locked (in id order, so concurrent workers cannot deadlock), each event is
priced, the usage records are inserted in one statement (unique by request
id: an event seen before inserts nothing), and only the new ones write ledger
charges and move balances. After the commit one Redis round trip publishes the
new balances and releases every hold of the batch, including the holds of
events that were settled before: a worker that died between its commit and
its Redis update leaves nothing behind.

Daily counters: the new records carry their batch's id, and the transaction
adds a row to `uncounted_batches`; after the commit the worker deletes that row
(its claim) and counts. A redelivered event whose batch row is still there
(its worker died in between) claims and counts that whole batch; no record is
rewritten after its insert.
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
from shared.money import exact
from shared.pricing import cost_usd
from shared.tracing import settle_span
from worker import batch_sql
from worker.alerts import Charge, Payer, check_after_batch
from worker.metrics import METRICS

log = structlog.get_logger("meterway.settle")


class UnpricedModel(Exception):
    """The worker's catalog has no price for a model the proxy accepted (or the
    cost of an event cannot be computed exactly): the event is set aside."""


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


@settle_span
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
        costs = {e.request_id: _price(deps, e, users) for e in events}
        inserted = await batch_sql.insert_usage(conn, events, costs)
        new_ids = inserted.records
        charged = [e for e in events if e.request_id in new_ids]
        balances = await batch_sql.charge(conn, charged, costs, users)
    METRICS.count_settled(charged, costs)  # committed: counted once
    settlements = [
        Settlement(
            e.request_id, costs[e.request_id], e.request_id in new_ids, balances[e.user_id][0]
        )
        for e in events
    ]
    await _publish(deps, events, balances)
    await _count_and_alert(deps, events, inserted, costs, users, balances)
    log.info("settled", events=len(events), charged=len(charged))
    return settlements


def _price(deps: SettleDeps, event: UsageEvent, users: dict[int, asyncpg.Record]) -> Decimal:
    """The exact cost of one event: priced with no context rounding at all; an
    event whose cost cannot be exact is set aside, never billed rounded."""
    rate = event.rate_multiplier
    if rate is None:
        rate = users[event.user_id]["rate_multiplier"]
    try:
        with exact():
            return cost_usd(event.usage, deps.catalog.models[event.model], rate)
    except ArithmeticError as exc:  # decimal.Inexact, Rounded, Overflow, ...
        raise UnpricedModel(f"no exact cost for {event.request_id}: {exc!r}") from exc


async def settle_event(deps: SettleDeps, event: UsageEvent) -> Settlement:
    return (await settle_batch(deps, [event]))[0]


async def _publish(
    deps: SettleDeps, events: list[UsageEvent], balances: dict[int, tuple[Decimal, int]]
) -> None:
    """New balance views and hold releases for the whole batch, one round trip."""
    request_ids: dict[int, list[str]] = {}
    for event in events:
        request_ids.setdefault(event.user_id, []).append(event.request_id)
    await deps.view.publish_many(request_ids, balances)


async def _count_and_alert(
    deps: SettleDeps,
    events: list[UsageEvent],
    inserted: batch_sql.Inserted,
    costs: dict[str, Decimal],
    users: dict[int, asyncpg.Record],
    balances: dict[int, tuple[Decimal, int]],
) -> None:
    """Daily counters and alerts, once per record: a batch retried after a crash
    between its commit and this point counts what the first try did not."""
    try:
        charges = await _claim_charges(deps, events, inserted, costs)
    except Exception:
        log.exception("counting_claim_failed")
        return
    if not charges:
        return
    try:
        payers = await _payers(deps, charges, users, balances)
        await check_after_batch(deps.pg, deps.redis, deps.settings, charges, payers)
    except Exception:  # counters and alerts must never undo a settlement
        log.exception("alert_check_failed")


async def _claim_charges(
    deps: SettleDeps,
    events: list[UsageEvent],
    inserted: batch_sql.Inserted,
    costs: dict[str, Decimal],
) -> list[Charge]:
    """The records this worker counts: the batch's new ones, unless a redelivery
    claimed them first, and whatever is uncounted of the ones that existed."""
    charges = []
    if inserted.batch is not None and await batch_sql.claim_batch(deps.pg, inserted.batch):
        charges = [
            Charge.of(e, costs[e.request_id]) for e in events if e.request_id in inserted.records
        ]
    seen = [e.request_id for e in events if e.request_id not in inserted.records]
    if seen:
        charges += [
            Charge.of_record(row) for row in await batch_sql.claim_redelivered(deps.pg, seen)
        ]
    return charges


async def _payers(
    deps: SettleDeps,
    charges: list[Charge],
    users: dict[int, asyncpg.Record],
    balances: dict[int, tuple[Decimal, int]],
) -> dict[int, Payer]:
    """Alert settings of every counted user: read under the batch's lock, or (a
    user only in a claimed redelivered batch) now."""
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
    others = sorted({c.user_id for c in charges} - payers.keys())
    if not others:
        return payers
    for row in await batch_sql.alert_settings(deps.pg, others):
        payers[row["id"]] = Payer(
            row["id"],
            row["email"],
            row["daily_alert_usd"],
            row["low_balance_usd"],
            row["balance_usd"],
        )
    return payers
