"""aiohttp application wiring for the upstream simulator."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from simulator.anthropic_count_tokens import handle_count_tokens
from simulator.anthropic_messages import handle_messages
from simulator.control import Recorder
from simulator.errors import (
    REQUEST_ID_HEADERS,
    SimError,
    error_response,
    provider_for_path,
)
from simulator.gemini_generate import handle_gemini_post
from simulator.gemini_models import handle_gemini_model, handle_gemini_models
from simulator.models import handle_anthropic_models, handle_openai_models
from simulator.openai_chat import handle_chat_completions
from simulator.openai_completions import handle_completions
from simulator.openai_embeddings import handle_embeddings
from simulator.openai_responses import handle_responses
from simulator.state import CONFIG_KEY, RECORDER_KEY, SimConfig, request_id

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_BODY_BYTES = 64 * 1024 * 1024
SHUTDOWN_TIMEOUT_S = 2.0


@web.middleware
async def _provider_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Record provider-route requests and render SimError / HTTP errors per provider."""
    provider = provider_for_path(request.path)
    if provider is None:
        return await handler(request)
    try:
        await request.app[RECORDER_KEY].record(request)
        latency = _latency_seconds(request)
        if latency:
            await asyncio.sleep(latency)
        return await handler(request)
    except SimError as err:
        return error_response(provider, err, request_id(request))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(provider, SimError(exc.status, exc.reason), request_id(request))


def _latency_seconds(request: web.Request) -> float:
    """`x-sim-latency-ms`: wait this long before answering at all (time to first byte)."""
    try:
        return max(float(request.headers.get("x-sim-latency-ms", "0")), 0.0) / 1000
    except ValueError:
        return 0.0


async def _add_request_id(request: web.BaseRequest, response: web.StreamResponse) -> None:
    provider = provider_for_path(request.path)
    header = REQUEST_ID_HEADERS.get(provider) if provider is not None else None
    if header is not None and isinstance(request, web.Request):
        response.headers[header] = request_id(request)


def _json(data: object) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type="application/json")


async def _list_requests(request: web.Request) -> web.Response:
    return _json(request.app[RECORDER_KEY].items)


async def _clear_requests(request: web.Request) -> web.Response:
    request.app[RECORDER_KEY].clear()
    return _json({"ok": True})


async def _healthz(request: web.Request) -> web.Response:
    return _json({"ok": True})


def build_app(*, chunk_delay_ms: float = 0.0) -> web.Application:
    app = web.Application(middlewares=[_provider_middleware], client_max_size=MAX_BODY_BYTES)
    app[CONFIG_KEY] = SimConfig(chunk_delay_ms=chunk_delay_ms)
    app[RECORDER_KEY] = Recorder()
    app.on_response_prepare.append(_add_request_id)
    for prefix in ("/openai/v1", "/v1"):
        app.router.add_post(f"{prefix}/chat/completions", handle_chat_completions)
        app.router.add_post(f"{prefix}/responses", handle_responses)
        app.router.add_post(f"{prefix}/embeddings", handle_embeddings)
        app.router.add_post(f"{prefix}/completions", handle_completions)
    app.router.add_get("/openai/v1/models", handle_openai_models)
    app.router.add_get("/v1/models", handle_openai_models)
    app.router.add_post("/anthropic/v1/messages", handle_messages)
    app.router.add_post("/v1/messages", handle_messages)
    app.router.add_post("/anthropic/v1/messages/count_tokens", handle_count_tokens)
    app.router.add_post("/v1/messages/count_tokens", handle_count_tokens)
    app.router.add_get("/anthropic/v1/models", handle_anthropic_models)
    gemini = "/gemini/{version:v1beta|v1}/models"
    app.router.add_post(gemini + "/{target}", handle_gemini_post)
    app.router.add_get(gemini, handle_gemini_models)
    app.router.add_get(gemini + "/{model}", handle_gemini_model)
    app.router.add_get("/_sim/requests", _list_requests)
    app.router.add_delete("/_sim/requests", _clear_requests)
    app.router.add_get("/healthz", _healthz)
    return app


async def start(host: str, port: int, *, chunk_delay_ms: float = 0.0) -> web.AppRunner:
    """Serve the simulator on host:port in the running loop; `await runner.cleanup()` stops it."""
    runner = web.AppRunner(
        build_app(chunk_delay_ms=chunk_delay_ms),
        access_log=None,
        handle_signals=False,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner


def run(host: str, port: int, *, chunk_delay_ms: float = 0.0) -> None:
    """Blocking server for `meterway mock-upstream`."""

    def announce(*_args: object) -> None:
        print(f"Meterway mock upstream listening on http://{host}:{port}", flush=True)
        print(f"  OpenAI base:    http://{host}:{port}/openai/v1", flush=True)
        print(f"  Anthropic base: http://{host}:{port}/anthropic", flush=True)
        print(f"  Gemini base:    http://{host}:{port}/gemini", flush=True)

    web.run_app(
        build_app(chunk_delay_ms=chunk_delay_ms),
        host=host,
        port=port,
        access_log=None,
        print=announce,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
    )
