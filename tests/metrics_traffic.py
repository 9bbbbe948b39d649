"""Known proxy metric traffic, and the same traffic counted by prometheus_client's
own classes (as the proxy did before its plain accumulators): `tests/test_metrics.py`
and the processes it starts."""

from __future__ import annotations


def reference_registry(observations: list[tuple]) -> bytes:
    """The same traffic through prometheus_client's own metric classes, as the
    proxy counted it before its plain accumulators."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    from proxy.metrics import _COUNTERS, DURATION_BUCKETS, TTFB_BUCKETS

    r = CollectorRegistry()
    counters = {
        name: Counter(name.removesuffix("_total"), help_text, labels, registry=r)
        for name, (help_text, labels) in _COUNTERS.items()
    }
    requests = Counter(
        "meterway_requests",
        "Requests answered on /v1, by provider, endpoint and status.",
        ("provider", "endpoint", "status"),
        registry=r,
    )
    duration = Histogram(
        "meterway_request_duration_seconds",
        "Time from a /v1 request's arrival to its answer's end.",
        ("provider", "endpoint"),
        buckets=DURATION_BUCKETS,
        registry=r,
    )
    ttfb = Histogram(
        "meterway_time_to_first_byte_seconds",
        "Time from a /v1 request's arrival to the first body byte sent.",
        ("provider", "endpoint"),
        buckets=TTFB_BUCKETS,
        registry=r,
    )
    upstream = Histogram(
        "meterway_upstream_duration_seconds",
        "Time of one upstream attempt, to its answer's headers or its failure.",
        ("provider", "endpoint"),
        buckets=DURATION_BUCKETS,
        registry=r,
    )
    in_flight = Gauge("meterway_in_flight_requests", "/v1 requests being answered now.", registry=r)
    tokens = Counter(
        "meterway_tokens",
        "Tokens of billed requests, by provider, model and kind.",
        ("provider", "model", "kind"),
        registry=r,
    )
    for what, *args in observations:
        if what == "done":
            provider, endpoint, status, d, t = args
            requests.labels(provider, endpoint, str(status)).inc()
            duration.labels(provider, endpoint).observe(d)
            ttfb.labels(provider, endpoint).observe(t)
        elif what == "upstream":
            upstream.labels(args[0], args[1]).observe(args[2])
        elif what == "tokens":
            provider, model, usage = args
            for kind in ("input", "cache_read", "cache_write", "output"):
                n = getattr(usage, "input_tokens" if kind == "input" else f"{kind}_tokens")
                if n:
                    tokens.labels(provider, model, kind).inc(n)
        elif what == "inc":
            name, labels = args
            c = counters[name]
            (c.labels(**labels) if labels else c).inc()
        elif what == "in":
            in_flight.inc()
        elif what == "out":
            in_flight.dec()
    from prometheus_client.exposition import generate_latest

    return generate_latest(r)


def traffic(seed: int) -> list[tuple]:
    import random
    from types import SimpleNamespace

    rnd = random.Random(seed)
    out: list[tuple] = []
    pairs = [("openai", "chat/completions"), ("anthropic", "messages"), ("other", "other")]
    for _ in range(500):
        provider, endpoint = rnd.choice(pairs)
        # exact bucket bounds too: le is inclusive
        d = rnd.choice([rnd.uniform(0, 700), 0.01, 0.5, 600, 1, 0.0])
        out.append(("in",))
        out.append(("upstream", provider, endpoint, rnd.choice([d, 0.05, 2.5])))
        out.append(("done", provider, endpoint, rnd.choice([200, 401, 429]), d, d / 2))
        usage = SimpleNamespace(
            input_tokens=rnd.randint(0, 9),
            cache_read_tokens=rnd.choice([0, 3]),
            cache_write_tokens=rnd.choice([0, 0, 7]),
            output_tokens=rnd.randint(0, 5),
        )
        out.append(("tokens", provider, rnd.choice(["m1", "m2"]), usage))
        if rnd.random() < 0.2:
            out.append(("inc", "meterway_upstream_retries_total",
                        {"provider": provider, "reason": "429"}))  # fmt: skip
        if rnd.random() < 0.1:
            out.append(("inc", "meterway_enqueue_failures_total", {}))
        if rnd.random() < 0.9:
            out.append(("out",))
    return out


def feed(metrics, observations: list[tuple]) -> None:
    for what, *args in observations:
        if what == "done":
            metrics.request_done(*args)
        elif what == "upstream":
            metrics.upstream_attempt(*args)
        elif what == "tokens":
            metrics.count_tokens(*args)
        elif what == "inc":
            metrics.inc(args[0], **args[1])
        elif what == "in":
            metrics.in_flight.inc()
        elif what == "out":
            metrics.in_flight.dec()
