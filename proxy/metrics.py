"""The proxy's Prometheus metrics (contract section 9), exposed through prometheus_client.

The hot path never touches prometheus_client: one `Metrics` per proxy process
keeps plain accumulators (a dict of counts per label set, a fixed array of
bucket counts and a sum per histogram series), updated without locks, since
a proxy process is one asyncio thread. A `Collector` turns them into metric
families when `/metrics` is scraped.

Families: `meterway_requests_total{provider,endpoint,status}`,
`meterway_request_duration_seconds` and `meterway_time_to_first_byte_seconds`
(histograms by provider and endpoint, proxy-made errors included),
`meterway_upstream_duration_seconds` (per upstream attempt, to its answer's
headers or its failure), `meterway_in_flight_requests`,
`meterway_tokens_total{provider,model,kind}` (kind: input, the whole input;
cache_read; cache_write; output), and the counters kept from before:
`meterway_upstream_retries_total`, `meterway_estimated_usage_total`,
`meterway_enqueue_failures_total`, `meterway_provider_keys_disabled_total`,
`meterway_upstream_quota_exhausted_total`.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Iterator
from time import perf_counter

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, disable_created_metrics
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.utils import floatToGoString

from proxy.metrics_shared import SharedFiles
from proxy.providers import ADAPTERS

disable_created_metrics()  # as before: no `_created` series beside every counter and histogram

# LLM latencies: a cached answer in milliseconds, a long generation in minutes
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
TTFB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60)
CONTENT_TYPE = CONTENT_TYPE_LATEST

# when the first body byte went out: set when a response is prepared (a whole
# answer's body follows at once), and again by the relay on a stream's first chunk
FIRST_BYTE: web.RequestKey[float] = web.RequestKey("meterway_first_byte", float)
# when a /v1 request arrived (perf_counter), set by the middleware
STARTED: web.RequestKey[float] = web.RequestKey("meterway_started", float)

_PROVIDERS = frozenset(p for p, _ in ADAPTERS)
_ENDPOINTS = frozenset(e for _, e in ADAPTERS) | {"models"}
_ACCOUNT = frozenset({"usage", "key", "redeem"})


def labels_of(path: str) -> tuple[str, str]:
    """(provider, endpoint) of a /v1 path: the path's provider segment and the
    endpoint's name (`messages` for both Anthropic paths); anything unknown is
    `other`, so no client can grow the label sets."""
    parts = path.split("/", 3)  # "", "v1", provider, endpoint
    segment = parts[2] if len(parts) > 2 else ""
    rest = parts[3] if len(parts) > 3 else ""
    if segment == "account":
        return "account", rest if rest in _ACCOUNT else ("account" if not rest else "other")
    if segment not in _PROVIDERS:
        return "other", "other"
    if segment == "anthropic" and rest.startswith("v1/"):
        rest = rest[3:]
    return segment, rest if rest in _ENDPOINTS else "other"


async def mark_first_byte(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: headers go now, and a whole answer's body with them."""
    if FIRST_BYTE not in request:
        request[FIRST_BYTE] = perf_counter()


# name (as rendered) -> help text and label names of the plain counters `inc` knows
_COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "meterway_upstream_retries_total": (
        "Upstream attempts retried on another provider key.",
        ("provider", "reason"),
    ),
    "meterway_estimated_usage_total": (
        "Billed requests whose usage had to be estimated.",
        ("provider",),
    ),
    "meterway_enqueue_failures_total": ("Usage events that could not be enqueued at once.", ()),
    "meterway_provider_keys_disabled_total": (
        "Provider keys disabled after upstream 401/403.",
        ("provider",),
    ),
    "meterway_upstream_quota_exhausted_total": (
        "Upstream answers saying a provider key's quota is used up.",
        ("provider",),
    ),
}


class Family:
    """One metric family's accumulators: label values (a tuple) -> a count, or
    for a histogram a row of per-bucket counts (not cumulative; the last bucket
    is +Inf) followed by the sum of the observed values."""

    __slots__ = ("bounds", "help", "kind", "labelnames", "name", "slots", "values")

    def __init__(
        self, name: str, kind: str, help_text: str, labelnames: tuple[str, ...], bounds=()
    ) -> None:
        self.name = name  # as prometheus_client names it: a counter's without `_total`
        self.kind = kind
        self.help = help_text
        self.labelnames = labelnames
        self.bounds = tuple(float(b) for b in bounds)
        self.values: dict[tuple, object] = {(): 0} if kind != "histogram" and not labelnames else {}
        self.slots: dict[tuple, object] = {}  # with `serve --workers N`: the file positions

    def metric(self) -> Metric:
        labels = list(self.labelnames)
        if self.kind == "counter":
            family = CounterMetricFamily(self.name, self.help, labels=labels)
            for key, value in self.values.items():
                family.add_metric([str(v) for v in key], value)
        elif self.kind == "gauge":
            family = GaugeMetricFamily(self.name, self.help, labels=labels)
            for key, value in self.values.items():
                family.add_metric([str(v) for v in key], value)
        else:
            family = HistogramMetricFamily(self.name, self.help, labels=labels)
            bounds = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
            for key, row in self.values.items():
                buckets, total = [], 0
                for le, n in zip(bounds, row[:-1], strict=True):
                    total += n
                    buckets.append((le, total))
                family.add_metric([str(v) for v in key], buckets, row[-1])
        return family


class InFlight:
    """`meterway_in_flight_requests`: the middleware's `inc()`/`dec()`."""

    __slots__ = ("family", "shared")

    def __init__(self, family: Family, shared: SharedFiles | None) -> None:
        self.family = family
        self.shared = shared

    def inc(self) -> None:
        values = self.family.values
        values[()] += 1
        if self.shared is not None:
            self.shared.write(self.family, (), 0, values[()])

    def dec(self) -> None:
        values = self.family.values
        values[()] -= 1
        if self.shared is not None:
            self.shared.write(self.family, (), 0, values[()])


class Metrics:
    """This process's metrics. With `PROMETHEUS_MULTIPROC_DIR` set (`serve
    --workers N` sets it to a fresh directory for its processes), every update
    is also written, lock-free, to this process's files there in
    prometheus_client's multiprocess format (`proxy.metrics_shared`), and
    `render` sums the files of all processes: whichever process answers a
    scrape shows the whole. `meterway_in_flight_requests` then adds up the live
    processes' values (`livesum`)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR") if registry is None else None
        self.registry = registry if registry is not None else CollectorRegistry()
        self.shown = self.registry
        self.shared: SharedFiles | None = None
        if directory:
            self.shared = SharedFiles(directory, os.getpid())
            self.shown = CollectorRegistry()
            MultiProcessCollector(self.shown, directory)
        self._counters = {
            name: Family(name.removesuffix("_total"), "counter", help_text, labels)
            for name, (help_text, labels) in _COUNTERS.items()
        }
        self.requests = Family(
            "meterway_requests",
            "counter",
            "Requests answered on /v1, by provider, endpoint and status.",
            ("provider", "endpoint", "status"),
        )
        self.duration = Family(
            "meterway_request_duration_seconds",
            "histogram",
            "Time from a /v1 request's arrival to its answer's end.",
            ("provider", "endpoint"),
            DURATION_BUCKETS,
        )
        self.ttfb = Family(
            "meterway_time_to_first_byte_seconds",
            "histogram",
            "Time from a /v1 request's arrival to the first body byte sent.",
            ("provider", "endpoint"),
            TTFB_BUCKETS,
        )
        self.upstream = Family(
            "meterway_upstream_duration_seconds",
            "histogram",
            "Time of one upstream attempt, to its answer's headers or its failure.",
            ("provider", "endpoint"),
            DURATION_BUCKETS,
        )
        in_flight = Family(
            "meterway_in_flight_requests", "gauge", "/v1 requests being answered now.", ()
        )
        self.in_flight = InFlight(in_flight, self.shared)
        self.tokens = Family(
            "meterway_tokens",
            "counter",
            "Tokens of billed requests, by provider, model and kind.",
            ("provider", "model", "kind"),
        )
        # per (provider, endpoint): its duration and TTFB rows; per (provider,
        # model): its four token series' keys
        self._request_rows: dict[tuple, tuple[list, list]] = {}
        self._token_keys: dict[tuple, tuple] = {}
        self.families = [
            *self._counters.values(),
            self.requests,
            self.duration,
            self.ttfb,
            self.upstream,
            in_flight,
            self.tokens,
        ]
        if self.shared is not None:  # the unlabelled series show 0 from the start
            for family in self.families:
                if () in family.values:
                    self.shared.write(family, (), 0, 0)
        self.registry.register(self)

    # the hot path: a dict update or two per observation, inline, and no lock

    def _count(self, family: Family, key: tuple, amount: int) -> None:
        values = family.values
        value = values[key] = values.get(key, 0) + amount
        if self.shared is not None:
            self.shared.write(family, key, 0, value)

    def _row(self, family: Family, key: tuple) -> list:
        row = family.values.get(key)
        if row is None:
            row = family.values[key] = [0] * (len(family.bounds) + 2)
        return row

    def _share_observed(self, family: Family, key: tuple, row: list, i: int) -> None:
        self.shared.write(family, key, i, row[i])  # type: ignore[union-attr]
        self.shared.write(family, key, -1, row[-1])  # type: ignore[union-attr]

    def request_done(
        self, provider: str, endpoint: str, status: int, duration: float, ttfb: float
    ) -> None:
        pair = (provider, endpoint)
        rows = self._request_rows.get(pair)
        if rows is None:
            rows = self._request_rows[pair] = (
                self._row(self.duration, pair),
                self._row(self.ttfb, pair),
            )
        counts = self.requests.values
        key = (provider, endpoint, status)
        counts[key] = counts.get(key, 0) + 1
        durations, ttfbs = rows
        i = bisect_left(DURATION_BUCKETS, duration)  # the first bucket with seconds <= le
        durations[i] += 1
        durations[-1] += duration
        j = bisect_left(TTFB_BUCKETS, ttfb)
        ttfbs[j] += 1
        ttfbs[-1] += ttfb
        if self.shared is not None:
            self.shared.write(self.requests, key, 0, counts[key])
            self._share_observed(self.duration, pair, durations, i)
            self._share_observed(self.ttfb, pair, ttfbs, j)

    def upstream_attempt(self, provider: str, endpoint: str, seconds: float) -> None:
        pair = (provider, endpoint)
        row = self._row(self.upstream, pair)
        i = bisect_left(DURATION_BUCKETS, seconds)
        row[i] += 1
        row[-1] += seconds
        if self.shared is not None:
            self._share_observed(self.upstream, pair, row, i)

    def count_tokens(self, provider: str, model: str, usage) -> None:
        """A billed request's tokens (a `shared.events.TokenUsage`)."""
        keys = self._token_keys.get((provider, model))
        if keys is None:
            keys = self._token_keys[(provider, model)] = tuple(
                (provider, model, kind) for kind in ("input", "cache_read", "cache_write", "output")
            )
        values = self.tokens.values
        whole, read, write, out = keys
        if n := usage.input_tokens:
            values[whole] = values.get(whole, 0) + n
        if n := usage.cache_read_tokens:
            values[read] = values.get(read, 0) + n
        if n := usage.cache_write_tokens:
            values[write] = values.get(write, 0) + n
        if n := usage.output_tokens:
            values[out] = values.get(out, 0) + n
        if self.shared is not None:
            for key in keys:
                if key in values:
                    self.shared.write(self.tokens, key, 0, values[key])

    # the counters kept from before, by their rendered names

    def inc(self, name: str, amount: int = 1, **labels: str) -> None:
        family = self._counters[name]
        self._count(family, tuple(labels[n] for n in family.labelnames), amount)

    # scrape time

    def collect(self) -> Iterator[Metric]:
        """prometheus_client's `Collector`: this process's families, as of now."""
        for family in self.families:
            yield family.metric()

    def value(self, name: str, **labels: str) -> float:
        return self.shown.get_sample_value(name, labels) or 0

    def render(self) -> bytes:
        return generate_latest(self.shown)
