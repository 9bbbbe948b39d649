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
) -> bool:
    """Record an alert; False when this rule already fired for the subject that day."""
    row_id = await conn.fetchval(
        "INSERT INTO alerts (rule, subject, day, occurrence, message, recipients)"
        " VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT (rule, subject, day, occurrence) DO NOTHING RETURNING id",
        rule,
        subject,
        day,
        occurrence,
        message,
        recipients,
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
