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
from tests.metrics_traffic import feed, reference_registry, traffic
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
async def test_worker_metrics_after_knowntraffic(stack, books, pg, private_redis):
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


@pytest.fixture
async def own_proxy(settings, provider_keys):
    """A proxy of its own: its metrics count only this test's requests."""
    from tests.conftest import start_proxy

    runner, url = await start_proxy(settings.model_copy(update={"proxy_port": free_port()}))
    yield url
    await runner.cleanup()


@pytest.mark.usefixtures("worker")
async def test_proxy_metrics_after_knowntraffic(own_proxy, accounts, pg):
    url = own_proxy
    acct = await accounts.create("5")
    openai = openai_client(url, acct.key)
    anthropic = anthropic_client(url, acct.key)
    ids = []
    for _ in range(3):
        raw = await openai.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=HELLO, max_tokens=20
        )
        ids.append(raw.headers["x-request-id"])
    for _ in range(2):
        raw = await openai.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=HELLO, max_tokens=20, stream=True
        )
        async for _chunk in raw.parse():
            pass
        ids.append(raw.headers["x-request-id"])
    raw = await anthropic.messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=20, messages=HELLO
    )
    ids.append(raw.headers["x-request-id"])
    async with aiohttp.ClientSession() as http:
        async with http.post(  # the path SDK 2.x calls
            f"{url}/v1/anthropic/v1/messages",
            headers={"x-api-key": acct.key},
            json={"model": "claude-haiku-4-5", "max_tokens": 20, "messages": HELLO},
        ) as resp:
            assert resp.status == 200
            ids.append(resp.headers["x-request-id"])
        async with http.post(
            f"{url}/v1/openai/chat/completions",
            headers={"Authorization": "Bearer mw-not-a-key"},
            json={"model": "gpt-4o", "messages": HELLO},
        ) as resp:
            assert resp.status == 401
        async with http.post(f"{url}/v1/openai/some/thing/{time.time_ns()}") as resp:
            assert resp.status == 404
    await wait_settled(pg, ids, timeout=20)
    found = await scrape(f"{url}/metrics")

    def value(name: str, **labels: str) -> float:
        return found.get((name, tuple(sorted(labels.items()))), 0)

    chat = {"provider": "openai", "endpoint": "chat/completions"}
    messages = {"provider": "anthropic", "endpoint": "messages"}
    assert value("meterway_requests_total", **chat, status="200") == 5
    assert value("meterway_requests_total", **chat, status="401") == 1
    assert value("meterway_requests_total", **messages, status="200") == 2
    assert value("meterway_requests_total", provider="openai", endpoint="other", status="404") == 1
    requests = [(k, v) for k, v in found.items() if k[0] == "meterway_requests_total"]
    assert sum(v for _, v in requests) == 9
    for name in ("meterway_request_duration_seconds", "meterway_time_to_first_byte_seconds"):
        assert value(f"{name}_count", **chat) == 6  # the 401 included
        assert value(f"{name}_count", **messages) == 2
        assert value(f"{name}_bucket", **chat, le="+Inf") == 6
    assert value("meterway_time_to_first_byte_seconds_sum", **chat) <= value(
        "meterway_request_duration_seconds_sum", **chat
    )
    assert value("meterway_upstream_duration_seconds_count", **chat) == 5
    assert value("meterway_upstream_duration_seconds_count", **messages) == 2
    assert value("meterway_in_flight_requests") == 0
    rows = await pg.fetch(
        "SELECT provider, model, sum(input_tokens) AS input, sum(output_tokens) AS output,"
        " sum(cache_read_tokens) AS cache_read, sum(cache_write_tokens) AS cache_write"
        " FROM usage_records WHERE request_id = ANY($1) GROUP BY provider, model",
        ids,
    )
    assert len(rows) == 3
    for row in rows:
        for kind in ("input", "output", "cache_read", "cache_write"):
            labels = {"provider": row["provider"], "model": row["model"], "kind": kind}
            assert value("meterway_tokens_total", **labels) == row[kind], labels
        assert row["input"] > 0 and row["output"] > 0
    # the counters kept from before
    assert value("meterway_enqueue_failures_total") == 0
    assert value("meterway_estimated_usage_total", provider="openai") == 0
    assert ("meterway_upstream_retries_total", ()) not in found


def test_grafana_dashboard_uses_only_metrics_that_exist():
    import json
    import re

    from proxy.metrics import Metrics
    from shared.config import REPO_ROOT

    known = set()
    for registry in (Metrics().registry, WorkerMetrics().registry):
        for family in registry.collect():
            known.add(family.name)
            known |= {f"{family.name}{s}" for s in ("_total", "_bucket", "_count", "_sum")}
    dashboard = json.loads((REPO_ROOT / "docs" / "grafana-meterway.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"meterway_\w+", target["expr"])
    }
    assert used and used <= known, used - known
    families = {"meterway_requests_total", "meterway_settled_usd_total", "meterway_tokens_total"}
    assert families <= used


def _families(text: str) -> dict:
    return {
        f.name: (
            f.type,
            f.documentation,
            sorted((s.name, sorted(s.labels.items()), s.value) for s in f.samples),
        )
        for f in text_string_to_metric_families(text)
    }


def test_plain_accumulators_render_what_prometheus_client_would(monkeypatch):
    """Every family's name, type, help, labels, cumulative buckets, counts and
    sums as prometheus_client's own classes give them for the same traffic."""
    from proxy.metrics import Metrics

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    observations = traffic(14)
    metrics = Metrics()
    feed(metrics, observations)
    ours = _families(metrics.render().decode())
    reference = _families(reference_registry(observations).decode())
    assert set(ours) == set(reference)
    for name in reference:
        assert ours[name] == reference[name], name
    assert metrics.value("meterway_requests_total", provider="openai",
                         endpoint="chat/completions", status="200") > 0  # fmt: skip
    # a fresh process: the unlabelled series at 0, the labelled ones absent
    fresh = samples(Metrics().render().decode())
    assert fresh[("meterway_enqueue_failures_total", ())] == 0
    assert fresh[("meterway_in_flight_requests", ())] == 0
    assert not [k for k in fresh if k[0] == "meterway_requests_total"]


_CHILD = """
import sys
from proxy.metrics import Metrics
from tests.metrics_traffic import feed, traffic
metrics = Metrics()
feed(metrics, traffic(int(sys.argv[1])))
sys.stdout.write(metrics.render().decode())
"""


def test_processes_sharing_a_directory_sum_exactly(tmp_path):
    """`serve --workers N`: three processes' traffic summed by any scrape equals
    the same traffic counted in one registry; a dead process's counts stay and
    its in-flight requests go."""
    import os
    import subprocess
    import sys

    from prometheus_client import CollectorRegistry, multiprocess
    from prometheus_client.exposition import generate_latest

    from shared.config import REPO_ROOT

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    pids = []
    for seed in (1, 2, 3):
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, str(seed)],
            env=env, cwd=REPO_ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
        pids.append(proc)
    last = samples(pids[-1].stdout)  # the last process's own scrape saw the two before it
    observations = traffic(1) + traffic(2) + traffic(3)
    reference = samples(reference_registry(observations).decode())
    in_flight = ("meterway_in_flight_requests", ())
    assert {k: v for k, v in last.items() if k != in_flight} == pytest.approx(
        {k: v for k, v in reference.items() if k != in_flight}
    )
    # histogram counts exact, not approximately
    for key, value in reference.items():
        if key[0].endswith(("_bucket", "_count")) or key[0].endswith("_total"):
            assert last[key] == value, key
    assert last[in_flight] == reference[in_flight] > 0  # livesum over the three
    for f in os.listdir(tmp_path):
        if f.startswith("gauge_livesum_"):
            multiprocess.mark_process_dead(int(f.split("_")[2][:-3]), str(tmp_path))
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, str(tmp_path))
    after = samples(generate_latest(registry).decode())
    assert after.get(in_flight, 0) == 0
    assert (
        after[
            (
                "meterway_requests_total",
                (("endpoint", "messages"), ("provider", "anthropic"), ("status", "200")),
            )
        ]
        == reference[
            (
                "meterway_requests_total",
                (("endpoint", "messages"), ("provider", "anthropic"), ("status", "200")),
            )
        ]
    )
