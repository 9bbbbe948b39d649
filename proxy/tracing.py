"""The proxy's traces (contract section 9): with `OTEL_EXPORTER_OTLP_ENDPOINT`
set, one `request` span per metered request with the children `auth` (the
admission: key, body, model and provider checks), `hold`, `upstream` (one per
attempt) and `enqueue`.

Attributes: `meterway.request_id`, `meterway.provider`, `meterway.endpoint`,
`meterway.model`, `http.response.status_code` and `meterway.upstream_request_id`
on the request span; an upstream span has its attempt's status, upstream
request id and `meterway.provider_key_id` (the key's id; no key, secret or body
is ever recorded).

Off (the variable unset when the proxy starts), the decorators below return
the function they decorate and `span()` returns one shared no-op: no
opentelemetry import, nothing on the request path. Setup: `shared.tracing`.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from shared import tracing as shared

ENABLED = shared.enabled()

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

# the request span of the metered request being served in this task (and the
# tasks it starts): child spans are made only inside one
_REQUEST: contextvars.ContextVar[Any] = contextvars.ContextVar("meterway_request_span")


class _NoSpan:
    """`span()` while tracing is off."""

    __slots__ = ()

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def set_attribute(self, key: str, value: object) -> None:
        return None


_NO_SPAN = _NoSpan()


def span(name: str) -> Any:
    """A child span of the current request: `with tracing.span("hold"):`."""
    return _NO_SPAN


def _position(fn: Callable, name: str) -> int | None:
    names = list(inspect.signature(fn).parameters)
    return names.index(name) if name in names else None


def _argument(args: tuple, kwargs: dict, index: int | None, name: str) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[index] if index is not None and index < len(args) else None


def request(fn: F) -> F:
    """The metered request handler, `(gw, request, call, request_id, ...)`."""
    return fn


def admitted(fn: F) -> F:
    """`admit(...)`, returning `(owner, body, raw, model, price)`: span `auth`."""
    return fn


def enqueue(fn: F) -> F:
    """The usage event's delivery to the queue (or the spool): span `enqueue`."""
    return fn


def upstream(fn: F) -> F:
    """`Relay._post(self, key)`, one upstream attempt: span `upstream`."""
    return fn


if ENABLED:
    from opentelemetry.trace import SpanKind, Status, StatusCode

    from proxy.errors import ProxyError

    _tracer = shared.tracer("meterway-proxy")

    def _recording() -> bool:
        """In a metered request whose trace is sampled (`OTEL_TRACES_SAMPLER`):
        the steps of a request left out make no span at all."""
        current = _REQUEST.get(None)
        return current is not None and current.is_recording()

    def span(name: str) -> Any:
        if not _recording():
            return _NO_SPAN
        return _tracer.start_as_current_span(name)

    def request(fn: F) -> F:
        call_at, id_at = _position(fn, "call"), _position(fn, "request_id")

        @functools.wraps(fn)
        async def traced(*args: Any, **kwargs: Any) -> Any:
            call = _argument(args, kwargs, call_at, "call")
            attributes = {
                "meterway.request_id": _argument(args, kwargs, id_at, "request_id") or "",
                "meterway.provider": getattr(getattr(call, "provider", None), "name", ""),
                "meterway.endpoint": getattr(getattr(call, "adapter", None), "endpoint", ""),
            }
            with _tracer.start_as_current_span(
                "request", kind=SpanKind.SERVER, attributes=attributes,
                record_exception=False, set_status_on_exception=False,
            ) as current:  # fmt: skip
                token = _REQUEST.set(current)
                try:
                    response = await fn(*args, **kwargs)
                except ProxyError as exc:
                    current.set_attribute("http.response.status_code", exc.status)
                    if exc.status >= 500:
                        current.set_status(Status(StatusCode.ERROR, str(exc)[:200]))
                    raise
                except BaseException as exc:
                    current.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                    raise
                finally:
                    _REQUEST.reset(token)
                current.set_attribute("http.response.status_code", response.status)
                return response

        return traced  # type: ignore[return-value]

    def _child(name: str, fn: F, after: Callable[[Any, Any, tuple], None] | None = None) -> F:
        @functools.wraps(fn)
        async def traced(*args: Any, **kwargs: Any) -> Any:
            if not _recording():  # not a metered request's (a free endpoint's), or unsampled
                return await fn(*args, **kwargs)
            kind = SpanKind.CLIENT if name == "upstream" else SpanKind.INTERNAL
            with _tracer.start_as_current_span(name, kind=kind) as current:
                result = await fn(*args, **kwargs)
                if after is not None:
                    after(current, result, args)
                return result

        return traced  # type: ignore[return-value]

    def _note_model(current: Any, result: Any, args: tuple) -> None:
        model = result[3] if isinstance(result, tuple) and len(result) > 3 else None
        if isinstance(model, str):
            _REQUEST.get().set_attribute("meterway.model", model)

    def _note_upstream(current: Any, response: Any, args: tuple) -> None:
        current.set_attribute("http.response.status_code", response.status)
        key = args[1] if len(args) > 1 else None
        if getattr(key, "id", None) is not None:
            current.set_attribute("meterway.provider_key_id", key.id)
        upstream_id = response.headers.get("x-request-id") or response.headers.get("request-id")
        if upstream_id:
            current.set_attribute("meterway.upstream_request_id", upstream_id)
            if response.status < 400:
                _REQUEST.get().set_attribute("meterway.upstream_request_id", upstream_id)

    def admitted(fn: F) -> F:
        return _child("auth", fn, _note_model)

    def enqueue(fn: F) -> F:
        return _child("enqueue", fn)

    def upstream(fn: F) -> F:
        return _child("upstream", fn, _note_upstream)
