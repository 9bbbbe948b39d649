"""The proxy's Prometheus metrics (contract section 9), through prometheus_client.

One `Metrics` per proxy process, over a registry passed in (its own by
default), so a multiprocess collector can take over for `serve --workers N`
without touching the callers. The hot path calls label children cached here
(`labels()` once per label set), never the registry.

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
from time import perf_counter
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from proxy.providers import ADAPTERS

disable_created_metrics()  # no `_created` series beside every counter and histogram

# LLM latencies: a cached answer in milliseconds, a long generation in minutes
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
TTFB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60)
CONTENT_TYPE = CONTENT_TYPE_LATEST

# when the first body byte went out: set when a response is prepared (a whole
# answer's body follows at once), and again by the relay on a stream's first chunk
FIRST_BYTE: web.RequestKey[float] = web.RequestKey("meterway_first_byte", float)

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


class Metrics:
    """With `PROMETHEUS_MULTIPROC_DIR` set (`serve --workers N` sets it to a fresh
    directory for its processes), every process writes its values to files
    there and `render` sums the files of all processes: whichever process
    answers a scrape shows the whole. `meterway_in_flight_requests` then adds
    up the live processes' values (`livesum`)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.shown = r
        if registry is None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            self.shown = CollectorRegistry()
            MultiProcessCollector(self.shown)
        self._counters: dict[str, Counter] = {
            name: Counter(name.removesuffix("_total"), help_text, labels, registry=r)
            for name, (help_text, labels) in _COUNTERS.items()
        }
        self.requests = Counter(
            "meterway_requests",
            "Requests answered on /v1, by provider, endpoint and status.",
            ("provider", "endpoint", "status"),
            registry=r,
        )
        self.duration = Histogram(
            "meterway_request_duration_seconds",
            "Time from a /v1 request's arrival to its answer's end.",
            ("provider", "endpoint"),
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.ttfb = Histogram(
            "meterway_time_to_first_byte_seconds",
            "Time from a /v1 request's arrival to the first body byte sent.",
            ("provider", "endpoint"),
            buckets=TTFB_BUCKETS,
            registry=r,
        )
        self.upstream = Histogram(
            "meterway_upstream_duration_seconds",
            "Time of one upstream attempt, to its answer's headers or its failure.",
            ("provider", "endpoint"),
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "meterway_in_flight_requests",
            "/v1 requests being answered now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.tokens = Counter(
            "meterway_tokens",
            "Tokens of billed requests, by provider, model and kind.",
            ("provider", "model", "kind"),
            registry=r,
        )
        self._children: dict[tuple, Any] = {}

    # the hot path: cached children, one dict lookup each

    def _child(self, metric, key: tuple) -> Any:
        child = self._children.get((id(metric), key))
        if child is None:
            child = self._children[(id(metric), key)] = metric.labels(*key)
        return child

    def request_done(
        self, provider: str, endpoint: str, status: int, duration: float, ttfb: float
    ) -> None:
        pair = (provider, endpoint)
        self._child(self.requests, (provider, endpoint, str(status))).inc()
        self._child(self.duration, pair).observe(duration)
        self._child(self.ttfb, pair).observe(ttfb)

    def upstream_attempt(self, provider: str, endpoint: str, seconds: float) -> None:
        self._child(self.upstream, (provider, endpoint)).observe(seconds)

    def count_tokens(self, provider: str, model: str, usage) -> None:
        """A billed request's tokens (a `shared.events.TokenUsage`)."""
        for kind, n in (
            ("input", usage.input_tokens),
            ("cache_read", usage.cache_read_tokens),
            ("cache_write", usage.cache_write_tokens),
            ("output", usage.output_tokens),
        ):
            if n:
                self._child(self.tokens, (provider, model, kind)).inc(n)

    # the counters kept from before, by their rendered names

    def inc(self, name: str, amount: int = 1, **labels: str) -> None:
        counter = self._counters[name]
        key = tuple(labels[n] for n in _COUNTERS[name][1])
        if key:
            self._child(counter, key).inc(amount)
        else:
            counter.inc(amount)

    def value(self, name: str, **labels: str) -> float:
        return self.shown.get_sample_value(name, labels) or 0

    def render(self) -> bytes:
        return generate_latest(self.shown)
