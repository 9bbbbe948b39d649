"""The metered LLM endpoints: auth -> catalog -> hold -> relay -> enqueue."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable
from functools import partial
from time import perf_counter

import structlog
from aiohttp import web
from redis.exceptions import RedisError

from proxy import tracing
from proxy.auth import KEY_PLACES, presented_key
from proxy.body import read_json
from proxy.errors import ProxyError
from proxy.hold_bound import (
    hold_bound,
    insufficient_balance,
    key_budget_exceeded,
)
from proxy.key_controls import (
    budget_of,
    check_expiry,
    check_model,
    key_tag,
    rate_limit_of,
    seconds_to_next_minute,
)
from proxy.metrics import FIRST_BYTE, STARTED
from proxy.providers.bounds import RequestBound
from proxy.readiness import READINESS
from proxy.relay import Relay, RelayResult
from proxy.routes import Call
from proxy.state import Gateway
from shared.balance_view import MAX_UNITS
from shared.catalog import ModelPrice
from shared.db.api_keys import KeyOwner
from shared.events import EncodedUsageEvent, TokenUsage, UsageEvent
from shared.pricing import cost_units
from shared.pricing import hold_units as units_of_hold

log = structlog.get_logger("meterway.proxy")

_ENQUEUE_ATTEMPTS = 3
_SEND_FIRST_BYTES = 48 * 1024


_BASE64_RUN = re.compile(rb"[A-Za-z0-9+/=]{512,}")


def prompt_estimate(raw: bytes) -> int:
    """What an answer without usage is billed for as its input (an estimate, not
    the hold's bound): one token per four bytes of JSON, not counting long base64
    runs (images, PDFs), which providers price apart."""
    if len(raw) > 16_384:
        raw = _BASE64_RUN.sub(b"", raw)
    return len(raw) // 4 + 1


async def authenticate(
    gw: Gateway, request: web.Request, *, allow_x_api_key: bool, allow_google: bool = False
) -> KeyOwner:
    key = presented_key(request, allow_x_api_key=allow_x_api_key, allow_google=allow_google)
    if key is None:
        raise ProxyError(401, "Missing API key: send 'Authorization: Bearer <key>'")
    owner = await gw.keys.lookup(key)
    if owner is None:
        raise ProxyError(401, "Invalid API key", code="invalid_api_key")
    check_expiry(owner)
    return owner


def priced_model(gw: Gateway, call: Call, body: dict) -> tuple[str, ModelPrice]:
    adapter = call.adapter
    model = call.model if getattr(adapter, "model_in_path", False) else body.get("model")
    if not isinstance(model, str) or not model:
        raise ProxyError(400, "Missing 'model' in the request body", code="model_required")
    price = gw.catalog.get(model)
    if price is None or price.provider != call.provider.name:
        raise ProxyError(400, f"Unknown model pricing: {model}", code="model_not_found")
    if price.kind != getattr(adapter, "model_kind", "chat"):  # an embedding model, or not one
        raise ProxyError(
            400,
            f"Model {model} is {'an' if price.kind == 'embedding' else 'not an'} embedding"
            f" model: it is not served on /{adapter.endpoint}",
            code="model_not_supported",
        )
    return model, price


def check_provider(gw: Gateway, provider: str) -> None:
    if gw.pool.is_paused(provider):
        raise ProxyError(
            429, f"Provider {provider} is paused", code="provider_paused", retryable=False
        )
    if not gw.pool.has_keys(provider):
        raise ProxyError(503, "No active API keys", code="no_active_keys", retryable=False)


def billed_usage(result: RelayResult, bound: RequestBound, raw: bytes) -> tuple[TokenUsage, bool]:
    """The usage to bill and whether it is an estimate."""
    usage = result.usage
    if usage is not None and result.usage_final:
        return usage, False
    if usage is not None:  # input known exactly, output still counting
        output = max(usage.output_tokens, result.output_estimate)
        return usage.model_copy(update={"output_tokens": output}), True
    return TokenUsage(  # an estimate, never beyond what the hold bounds (embeddings: no output)
        uncached_input_tokens=min(prompt_estimate(raw), bound.input_tokens),
        output_tokens=min(result.output_estimate, bound.output_tokens),
    ), True


@tracing.admitted
async def admit(
    gw: Gateway, request: web.Request, call: Call
) -> tuple[KeyOwner, dict, bytes, str, ModelPrice]:
    """What every LLM endpoint checks first, metered or free: the key, the body,
    the model (in the catalog, allowed for the key) and the provider (serving)."""
    owner = await authenticate(gw, request, **KEY_PLACES[call.provider.kind])
    body, raw = await read_json(gw, request)
    model, price = priced_model(gw, call, body)
    check_model(owner, model)
    check_provider(gw, call.provider.name)
    return owner, body, raw, model, price


def billing_store_unavailable(exc: RedisError) -> ProxyError:
    """Never served unmetered: Redis is needed for every hold and limit."""
    log.error("billing_store_unavailable", error=str(exc))
    return ProxyError(503, "Billing store unavailable, retry shortly", retry_after=1)


@tracing.request
async def serve_metered(
    gw: Gateway, request: web.Request, call: Call, request_id: str
) -> web.StreamResponse:
    adapter = call.adapter
    provider = call.provider.name
    owner, body, raw, model, price = await admit(gw, request, call)

    prepared = adapter.prepare(body, raw)
    bound = await hold_bound(gw, owner.user_id, adapter, body, raw, model, price)
    hold_units = units_of_hold(
        bound.input_tokens,
        bound.output_tokens,
        price,
        owner.rate_multiplier,
        bound.service_tier,
        bound.tool_calls,
    )
    if hold_units > MAX_UNITS:  # more than any balance can be: refused before Redis
        raise insufficient_balance(hold_units, 0)
    limit = rate_limit_of(owner)
    budget = budget_of(owner)
    try:
        with tracing.span("hold"):
            held = await gw.holds.place(owner.user_id, request_id, hold_units, limit, budget)
    except RedisError as exc:
        raise billing_store_unavailable(exc) from exc
    if held.rate_limited:
        raise ProxyError(
            429,
            f"Rate limit reached: {held.rate_limited} per minute for this API key",
            code="rate_limit_exceeded",
            retry_after=seconds_to_next_minute(),
        )
    if held.missing_view or held.missing_key_spend:  # Redis lost what was loaded, again
        raise ProxyError(503, "Billing store busy, retry shortly", retry_after=1)
    if held.over_budget:
        raise key_budget_exceeded(hold_units, held.available_units, budget)
    if not held.placed:
        raise insufficient_balance(hold_units, held.available_units)

    gw.holds.keep(owner.user_id, request_id)
    try:
        result = await Relay(gw, request, call, prepared, request_id).run()
    except BaseException:
        await asyncio.shield(release_quietly(gw, owner.user_id, request_id))
        raise
    finally:
        gw.holds.forget(request_id)
    if not result.billable:
        await release_quietly(gw, owner.user_id, request_id)
        return result.response

    usage, estimated = billed_usage(result, bound, raw)
    duration_ms, ttfb_ms = timing_ms(request, prepared.stream)
    gw.metrics.count_tokens(provider, model, usage)
    if estimated:
        gw.metrics.inc("meterway_estimated_usage_total", provider=provider)
    event = UsageEvent.encode(
        request_id=request_id,
        user_id=owner.user_id,
        api_key_id=owner.api_key_id,
        provider=provider,
        provider_key_id=result.provider_key_id,
        model=model,
        endpoint=adapter.endpoint,
        stream=prepared.stream,
        usage=usage,
        estimated=estimated,
        hold_units=hold_units,
        rate_multiplier=owner.rate_multiplier,
        outcome=result.outcome,
        upstream_request_id=result.upstream_request_id,
        duration_ms=duration_ms,
        ttfb_ms=ttfb_ms,
    )
    pending_units = cost_units(usage, price, owner.rate_multiplier)
    window = limit.window_key if limit and limit.tpm else None
    remember = None if estimated else result.response_id  # what continuing it will hold
    enqueue = partial(gw.queue.enqueue, event, pending_units, window, remember, key_tag(owner))
    try:
        if fits_send_buffer(result.response):  # the client need not wait for the enqueue
            await send_now(request, result.response)
        await deliver(gw, event, enqueue)
    except asyncio.CancelledError:  # shutdown: enqueue (again), to the end; idempotent
        gw.finish_in_background(deliver(gw, event, enqueue))
        raise
    return result.response


def timing_ms(request: web.Request, streamed: bool) -> tuple[int, int]:
    """Milliseconds from the request's arrival to now (its answer is complete:
    a stream sent, a whole answer ready) and to the first body byte sent (a
    whole answer's goes now, with the rest)."""
    now = perf_counter()
    started = request[STARTED]  # the middleware's
    first = request.get(FIRST_BYTE, now) if streamed else now
    return round((now - started) * 1000), round((first - started) * 1000)


def fits_send_buffer(response: web.StreamResponse) -> bool:
    """A whole answer small enough that sending it never waits for the client to
    read (aiohttp waits above 64 KiB buffered): billing must not wait on them."""
    body = getattr(response, "body", None)
    return not response.prepared and isinstance(body, bytes) and len(body) <= _SEND_FIRST_BYTES


async def send_now(request: web.Request, response: web.StreamResponse) -> None:
    """Finish a whole answer now (a streamed one already is); aiohttp then has
    nothing left to send when the handler returns."""
    if response.prepared:
        return
    request[FIRST_BYTE] = perf_counter()  # the body goes out with the headers
    if request.app[READINESS].draining:  # say so in the headers (see proxy.middleware)
        response.force_close()
    with contextlib.suppress(ConnectionError):  # gone: billed all the same
        await response.prepare(request)
        await response.write_eof()


async def release_quietly(gw: Gateway, user_id: int, request_id: str) -> None:
    """Release a hold now; if Redis fails, the reaper releases it when it expires."""
    try:
        await gw.holds.release(user_id, request_id)
    except RedisError as exc:
        log.warning("hold_release_failed", error=str(exc))


@tracing.enqueue
async def deliver(
    gw: Gateway, event: EncodedUsageEvent, enqueue: Callable[[], Awaitable[None]]
) -> None:
    """Enqueue for settlement (`enqueue`: the queue call for `event`, with its
    pending charge); when Redis fails, spool the event to Postgres, where the
    worker settles it from. Only both failing loses it, loudly."""
    for attempt in range(_ENQUEUE_ATTEMPTS):
        try:
            await enqueue()
            return
        except RedisError as exc:
            gw.metrics.inc("meterway_enqueue_failures_total")
            log.warning("enqueue_failed", attempt=attempt + 1, error=str(exc))
            await asyncio.sleep(0.02 * 2**attempt)
    try:
        await gw.pg.execute(
            "INSERT INTO spooled_events (request_id, event) VALUES ($1, $2)"
            " ON CONFLICT (request_id) DO NOTHING",
            event.request_id,
            event.to_json(),
        )
        log.warning("usage_event_spooled")
    except Exception:
        log.exception("usage_event_lost", event=event.to_json())
