"""POSTs every recorded alert to ALERT_WEBHOOK_URL (contract section 9).

The body is JSON `{"text", "rule", "subject", "day"}` (`text` is what Slack's
incoming webhooks show), with an `Idempotency-Key` header: the alert's id. Any
2xx accepts it; anything else (another status, a timeout, a refused
connection) is retried with backoff (1 s, 2 s, 4 s ... at most 60 s apart) for
up to 10 minutes from the first attempt, then given up ('failed'). The state is
in the alert's row, so retries go on across worker restarts; a worker POSTs
only the rows it locked (FOR UPDATE SKIP LOCKED), so two workers never POST
one alert twice, and an accepted alert is never POSTed again. Independent of
SMTP: the mailer and this sender each keep their own state.

The URL may carry a secret (Slack's do): it is never logged or recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime

import aiohttp
import orjson
import structlog

from shared.config import Settings
from shared.db import alerts as db_alerts

log = structlog.get_logger("meterway.webhooks")

RETRY_FOR_SECONDS = 600.0
MAX_BACKOFF_SECONDS = 60.0
POST_TIMEOUT_SECONDS = 10.0
POLL_SECONDS = 1.0
IDLE_POLL_SECONDS = 5.0  # without a webhook URL: only marks new alerts 'none'


def payload(rule: str, subject: str, day, message: str) -> dict[str, str]:
    return {
        "text": f"Meterway alert {rule} ({subject}): {message}",
        "rule": rule,
        "subject": subject,
        "day": day.isoformat(),
    }


def backoff(attempts: int) -> float:
    """Seconds before the next try after `attempts` failed ones (1, 2, 4 ... 60)."""
    return min(MAX_BACKOFF_SECONDS, 2.0 ** max(0, attempts - 1))


def next_retry(attempts: int, first_at: datetime, now: datetime) -> float | None:
    """Seconds to the next try, or None once 10 minutes from the first attempt
    would be passed."""
    delay = backoff(attempts)
    if (now - first_at).total_seconds() + delay > RETRY_FOR_SECONDS:
        return None
    return delay


async def post_due(pg, settings: Settings, http: aiohttp.ClientSession, limit: int = 20) -> int:
    """POST every alert that is due; returns how many were accepted."""
    if not settings.alert_webhook_url:
        return 0  # alerts fired here were recorded as not posted
    async with pg.acquire() as conn, conn.transaction():
        rows = await db_alerts.webhook_due(conn, limit)
        accepted = 0
        for row in rows:
            error = await _post(http, settings.alert_webhook_url, row)
            if error is None:
                await db_alerts.webhook_delivered(conn, row["id"])
                log.info("alert_webhook_delivered", alert_id=row["id"])
                accepted += 1
                continue
            attempts = row["webhook_attempts"] + 1
            retry_in = next_retry(attempts, row["first_at"], row["now"])
            await db_alerts.webhook_failed(conn, row["id"], error, retry_in)
            if retry_in is None:
                log.error("alert_webhook_gave_up", alert_id=row["id"], tries=attempts, error=error)
            else:
                log.warning("alert_webhook_failed", alert_id=row["id"], error=error, retry=retry_in)
        return accepted


async def _post(http: aiohttp.ClientSession, url: str, row) -> str | None:
    """None when accepted (2xx), else why not, without the URL."""
    body = orjson.dumps(payload(row["rule"], row["subject"], row["day"], row["message"]))
    headers = {"Content-Type": "application/json", "Idempotency-Key": str(row["id"])}
    try:
        async with http.post(
            url,
            data=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=POST_TIMEOUT_SECONDS),
            allow_redirects=False,
        ) as resp:
            await resp.read()
            if 200 <= resp.status < 300:
                return None
            return f"HTTP {resp.status}"
    except TimeoutError:
        return f"no answer within {POST_TIMEOUT_SECONDS:g} s"
    except aiohttp.InvalidURL:
        return "ALERT_WEBHOOK_URL is not a valid URL"
    except (aiohttp.ClientError, OSError) as exc:
        return f"cannot reach it ({type(exc).__name__})"  # its text may name the URL


async def run(pg, settings: Settings) -> None:
    """The worker's sender loop: POST what is due about once a second."""
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                await post_due(pg, settings, http)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Postgres away: try again on the next round
                log.warning("alert_webhook_round_failed", error=str(exc)[:200])
            poll = POLL_SECONDS if settings.alert_webhook_url else IDLE_POLL_SECONDS
            await asyncio.sleep(poll)


async def stop(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
