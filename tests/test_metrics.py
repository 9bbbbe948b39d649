"""Prometheus metrics (contract section 9), parsed with prometheus_client's own
parser: the worker's `/metrics` on METRICS_PORT after known traffic (real
proxy and worker processes), and queue depth and lag measured when scraped."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared import redis_keys
from tests.clients import anthropic_client, openai_client
from tests.conftest import wait_settled
from tests.util import free_port
from worker.metrics import WorkerMetrics

HELLO = [{"role": "user", "content": "Hi"}]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape(url: str) -> dict:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return samples(await resp.text())


async def wait_metric(url: str, name: str, labels: tuple, value: float, timeout=15.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = await scrape(url)
            if found.get((name, labels)) == value:
                return found
        except aiohttp.ClientError:
            found = {}
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}{labels} != {value}: {found.get((name, labels))}")
        await asyncio.sleep(0.2)


@pytest.mark.usefixtures("provider_keys")
async def test_worker_metrics_after_known_traffic(stack, books, pg, private_redis):
    _, redis = private_redis
    port = free_port()
    await stack.worker(METRICS_PORT=str(port))
    _, url = await stack.proxy()
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    await wait_metric(metrics_url, "meterway_settled_events_total", (), 0)
    acct = await books.create("5")
    openai = openai_client(url, acct.key)
    anthropic = anthropic_client(url, acct.key)
    ids = []
    for _ in range(3):
        raw = await openai.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=HELLO, max_tokens=20
        )
        ids.append(raw.headers["x-request-id"])
    for _ in range(2):
        raw = await anthropic.messages.with_raw_response.create(
            model="claude-haiku-4-5", max_tokens=20, messages=HELLO
        )
        ids.append(raw.headers["x-request-id"])
    await wait_settled(pg, ids, timeout=30)
    found = await wait_metric(metrics_url, "meterway_settled_events_total", (), 5)
    costs = {
        (r["provider"], r["model"]): r["total"]
        for r in await pg.fetch(
            "SELECT provider, model, sum(cost_usd) AS total FROM usage_records"
            " WHERE request_id = ANY($1) GROUP BY provider, model",
            ids,
        )
    }
    assert set(costs) == {("openai", "gpt-4o"), ("anthropic", "claude-haiku-4-5")}
    for (provider, model), total in costs.items():
        labels = (("model", model), ("provider", provider))
        assert total > Decimal(0)
        assert found[("meterway_settled_usd_total", labels)] == pytest.approx(float(total))
    assert found[("meterway_dead_letters_total", ())] == 0
    assert found[("meterway_usage_queue_depth", ())] == 0
    assert found[("meterway_settlement_lag_seconds", ())] == 0

    # an unreadable event: dead-lettered and counted, once
    await redis.xadd(redis_keys.USAGE_STREAM, {b"e": b"not an event"})
    found = await wait_metric(metrics_url, "meterway_dead_letters_total", (), 1)
    assert found[("meterway_settled_events_total", ())] == 5


async def test_queue_depth_and_lag_measured_when_scraped(private_redis, pg):
    """Measured from the stream (entries are deleted once settled) and the spool."""
    _, redis = private_redis
    metrics = WorkerMetrics()
    await metrics.measure(redis, pg)
    found = samples(metrics.render().decode())
    assert found[("meterway_usage_queue_depth", ())] == 0
    assert found[("meterway_settlement_lag_seconds", ())] == 0
    old_ms = int(time.time() * 1000) - 42_000
    await redis.xadd(redis_keys.USAGE_STREAM, {b"e": b"{}"}, id=f"{old_ms}-0")
    await redis.xadd(redis_keys.USAGE_STREAM, {b"e": b"{}"})
    await metrics.measure(redis, pg)
    found = samples(metrics.render().decode())
    assert found[("meterway_usage_queue_depth", ())] == 2
    assert 41.5 < found[("meterway_settlement_lag_seconds", ())] < 50
    # a spooled event (Redis was away when its request finished) counts too
    await redis.delete(redis_keys.USAGE_STREAM)
    request_id = f"metrics-test-{time.time_ns()}"
    await pg.execute(
        "INSERT INTO spooled_events (request_id, event, created_at)"
        " VALUES ($1, 'x', now() - interval '90 seconds')",
        request_id,
    )
    try:
        await metrics.measure(redis, pg)
    finally:
        await pg.execute("DELETE FROM spooled_events WHERE request_id = $1", request_id)
    found = samples(metrics.render().decode())
    assert found[("meterway_usage_queue_depth", ())] == 0
    assert 89.5 < found[("meterway_settlement_lag_seconds", ())] < 100


def test_settled_usd_is_summed_exactly_then_converted():
    from types import SimpleNamespace as E

    metrics = WorkerMetrics()
    events = [E(provider="openai", model="m", request_id=str(i)) for i in range(10)]
    metrics.count_settled(events, {str(i): Decimal("0.1") for i in range(10)})
    metrics.count_settled([], {})
    found = samples(metrics.render().decode())
    assert found[("meterway_settled_usd_total", (("model", "m"), ("provider", "openai")))] == 1.0
    assert found[("meterway_settled_events_total", ())] == 10
