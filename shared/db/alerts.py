"""Queries on `alerts`: recorded once per rule, subject and day; mailed later."""

from __future__ import annotations

from datetime import date

from shared.db.users import Conn


async def record(
    conn: Conn,
    rule: str,
    subject: str,
    day: date,
    message: str,
    recipients: list[str],
    occurrence: int = 0,
    *,
    webhook: bool = True,
) -> bool:
    """Record an alert; False when this rule already fired for the subject that day.
    `webhook`: ALERT_WEBHOOK_URL is set where it fires, so it is to be POSTed;
    else it is marked not posted at once (a webhook set later replays nothing,
    and a worker without one never touches other workers' alerts)."""
    row_id = await conn.fetchval(
        "INSERT INTO alerts (rule, subject, day, occurrence, message, recipients,"
        " webhook_state, webhook_error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        " ON CONFLICT (rule, subject, day, occurrence) DO NOTHING RETURNING id",
        rule,
        subject,
        day,
        occurrence,
        message,
        recipients,
        "pending" if webhook else "none",
        None if webhook else _NO_WEBHOOK,
    )
    return row_id is not None


async def unsent(conn: Conn, limit: int = 100) -> list:
    """Alerts not mailed yet, locked for this transaction: a second mailer
    (another worker) skips them instead of mailing them again."""
    return await conn.fetch(
        "SELECT id, rule, subject, message, recipients FROM alerts"
        " WHERE emailed_at IS NULL AND email_error IS NULL ORDER BY id LIMIT $1"
        " FOR UPDATE SKIP LOCKED",
        limit,
    )


async def mark_sent(conn: Conn, alert_id: int, error: str | None = None) -> None:
    if error is None:
        await conn.execute("UPDATE alerts SET emailed_at = now() WHERE id = $1", alert_id)
    else:
        await conn.execute("UPDATE alerts SET email_error = $2 WHERE id = $1", alert_id, error)


# Webhook delivery (contract section 9; migration 0008). The state is in the
# row, so retries survive worker restarts; pending rows are locked while one
# worker POSTs them, so no other worker POSTs them too.


async def webhook_due(conn: Conn, limit: int = 20) -> list:
    """Alerts whose webhook POST is due, locked for this transaction (SKIP LOCKED:
    another worker's in-flight POSTs are left to it)."""
    return await conn.fetch(
        "SELECT id, rule, subject, day, message, webhook_attempts,"
        " coalesce(webhook_first_at, now()) AS first_at, now() AS now FROM alerts"
        " WHERE webhook_state = 'pending' AND (webhook_next_at IS NULL OR webhook_next_at <= now())"
        " ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        limit,
    )


async def webhook_delivered(conn: Conn, alert_id: int) -> None:
    await conn.execute(
        "UPDATE alerts SET webhook_state = 'delivered', webhook_delivered_at = now(),"
        " webhook_attempts = webhook_attempts + 1, webhook_first_at = coalesce(webhook_first_at,"
        " now()), webhook_next_at = NULL, webhook_error = NULL WHERE id = $1",
        alert_id,
    )


async def webhook_failed(
    conn: Conn, alert_id: int, error: str, retry_in_seconds: float | None
) -> None:
    """One failed attempt: retried after `retry_in_seconds`, or, None, given up."""
    await conn.execute(
        "UPDATE alerts SET webhook_attempts = webhook_attempts + 1,"
        " webhook_first_at = coalesce(webhook_first_at, now()), webhook_error = $2,"
        " webhook_state = CASE WHEN $3::float8 IS NULL THEN 'failed' ELSE 'pending' END,"
        " webhook_next_at = now() + make_interval(secs => coalesce($3::float8, 0))"
        " WHERE id = $1",
        alert_id,
        error,
        retry_in_seconds,
    )


_NO_WEBHOOK = "not posted: ALERT_WEBHOOK_URL is not set"
