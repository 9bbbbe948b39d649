"""Settles usage events that the proxy spooled to Postgres when Redis was down."""

from __future__ import annotations

import structlog

from shared.events import UsageEvent
from worker.settle import SettleDeps, UnpricedModel, settle_event

log = structlog.get_logger("meterway.spool")


async def drain_spool(deps: SettleDeps, batch: int = 500) -> int:
    rows = await deps.pg.fetch(
        "SELECT request_id, event FROM spooled_events ORDER BY created_at LIMIT $1", batch
    )
    for row in rows:
        try:
            await settle_event(deps, UsageEvent.from_json(row["event"]))
        except (UnpricedModel, LookupError, ValueError) as exc:  # stays spooled, logged
            log.error("spooled_event_not_settled", request_id=row["request_id"], error=str(exc))
            continue
        await deps.pg.execute("DELETE FROM spooled_events WHERE request_id = $1", row["request_id"])
    if rows:
        log.info("spool_drained", events=len(rows))
    return len(rows)
