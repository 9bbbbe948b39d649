"""Provider auto-pause under a burst (contract section 6, issue 14): the pause
is in Postgres and announced to every proxy before the worker acknowledges the
batch whose settlement crossed the stop threshold, so it never waits for
another batch, a timer or the next request.

The order is Redis' own: MONITOR lists every command every client (and every
script) sends, in the order the server executes them (on a cluster, each
node's list, merged by the server's timestamps: each step below is sent after
the previous one's answer). From it the test takes the usage events' XADDs
(an entry id grows with each XADD of a stream, so the k-th XADD is the k-th
smallest id), the worker's XACKs (one per settled batch and stream), and the
PUBLISH that tells the proxies the providers changed, which the worker sends
after its UPDATE has set `paused`. The costs are Postgres' exact records.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from decimal import Decimal

import openai
import pytest
from redis.asyncio import Redis

from shared import daily, invalidation
from shared.redis_keys import INVALIDATE_CHANNEL
from tests.clients import openai_client
from tests.conftest import wait_settled

HELLO = [{"role": "user", "content": "Hi"}]
PROVIDER = "openai"
_REQUEST_ID = re.compile(r'"request_id":\s*"([^"]+)"')
pytestmark = pytest.mark.usefixtures("provider_keys")


class Monitor:
    """Every command the Redis server(s) execute, as (time, args)."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.commands: list[tuple[float, int, list[str]]] = []
        self._tasks: list[asyncio.Task] = []
        self._clients: list[Redis] = []

    async def start(self) -> None:
        for node, url in enumerate(self.urls):
            client = Redis.from_url(url)
            self._clients.append(client)
            monitor = client.monitor()
            await monitor.__aenter__()  # MONITOR answered OK: from here on, all is seen
            self._tasks.append(asyncio.create_task(self._read(monitor, node)))

    async def _read(self, monitor, node: int) -> None:
        try:
            while True:
                info = await monitor.next_command()
                self.commands.append((info["time"], node, info["command"].split(" ")))
        finally:
            with contextlib.suppress(Exception):
                await monitor.__aexit__()

    async def stop(self) -> list[list[str]]:
        if self._tasks:
            await asyncio.sleep(0.2)  # what the servers executed so far has been sent to us
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for client in self._clients:
            await client.aclose()
        self._tasks, self._clients = [], []
        # one node: its order as listed; several: by the server time (stable per node)
        return [args for _, _, args in sorted(self.commands, key=lambda c: (c[0], c[1]))]


def node_urls(server) -> list[str]:
    ports = getattr(server, "ports", None) or [server.port]
    return [f"redis://127.0.0.1:{port}/0" for port in ports]


async def test_auto_pause_is_set_before_the_crossing_batch_is_acknowledged(
    stack, books, pg, private_redis
):
    server, redis = private_redis
    # one lane and small batches: the burst settles in many batches, one after
    # the other, so "the batch that crossed" is the first whose records reach the
    # threshold in the order of the acknowledgements
    await stack.worker(SETTLE_LANES="1", SETTLE_BATCH_SIZE="3")
    _, url = await stack.proxy()
    acct = await books.create("20")
    client = openai_client(url, acct.key)
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=HELLO, max_tokens=16
    )  # one request first: what one costs
    first = raw.headers["x-request-id"]
    await wait_settled(pg, [first])
    cost = await pg.fetchval("SELECT cost_usd FROM usage_records WHERE request_id = $1", first)
    assert cost > 0
    await daily.mark_resume(redis, PROVIDER)  # the threshold counts from here
    stop = cost * 10
    await pg.execute("UPDATE providers SET stop_usd = $2 WHERE name = $1", PROVIDER, stop)
    monitor = Monitor(node_urls(server))
    await monitor.start()
    try:

        async def one() -> str | None:
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model="gpt-4o-mini", messages=HELLO, max_tokens=16
                )
                return raw.headers["x-request-id"]
            except openai.RateLimitError as err:  # the pause reached the proxy mid-burst
                assert "paused" in str(err)
                return None

        answered = await asyncio.gather(*(one() for _ in range(40)))
        ids = [i for i in answered if i is not None]
        assert len(ids) >= 10, "the burst did not cross the threshold"
        await wait_settled(pg, ids, timeout=30)
        await asyncio.sleep(0.5)  # the last batch's acknowledgement
        commands = await monitor.stop()

        costs = {
            r["request_id"]: r["cost_usd"]
            for r in await pg.fetch(
                "SELECT request_id, cost_usd FROM usage_records WHERE request_id = ANY($1)", ids
            )
        }
        added: dict[str, list[str]] = {}  # stream -> request ids in XADD order
        for args in commands:
            if args[0].upper() == "XADD" and len(args) >= 5:
                found = _REQUEST_ID.search(" ".join(args[4:]))
                if found and found.group(1) in costs:
                    added.setdefault(args[1], []).append(found.group(1))
        assert sum(len(v) for v in added.values()) == len(ids)
        acked_ids: dict[str, list[str]] = {}
        for args in commands:
            if args[0].upper() == "XACK":
                acked_ids.setdefault(args[1], []).extend(args[3:])

        def order(entry_id: str) -> tuple[int, int]:
            ms, seq = entry_id.split("-")
            return int(ms), int(seq)

        request_of: dict[tuple[str, str], str] = {}
        for stream, entry_ids in acked_ids.items():
            ours = sorted(entry_ids, key=order)
            assert len(ours) == len(added.get(stream, [])), stream
            request_of.update(
                {(stream, e): r for e, r in zip(ours, added.get(stream, []), strict=True)}
            )

        # walk the log: the acknowledgements, in order, add up the spend since
        # the resume; the one reaching the stop threshold is the crossing batch's
        total = Decimal(0)
        announced = False
        crossed = False
        batches = 0
        for args in commands:
            name = args[0].upper()
            if name == "PUBLISH" and args[1:3] == [
                INVALIDATE_CHANNEL,
                invalidation.PROVIDERS_MESSAGE,
            ]:
                announced = True
            elif name == "XACK":
                batch = [request_of[(args[1], e)] for e in args[3:] if (args[1], e) in request_of]
                if not batch:
                    continue
                batches += 1
                total += sum(costs[r] for r in batch)
                if total >= stop:
                    crossed = True
                    assert announced, (
                        f"batch {batches} crossed {stop} USD (spend since resume {total} USD)"
                        " and was acknowledged before the pause was announced"
                    )
                    break
        assert crossed, f"{total} USD settled, below the stop threshold {stop} USD"
        assert batches >= 3  # the burst settled in several batches
        row = await pg.fetchrow(
            "SELECT paused, paused_reason FROM providers WHERE name = $1", PROVIDER
        )
        assert row["paused"] and row["paused_reason"].startswith("auto:")
        # and the proxy refuses the provider now
        with pytest.raises(openai.RateLimitError, match="paused"):
            await client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    finally:
        await monitor.stop()
        await pg.execute(
            "UPDATE providers SET stop_usd = NULL, paused = false WHERE name = $1", PROVIDER
        )
        await invalidation.publish(redis, invalidation.PROVIDERS_MESSAGE)
