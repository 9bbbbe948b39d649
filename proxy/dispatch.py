"""`/v1/{provider}/{tail}`: the provider by name (built in or added, as the
key pool last loaded them), then its kind's route for the path (proxy.routes):
metered, forwarded free, a model list, or 404 with nothing forwarded."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from proxy.free_endpoints import is_billed, serve_free
from proxy.handlers import serve_metered
from proxy.models import not_found, serve_listing
from proxy.routes import listing, resolve
from proxy.state import GATEWAY, REQUEST_ID

# (provider, endpoint) labels of the request's metrics, set once it is routed
ROUTE_LABELS = web.RequestKey("meterway_route_labels", tuple)


async def provider_path(request: web.Request) -> web.StreamResponse:
    info = request.match_info
    return await dispatch(request, info["provider"], info["tail"])


def fixed_path(provider: str, tail: str) -> Callable[[web.Request], Awaitable]:
    """The handler of one exact path, `/v1/{provider}/{tail}`: what `provider_path`
    does for it, found by aiohttp in one lookup instead of by the pattern (the
    built-in providers' metered endpoints; the provider is still looked up)."""

    async def exact_path(request: web.Request) -> web.StreamResponse:
        return await dispatch(request, provider, tail)

    return exact_path


async def dispatch(request: web.Request, provider: str, tail: str) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    spec = gw.pool.spec(provider)
    if spec is None:
        return await not_found(request)
    raw_path = request.raw_path
    if "%" in raw_path and "%2f" in raw_path.split("?", 1)[0].lower():  # an encoded slash
        return await not_found(request)  # is no separator
    if request.method == "POST":
        call = resolve(spec, tail, request)
        if call is not None:
            request[ROUTE_LABELS] = (spec.name, call.adapter.endpoint)
            serve = serve_metered if is_billed(call.adapter) else serve_free
            return await serve(gw, request, call, request[REQUEST_ID])
    elif request.method in ("GET", "HEAD"):
        found = listing(spec, tail)
        if found is not None:
            request[ROUTE_LABELS] = (spec.name, "models")
            return await serve_listing(request, spec, found)
    return await not_found(request)
