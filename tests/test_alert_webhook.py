"""ALERT_WEBHOOK_URL (contract section 9): every alert POSTed once to a local
HTTP sink, as JSON {"text", "rule", "subject", "day"} with an Idempotency-Key;
retried with backoff when the sink fails (across worker restarts), given up
after 10 minutes, never POSTed again once accepted, never twice with two
workers; the delivery state shown by `meterway alerts list`."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import time
from collections import Counter

import aiohttp
import pytest
from aiohttp import web

from shared import daily
from shared.config import Settings
from shared.db import alerts as db_alerts
from tests.clients import openai_client
from tests.conftest import wait_settled
from tests.util import free_port
from worker import webhooks

HELLO = [{"role": "user", "content": "Hi"}]


class Sink:
    """A webhook receiver: answers 500 to the first `fail_first` POSTs of each
    alert (by Idempotency-Key), 200 after; records every POST."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.posts: list[tuple[str, dict, int]] = []  # (key, body, status answered)
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/T000/secret-part"

    async def _handle(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key", "")
        body = await request.json()
        tries = sum(1 for k, _, _ in self.posts if k == key)
        status = 500 if tries < self.fail_first else 200
        self.posts.append((key, body, status))
        assert request.content_type == "application/json"
        return web.Response(status=status, text="ok" if status == 200 else "down")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks/T000/secret-part", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()

    def accepted(self) -> Counter:
        return Counter(k for k, _, status in self.posts if status == 200)

    def tries(self) -> Counter:
        return Counter(k for k, _, _ in self.posts)


@pytest.fixture
async def sink():
    s = Sink()
    await s.start()
    yield s
    await s.stop()


async def eventually(check, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.1)


async def _record(pg, rule: str = "user_low_balance") -> int:
    subject = f"user:test-{secrets.token_hex(4)}"
    assert await db_alerts.record(pg, rule, subject, daily.today(), f"message for {subject}", [])
    return await pg.fetchval("SELECT id FROM alerts WHERE subject = $1", subject)


async def _state(pg, alert_id: int):
    return await pg.fetchrow(
        "SELECT webhook_state, webhook_attempts, webhook_error, webhook_delivered_at"
        " FROM alerts WHERE id = $1",
        alert_id,
    )


async def _due_now(pg, *ids: int) -> None:
    """Skip the backoff wait (the real timing is covered by the worker tests)."""
    await pg.execute("UPDATE alerts SET webhook_next_at = now() WHERE id = ANY($1)", list(ids))


async def _alerts_json(database_url: str) -> list[dict]:
    env = {**os.environ, "DATABASE_URL": database_url}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys; from meterway.cli import main; sys.exit(main())",
        "alerts", "list", "--json", env=env, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    return json.loads(out)


async def _only_mine(pg, keep: set[int]) -> None:
    """Alerts of other tests are not this sender's to POST here."""
    await pg.execute(
        "UPDATE alerts SET webhook_state = 'none' WHERE webhook_state = 'pending'"
        " AND NOT id = ANY($1)",
        list(keep),
    )


async def test_posted_once_retried_with_backoff_and_given_up_after_ten_minutes(
    pg, settings: Settings, sink: Sink, database_url: str
):
    hooked = settings.model_copy(update={"alert_webhook_url": sink.url})
    sink.fail_first = 2
    flaky, other = await _record(pg), await _record(pg, "provider_daily_warn")
    await _only_mine(pg, {flaky, other})
    async with aiohttp.ClientSession() as http:
        assert await webhooks.post_due(pg, hooked, http) == 0  # both fail once
        state = await _state(pg, flaky)
        assert state["webhook_state"] == "pending" and state["webhook_attempts"] == 1
        assert state["webhook_error"] == "HTTP 500"
        assert await webhooks.post_due(pg, hooked, http) == 0  # backoff: not due yet
        assert sink.tries() == Counter({str(flaky): 1, str(other): 1})
        await _due_now(pg, flaky, other)
        assert await webhooks.post_due(pg, hooked, http) == 0
        await _due_now(pg, flaky, other)
        assert await webhooks.post_due(pg, hooked, http) == 2  # third try accepted
        for _ in range(3):  # accepted: never POSTed again
            await _due_now(pg, flaky, other)
            assert await webhooks.post_due(pg, hooked, http) == 0
    assert sink.tries() == Counter({str(flaky): 3, str(other): 3})
    assert sink.accepted() == Counter({str(flaky): 1, str(other): 1})
    row = await pg.fetchrow("SELECT rule, subject, day FROM alerts WHERE id = $1", flaky)
    body = next(b for k, b, _ in sink.posts if k == str(flaky))
    assert set(body) == {"text", "rule", "subject", "day"}
    assert body["rule"] == "user_low_balance" and body["subject"] == row["subject"]
    assert body["day"] == row["day"].isoformat() and len(body["day"]) == 10
    assert body["subject"] in body["text"] and f"message for {row['subject']}" in body["text"]
    state = await _state(pg, flaky)
    assert state["webhook_state"] == "delivered" and state["webhook_attempts"] == 3
    assert state["webhook_error"] is None and state["webhook_delivered_at"] is not None

    # a sink that never accepts: retried for 10 minutes from the first try, then given up
    sink.fail_first = 10**6
    doomed = await _record(pg)
    await _only_mine(pg, {doomed})
    async with aiohttp.ClientSession() as http:
        await webhooks.post_due(pg, hooked, http)
        await pg.execute(
            "UPDATE alerts SET webhook_first_at = now() - interval '599 seconds',"
            " webhook_next_at = now() WHERE id = $1",
            doomed,
        )
        await webhooks.post_due(pg, hooked, http)
        failed = await _state(pg, doomed)
        assert failed["webhook_state"] == "failed" and failed["webhook_attempts"] == 2
        await _due_now(pg, doomed)
        await webhooks.post_due(pg, hooked, http)
    assert sink.tries()[str(doomed)] == 2

    # fired where no webhook is configured: marked at once, never POSTed later
    subject = f"user:test-{secrets.token_hex(4)}"
    assert await db_alerts.record(pg, "user_low_balance", subject, daily.today(), "m", [],
                                  webhook=False)  # fmt: skip
    unhooked = await pg.fetchval("SELECT id FROM alerts WHERE subject = $1", subject)
    async with aiohttp.ClientSession() as http:
        assert await webhooks.post_due(pg, settings, http) == 0
        assert await webhooks.post_due(pg, hooked, http) == 0  # not even by a sender with one
    assert (await _state(pg, unhooked))["webhook_state"] == "none"

    listed = {a["id"]: a for a in await _alerts_json(database_url)}
    assert listed[flaky]["webhook"] == "delivered" and listed[flaky]["webhook_attempts"] == 3
    assert listed[doomed]["webhook"] == "failed"
    assert listed[doomed]["webhook_error"] == "HTTP 500"
    assert listed[unhooked]["webhook"] == "none"
    assert listed[flaky]["day"] == daily.today().isoformat()


def test_backoff_doubles_to_a_minute_and_stops_after_ten_minutes():
    assert [webhooks.backoff(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    from datetime import UTC, datetime, timedelta

    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert webhooks.next_retry(1, start, start) == 1
    assert webhooks.next_retry(9, start, start + timedelta(seconds=540)) == 60
    assert webhooks.next_retry(9, start, start + timedelta(seconds=541)) is None


@pytest.mark.usefixtures("provider_keys")
async def test_two_workers_post_each_alert_once_through_failures(
    stack, books, pg, private_redis, sink: Sink
):
    """Real traffic raises two alerts; two worker processes share the sender;
    the sink fails the first two POSTs of each: three tries each, one accepted."""
    sink.fail_first = 2
    hook = {"ALERT_WEBHOOK_URL": sink.url}  # no SMTP_URL: independent of mail
    await _only_mine(pg, set())
    await stack.worker(**hook)
    await stack.worker(**hook)
    _, url = await stack.proxy()
    acct = await books.create("0.5")
    await pg.execute(
        "UPDATE users SET daily_alert_usd = 0.00001, low_balance_usd = 0.4999 WHERE id = $1",
        acct.user_id,
    )
    client = openai_client(url, acct.key)
    ids = []
    for _ in range(8):
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=HELLO, max_tokens=20
        )
        ids.append(raw.headers["x-request-id"])
    await wait_settled(pg, ids, timeout=30)
    subject = f"user:{acct.user_id}"
    rows = await pg.fetch("SELECT id, rule FROM alerts WHERE subject = $1 ORDER BY rule", subject)
    assert [r["rule"] for r in rows] == ["user_daily_spend", "user_low_balance"]
    keys = {str(r["id"]) for r in rows}

    async def both_accepted() -> bool:
        return all(sink.accepted()[k] for k in keys)

    await eventually(both_accepted, timeout=30)
    await asyncio.sleep(4)  # more rounds of both workers: still nothing new
    assert {k: sink.accepted()[k] for k in keys} == dict.fromkeys(keys, 1)
    assert {k: sink.tries()[k] for k in keys} == dict.fromkeys(keys, 3)
    for key, body, _ in sink.posts:
        if key in keys:
            assert body["subject"] == subject and body["day"] == daily.today().isoformat()
    states = await pg.fetch(
        "SELECT webhook_state, webhook_attempts, email_error FROM alerts WHERE subject = $1",
        subject,
    )
    assert {(s["webhook_state"], s["webhook_attempts"]) for s in states} == {("delivered", 3)}
    assert all(s["email_error"] == "not mailed: SMTP_URL is not set" for s in states)


async def test_retries_survive_a_worker_restart(stack, pg, sink: Sink):
    sink.fail_first = 10**6
    await _only_mine(pg, set())
    alert = await _record(pg)
    first = await stack.worker(ALERT_WEBHOOK_URL=sink.url)

    async def failed_once() -> bool:
        return (await _state(pg, alert))["webhook_attempts"] >= 1

    await eventually(failed_once)
    await stack.kill(first)  # SIGKILL mid-backoff
    tried = sink.tries()[str(alert)]
    sink.fail_first = 0
    await stack.worker(ALERT_WEBHOOK_URL=sink.url)

    async def delivered() -> bool:
        return (await _state(pg, alert))["webhook_state"] == "delivered"

    await eventually(delivered, timeout=90)  # the next try waits out the backoff (up to 60 s)
    await asyncio.sleep(2)
    assert sink.accepted()[str(alert)] == 1
    assert sink.tries()[str(alert)] == tried + 1
    assert (await _state(pg, alert))["webhook_attempts"] == tried + 1
