"""Alerts by email (a real local SMTP server), provider auto-pause seen on two
proxy instances, and per-key rate limits shared by two proxy instances."""

from __future__ import annotations

import asyncio
import time

import anthropic
import openai
import pytest
from aiosmtpd.controller import Controller

from shared import daily, invalidation
from tests.clients import anthropic_client, openai_client
from tests.conftest import wait_settled
from tests.util import free_port

HELLO = [{"role": "user", "content": "Hi"}]
pytestmark = pytest.mark.usefixtures("provider_keys")


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], str]] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((list(envelope.rcpt_tos), envelope.content.decode()))
        return "250 OK"

    def subjects(self) -> list[str]:
        return [
            line.split(":", 1)[1].strip()
            for _, text in self.messages
            for line in text.splitlines()
            if line.startswith("Subject:")
        ]


@pytest.fixture
def smtp():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield inbox, f"smtp://127.0.0.1:{controller.port}"
    controller.stop()


async def eventually(check, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.1)


async def test_each_alert_is_mailed_once_a_day_even_with_two_workers(
    stack, books, pg, private_redis, smtp
):
    inbox, smtp_url = smtp
    mail = {"SMTP_URL": smtp_url, "ALERT_OPERATOR_EMAILS": "ops@example.com"}
    await stack.worker(**mail)
    await stack.worker(**mail)
    _, url = await stack.proxy()
    acct = await books.create("0.5")
    await pg.execute(
        "UPDATE users SET daily_alert_usd = 0.00001, low_balance_usd = 0.4999 WHERE id = $1",
        acct.user_id,
    )
    client = openai_client(url, acct.key)
    ids = []
    for _ in range(12):
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=HELLO, max_tokens=20
        )
        ids.append(raw.headers["x-request-id"])
    await wait_settled(pg, ids, timeout=30)

    async def both_mailed() -> bool:
        return len([m for m in inbox.messages if acct.email in m[0]]) >= 2

    await eventually(both_mailed)
    await asyncio.sleep(6)  # another mailer run of both workers: still no duplicate
    mine = [text for rcpt, text in inbox.messages if acct.email in rcpt]
    assert len(mine) == 2
    assert sum("daily spend alert" in t for t in mine) == 1
    assert sum("low balance" in t for t in mine) == 1
    rows = await pg.fetch(
        "SELECT rule, emailed_at FROM alerts WHERE subject = $1 ORDER BY rule",
        f"user:{acct.user_id}",
    )
    assert [r["rule"] for r in rows] == ["user_daily_spend", "user_low_balance"]
    assert all(r["emailed_at"] is not None for r in rows)


async def test_auto_pause_reaches_every_proxy_and_resume_sticks(
    stack, books, pg, private_redis, smtp
):
    inbox, smtp_url = smtp
    _, redis = private_redis
    await stack.worker(SMTP_URL=smtp_url, ALERT_OPERATOR_EMAILS="ops@example.com")
    _, url_a = await stack.proxy()
    _, url_b = await stack.proxy()
    acct = await books.create("5")
    await pg.execute("UPDATE providers SET stop_usd = 0.0002 WHERE name = 'anthropic'")
    try:
        a = anthropic_client(url_a, acct.key)
        b = anthropic_client(url_b, acct.key)
        paused_at = None
        for _ in range(40):  # real traffic until the worker pauses the provider
            try:
                await a.messages.create(model="claude-haiku-4-5", max_tokens=20, messages=HELLO)
            except anthropic.RateLimitError as err:
                assert "paused" in str(err)
                paused_at = time.monotonic()
                break
            await asyncio.sleep(0.05)
        assert paused_at is not None, "the provider was never paused"
        with pytest.raises(anthropic.RateLimitError):  # the other instance too
            await b.messages.create(model="claude-haiku-4-5", max_tokens=20, messages=HELLO)
        assert time.monotonic() - paused_at < 1.0
        # the other provider still works
        await openai_client(url_b, acct.key).chat.completions.create(
            model="gpt-4o-mini", messages=HELLO
        )

        async def operators_mailed() -> bool:
            return any("provider paused" in s for s in inbox.subjects())

        await eventually(operators_mailed)

        # resume: the threshold counts again from the spend at the resume
        await pg.execute("UPDATE providers SET paused = false WHERE name = 'anthropic'")
        await daily.mark_resume(redis, "anthropic")
        await invalidation.publish(redis, invalidation.PROVIDERS_MESSAGE)
        await asyncio.sleep(0.5)
        await b.messages.create(model="claude-haiku-4-5", max_tokens=20, messages=HELLO)
        await asyncio.sleep(1.0)  # settled, and not paused again by that one request
        assert not await pg.fetchval("SELECT paused FROM providers WHERE name = 'anthropic'")
    finally:
        await pg.execute(
            "UPDATE providers SET stop_usd = NULL, paused = false WHERE name = 'anthropic'"
        )
        await invalidation.publish(redis, invalidation.PROVIDERS_MESSAGE)


async def test_rate_limits_are_shared_by_all_proxies(stack, books, pg, private_redis):
    await stack.worker()
    _, url_a = await stack.proxy()
    _, url_b = await stack.proxy()
    acct = await books.create("5", rpm=3)
    if time.time() % 60 > 50:  # keep the test inside one minute window
        await asyncio.sleep(61 - time.time() % 60)
    a = openai_client(url_a, acct.key)
    b = openai_client(url_b, acct.key)
    ok = 0
    for client in (a, b, a):
        await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        ok += 1
    with pytest.raises(openai.RateLimitError) as err:
        await b.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    retry_after = int(err.value.response.headers["retry-after"])
    assert 1 <= retry_after <= 60
    assert "requests per minute" in err.value.message
    assert ok == 3
    # refused requests are not billed
    await asyncio.sleep(0.5)
    assert (
        await pg.fetchval("SELECT count(*) FROM usage_records WHERE user_id = $1", acct.user_id)
        <= 3
    )
    assert await pg.fetchval("SELECT balance_usd FROM users WHERE id = $1", acct.user_id) < 5


async def test_token_limit_counts_finished_requests(stack, books, pg, private_redis):
    await stack.worker()
    _, url = await stack.proxy()
    acct = await books.create("5")
    await pg.execute("UPDATE api_keys SET tpm_limit = 30 WHERE id = $1", acct.api_key_id)
    if time.time() % 60 > 50:
        await asyncio.sleep(61 - time.time() % 60)
    client = openai_client(url, acct.key, **{"x-sim-input-tokens": "20", "x-sim-chunks": "5"})
    await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)  # 25 tokens
    await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)  # 50: over now
    with pytest.raises(openai.RateLimitError) as err:
        await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert "tokens per minute" in err.value.message
