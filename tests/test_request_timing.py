"""Each usage record keeps how long its request took as the proxy measured it
(duration to the answer's end, time to the first body byte), and a request's
detail page shows both."""

from __future__ import annotations

import pytest

from tests.clients import openai_client
from tests.conftest import wait_settled

pytestmark = pytest.mark.usefixtures("worker")

MESSAGES = [{"role": "user", "content": "How long did this take?"}]


async def test_a_stream_records_its_duration_and_first_byte(proxy_url, accounts, pg):
    acct = await accounts.create("10")
    # the simulator waits 300 ms before its answer, then 80 ms before each of 5 chunks
    client = openai_client(proxy_url, acct.key, **{
        "x-sim-latency-ms": "300", "x-sim-delay-ms": "80", "x-sim-chunks": "5",
    })  # fmt: skip
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MESSAGES, stream=True
    )
    _ = [chunk async for chunk in raw.parse()]
    request_id = raw.headers["x-request-id"]
    await wait_settled(pg, [request_id])
    record = await pg.fetchrow(
        "SELECT duration_ms, ttfb_ms FROM usage_records WHERE request_id = $1", request_id
    )
    assert 300 <= record["ttfb_ms"] < record["duration_ms"]
    assert record["duration_ms"] >= 300 + 4 * 80
    assert record["duration_ms"] < 10_000


async def test_a_whole_answer_records_one_time_for_both(proxy_url, accounts, pg):
    acct = await accounts.create("10")
    client = openai_client(proxy_url, acct.key, **{"x-sim-latency-ms": "200"})
    raw = await client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    request_id = raw.headers["x-request-id"]
    await wait_settled(pg, [request_id])
    record = await pg.fetchrow(
        "SELECT duration_ms, ttfb_ms FROM usage_records WHERE request_id = $1", request_id
    )
    assert 200 <= record["duration_ms"] < 10_000
    assert record["ttfb_ms"] == record["duration_ms"]  # its body goes out at once
