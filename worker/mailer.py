"""Sends recorded alerts by email (SMTP_URL), or logs them when none is set."""

from __future__ import annotations

from dataclasses import dataclass, field
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

import aiosmtplib
import structlog

from shared.config import Settings
from shared.db import alerts as db_alerts

log = structlog.get_logger("meterway.mailer")

SMTP_TIMEOUT_SECONDS = 10
NO_STARTTLS = "not mailed: SMTP server offers no STARTTLS; credentials not sent"


class InsecureSmtp(Exception):
    """The server would have the credentials in plain text: nothing is sent."""


_SUBJECTS = {
    "user_daily_spend": "Meterway: daily spend alert",
    "user_low_balance": "Meterway: low balance",
    "provider_daily_warn": "Meterway: provider spend warning",
    "provider_auto_paused": "Meterway: provider paused",
    "provider_key_disabled": "Meterway: provider key disabled",
}


# where in the dashboard each alert is acted on (linked when DASHBOARD_URL is set)
_PAGES = {
    "user_daily_spend": "/settings",
    "user_low_balance": "/billing",
    "provider_daily_warn": "/admin/providers",
    "provider_auto_paused": "/admin/providers",
    "provider_key_disabled": "/admin/provider-keys",
}


def mail_text(settings: Settings, rule: str, text: str) -> str:
    """The alert's text (amounts already in the display rule), and a link to the
    dashboard page where it is acted on when DASHBOARD_URL says where that is."""
    base = (settings.dashboard_url or "").strip().rstrip("/")
    if not base:
        return text
    return f"{text}\n\nDashboard: {base}{_PAGES.get(rule, '/')}"


@dataclass(frozen=True, slots=True)
class SmtpTarget:
    host: str
    port: int
    username: str | None
    password: str | None = field(repr=False)  # never in a log line or a traceback
    implicit_tls: bool = False

    @property
    def has_credentials(self) -> bool:
        return self.username is not None or self.password is not None

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
    message.set_content(mail_text(settings, rule, text))
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
            await deliver(target, message)
        except InsecureSmtp as exc:
            log.error("alert_mail_refused", alert_id=row["id"], reason=str(exc))
            await db_alerts.mark_sent(pg, row["id"], str(exc))
            continue
        except (aiosmtplib.SMTPException, OSError) as exc:
            log.warning("alert_mail_failed", alert_id=row["id"], error=str(exc))
            return sent  # try again on the next run
        await db_alerts.mark_sent(pg, row["id"])
        sent += 1
    return sent


async def deliver(target: SmtpTarget, message: EmailMessage) -> None:
    """Send one message. `smtps://` is TLS from the start; `smtp://` upgrades with
    STARTTLS when the server offers it, and with credentials it must: they are
    never sent over a plain connection (InsecureSmtp, before any AUTH)."""
    client = aiosmtplib.SMTP(
        hostname=target.host,
        port=target.port,
        use_tls=target.implicit_tls,
        start_tls=False,  # decided below, from the server's EHLO answer
        timeout=SMTP_TIMEOUT_SECONDS,
    )
    await client.connect()
    try:
        if not target.implicit_tls:
            await client.ehlo()
            if client.supports_extension("starttls"):
                await client.starttls()
                await client.ehlo()
            elif target.has_credentials:
                raise InsecureSmtp(NO_STARTTLS)
        if target.has_credentials:
            await client.login(target.username or "", target.password or "")
        await client.send_message(message)
    finally:
        try:
            await client.quit()
        except (aiosmtplib.SMTPException, OSError):
            client.close()
