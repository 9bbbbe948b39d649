"""OpenTelemetry tracing setup that the proxy and the worker share (contract
section 9).

Tracing is on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set: spans go in batches, from a
background thread, to that collector over OTLP/HTTP (protobuf; the exporter
posts to `<endpoint>/v1/traces`). The SDK's own environment variables apply:
`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`,
`OTEL_TRACES_SAMPLER` (and its `_ARG`), `OTEL_BSP_SCHEDULE_DELAY` (ms between
exports) and the other `OTEL_BSP_*` limits.

Off, nothing here imports opentelemetry: `enabled()` reads the environment and
the decorators hand back the function they were given, untouched.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_tracers: dict[str, Any] = {}

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def enabled() -> bool:
    return any(os.environ.get(name) for name in _ENDPOINT_VARS)


def tracer(service: str) -> Any:
    """This process's tracer; the first call sets up the exporting provider,
    named `service` unless `OTEL_SERVICE_NAME` says otherwise."""
    found = _tracers.get(service)
    if found is not None:
        return found
    from opentelemetry import trace

    if not _tracers:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", service)})
        provider = TracerProvider(resource=resource)  # flushed at exit
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(provider)
    found = _tracers[service] = trace.get_tracer(f"meterway.{service}")
    return found


def settle_span(fn: F) -> F:
    """The worker's `settle_batch(deps, events)`: one span per batch, with its
    number of events and how many were charged (not settled before)."""
    if not enabled():
        return fn
    from opentelemetry.trace import SpanKind

    tracer_ = tracer("meterway-worker")

    @functools.wraps(fn)
    async def traced(deps: Any, events: list, *args: Any, **kwargs: Any) -> Any:
        with tracer_.start_as_current_span("settle_batch", kind=SpanKind.CONSUMER) as span:
            span.set_attribute("meterway.events", len(events))
            span.set_attribute("meterway.users", len({e.user_id for e in events}))
            settlements = await fn(deps, events, *args, **kwargs)
            span.set_attribute("meterway.charged", sum(1 for s in settlements if s.charged))
            return settlements

    return traced  # type: ignore[return-value]
