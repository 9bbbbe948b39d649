"""Sends recorded alerts by email (SMTP_URL), or logs them when none is set."""

from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

import aiosmtplib
import structlog

from shared.config import Settings
from shared.db import alerts as db_alerts

log = structlog.get_logger("meterway.mailer")

_SUBJECTS = {
    "user_daily_spend": "Meterway: daily spend alert",
    "user_low_balance": "Meterway: low balance",
    "provider_daily_warn": "Meterway: provider spend warning",
    "provider_auto_paused": "Meterway: provider paused",
    "provider_key_disabled": "Meterway: provider key disabled",
}


@dataclass(frozen=True, slots=True)
class SmtpTarget:
    host: str
    port: int
    username: str | None
    password: str | None
    implicit_tls: bool

    @classmethod
    def parse(cls, url: str) -> SmtpTarget:
        """`smtp://[user:pass@]host:port` (STARTTLS when offered) or `smtps://...`."""
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError("SMTP_URL must look like smtp://[user:pass@]host:port")
        implicit = parts.scheme == "smtps"
        return cls(
            host=parts.hostname,
            port=parts.port or (465 if implicit else 25),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            implicit_tls=implicit,
        )


def build_message(settings: Settings, rule: str, text: str, recipients: list[str]) -> EmailMessage:
    message = EmailMessage()
    message["From"] = settings.alert_from
    message["To"] = ", ".join(recipients)
    message["Subject"] = _SUBJECTS.get(rule, "Meterway alert")
    message.set_content(text)
    return message


async def send_pending(pg, settings: Settings, limit: int = 100) -> int:
    """Mail every alert not yet sent; returns how many were sent. The alerts
    stay locked until they are marked, so concurrent workers mail each once."""
    async with pg.acquire() as conn, conn.transaction():
        return await _send_locked(conn, settings, limit)


async def _send_locked(pg, settings: Settings, limit: int) -> int:
    rows = await db_alerts.unsent(pg, limit)
    if not rows:
        return 0
    if not settings.smtp_url:
        for row in rows:
            await db_alerts.mark_sent(pg, row["id"], "not mailed: SMTP_URL is not set")
        return 0
    target = SmtpTarget.parse(settings.smtp_url)
    sent = 0
    for row in rows:
        if not row["recipients"]:
            await db_alerts.mark_sent(pg, row["id"], "no recipients configured")
            continue
        message = build_message(settings, row["rule"], row["message"], list(row["recipients"]))
        try:
            await aiosmtplib.send(
                message,
                hostname=target.host,
                port=target.port,
                username=target.username,
                password=target.password,
                use_tls=target.implicit_tls,
                start_tls=None if not target.implicit_tls else False,
                timeout=10,
            )
        except (aiosmtplib.SMTPException, OSError) as exc:
            log.warning("alert_mail_failed", alert_id=row["id"], error=str(exc))
            return sent  # try again on the next run
        await db_alerts.mark_sent(pg, row["id"])
        sent += 1
    return sent
