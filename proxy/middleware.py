"""Per-request context on `/v1/`: one request id, structured logs, error format."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from time import perf_counter

import structlog
from aiohttp import web

from proxy.dispatch import ROUTE_LABELS
from proxy.errors import ProxyError, error_response
from proxy.metrics import FIRST_BYTE, STARTED, labels_of
from proxy.readiness import READINESS
from proxy.state import GATEWAY, REQUEST_ID, Gateway
from shared.provider_config import BUILTINS

log = structlog.get_logger("meterway.proxy")


_PROCESS_PART = os.urandom(8).hex()  # 64 random bits per process, then a counter
_counter = itertools.count(int.from_bytes(os.urandom(3), "big"))


def new_request_id() -> str:
    """Unique across proxies and restarts; it is what settles a request exactly once."""
    return f"req_{_PROCESS_PART}{next(_counter):08x}"


def provider_segment(path: str) -> str:
    parts = path.split("/", 3)  # "", "v1", provider, rest
    return parts[2] if len(parts) > 2 else ""


def refusals_for(app: web.Application) -> Callable[[int, str, str | None], web.Response]:
    """How the server answers a request it refused before routing it (headers
    malformed or over 64 KiB, see `shared.http_server`): in the format of its
    path's provider, built in or added, as the key pool last loaded them
    (openai's for any other path, and before the pool is loaded)."""

    def refused_request(status: int, message: str, path: str | None) -> web.Response:
        gw = app.get(GATEWAY)
        segment = provider_segment(path or "")
        if gw is not None:
            kind = gw.pool.kind_of(segment)
        else:  # a built-in provider's kind is its name
            kind = segment if segment in BUILTINS else None
        return error_response(kind or "openai", ProxyError(status, message), new_request_id())

    return refused_request


def error_kind(gw: Gateway, request: web.Request) -> str:
    """The kind of the path's provider: whose error format the answer takes."""
    return gw.pool.kind_of(provider_segment(request.path))


@web.middleware
async def request_context(request: web.Request, handler) -> web.StreamResponse:
    if not request.path.startswith("/v1/"):
        return await handler(request)
    request_id = new_request_id()
    request[REQUEST_ID] = request_id
    structlog.contextvars.bind_contextvars(request_id=request_id)
    gw = request.app[GATEWAY]
    metrics = gw.metrics
    started = request[STARTED] = perf_counter()
    metrics.in_flight.inc()
    try:
        response = await handler(request)
    except ProxyError as error:
        response = error_response(error_kind(gw, request), error, request_id)
    except web.HTTPException as exc:  # aiohttp's own 404/405/413
        error = ProxyError(exc.status, exc.reason)
        response = error_response(error_kind(gw, request), error, request_id)
    except Exception:
        log.exception("unhandled_error", path=request.path)
        error = ProxyError(500, "Internal proxy error")
        response = error_response(error_kind(gw, request), error, request_id)
    finally:
        structlog.contextvars.unbind_contextvars("request_id")
        metrics.in_flight.dec()
    if request.app[READINESS].draining:  # a load balancer reconnects to another proxy
        response.force_close()
        if not response.prepared:
            response.headers["Connection"] = "close"
    done = perf_counter()  # a whole answer not sent yet goes out right after this
    first = request.get(FIRST_BYTE, done)
    labels = request.get(ROUTE_LABELS) or labels_of(request.path)
    metrics.request_done(*labels, response.status, done - started, first - started)
    return response
