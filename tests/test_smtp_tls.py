"""Alert mail never sends SMTP credentials in plain text (CONTRACT.md section 1,
SMTP_URL): with `user:pass@` on `smtp://` the mailer requires STARTTLS; a
server that does not offer it gets no AUTH and no mail, and the alert is
recorded as not mailed with the reason. Without credentials plain SMTP still
delivers. Real aiosmtpd servers that offer AUTH over plain connections, seen
through a relay that records every byte the mailer sends."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from shared.config import Settings
from shared.db import alerts as db_alerts
from shared.db.migrate import migrate
from tests.util import free_port
from worker.mailer import NO_STARTTLS, SmtpTarget, send_pending

PASSWORD = "s3cret-Pa55word-" + secrets.token_hex(4)


@dataclass
class PlainServer:
    """An SMTP server without STARTTLS that offers (and accepts) AUTH anyway."""

    received: list[str] = field(default_factory=list)
    auth_attempts: list[object] = field(default_factory=list)
    client_bytes: bytearray = field(default_factory=bytearray)

    async def handle_DATA(self, server, session, envelope):
        self.received.append(envelope.content.decode())
        return "250 OK"

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        self.auth_attempts.append((mechanism, auth_data))
        return AuthResult(success=True)


@contextlib.asynccontextmanager
async def plain_smtp() -> AsyncIterator[tuple[PlainServer, int]]:
    """The server, and the port of a relay in front of it that records what the
    client sends."""
    server = PlainServer()
    controller = Controller(
        server,
        hostname="127.0.0.1",
        port=free_port(),
        authenticator=server.authenticate,
        auth_require_tls=False,  # offers AUTH PLAIN / LOGIN on the plain connection
    )
    controller.start()

    async def pipe(reader, writer, record: bytearray | None) -> None:
        try:
            while data := await reader.read(65536):
                if record is not None:
                    record.extend(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def relay(client_reader, client_writer) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", controller.port)
        await asyncio.gather(
            pipe(client_reader, up_writer, server.client_bytes),
            pipe(up_reader, client_writer, None),
        )

    relay_server = await asyncio.start_server(relay, "127.0.0.1", 0)
    port = relay_server.sockets[0].getsockname()[1]
    try:
        yield server, port
    finally:
        relay_server.close()
        controller.stop()


@pytest.fixture
async def alerts_db(database_url: str) -> AsyncIterator[tuple[str, asyncpg.Pool]]:
    """A database of its own: send_pending mails every pending alert, and these
    tests must not touch (or be raced by) the alerts of the shared one."""
    name = f"meterway_smtp_{secrets.token_hex(4)}"
    url = urlunsplit(urlsplit(database_url)._replace(path=f"/{name}"))
    await migrate(url)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    yield url, pool
    await pool.close()
    admin = await asyncpg.connect(database_url)
    with contextlib.suppress(Exception):
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await admin.close()


def mail_settings(url: str, smtp_url: str) -> Settings:
    return Settings(_env_file=None, database_url=url, smtp_url=smtp_url)


async def record_alert(pool: asyncpg.Pool, text: str) -> int:
    day = datetime.now(UTC).date()
    subject = f"user:{secrets.token_hex(3)}"
    assert await db_alerts.record(
        pool, "user_low_balance", subject, day, text, ["someone@example.com"]
    )
    return await pool.fetchval("SELECT id FROM alerts WHERE subject = $1", subject)


def password_forms(password: str, user: str) -> list[bytes]:
    """The password as AUTH PLAIN or LOGIN would carry it, and as itself."""
    raw = password.encode()
    return [
        raw,
        base64.b64encode(raw),
        base64.b64encode(f"\0{user}\0{password}".encode()),
        base64.b64encode(f"{user}\0{user}\0{password}".encode()),
    ]


async def test_credentials_need_starttls_and_plain_smtp_without_them_still_delivers(
    alerts_db, capsys
):
    url, pool = alerts_db
    async with plain_smtp() as (server, port):
        smtp_url = f"smtp://alice:{PASSWORD}@127.0.0.1:{port}"
        alert_id = await record_alert(pool, "Your balance is low.")
        sent = await send_pending(pool, mail_settings(url, smtp_url))
        await asyncio.sleep(0.2)  # anything in flight through the relay has arrived

    assert sent == 0
    assert server.received == []
    assert server.auth_attempts == []
    sent_bytes = bytes(server.client_bytes)
    assert b"EHLO" in sent_bytes.upper()  # the mailer did talk to the server...
    assert b"AUTH" not in sent_bytes.upper()  # ...but never tried to log in
    for form in password_forms(PASSWORD, "alice"):
        assert form not in sent_bytes
    row = await pool.fetchrow("SELECT emailed_at, email_error FROM alerts WHERE id = $1", alert_id)
    assert row["emailed_at"] is None
    assert row["email_error"] == NO_STARTTLS
    assert "STARTTLS" in row["email_error"] and "credentials not sent" in row["email_error"]
    # recorded as failed, not retried (and not re-sent) on the next run
    assert await send_pending(pool, mail_settings(url, smtp_url)) == 0
    captured = capsys.readouterr()
    assert PASSWORD not in captured.out + captured.err

    # without credentials, plain SMTP is still allowed: the next alert is mailed
    async with plain_smtp() as (server, port):
        alert_id = await record_alert(pool, "Your balance is still low.")
        sent = await send_pending(pool, mail_settings(url, f"smtp://127.0.0.1:{port}"))
    assert sent == 1
    assert len(server.received) == 1 and "Your balance is still low." in server.received[0]
    assert server.auth_attempts == []
    row = await pool.fetchrow("SELECT emailed_at, email_error FROM alerts WHERE id = $1", alert_id)
    assert row["emailed_at"] is not None and row["email_error"] is None


def test_the_smtp_target_never_shows_its_password():
    target = SmtpTarget.parse(f"smtp://alice:{PASSWORD}@mail.example.com:587")
    assert (target.username, target.password, target.port) == ("alice", PASSWORD, 587)
    assert target.has_credentials and not target.implicit_tls
    assert PASSWORD not in repr(target) and PASSWORD not in str(target)
    assert SmtpTarget.parse("smtps://mail.example.com").implicit_tls
    assert not SmtpTarget.parse("smtp://mail.example.com:25").has_credentials
