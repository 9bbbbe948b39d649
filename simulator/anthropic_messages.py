"""Anthropic `POST /v1/messages` wire format (JSON and named SSE events)."""

from __future__ import annotations

import secrets
from typing import Any

import orjson
from aiohttp import web

from simulator.control import (
    Directives,
    guard,
    optional_max_tokens,
    read_json_object,
    require_list,
    require_str,
)
from simulator.errors import Provider, SimError
from simulator.sse import SseStream, interruption
from simulator.state import default_delay_ms
from simulator.tokens import Generation, anthropic_input_tokens, make_generation

OVERLOADED_EVENT: dict[str, Any] = {
    "type": "error",
    "error": {"type": "overloaded_error", "message": "Overloaded"},
}


def anthropic_usage(gen: Generation, directives: Directives, output_tokens: int) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "input_tokens": gen.input_tokens,
        "cache_creation_input_tokens": directives.cache_write_tokens,
        "cache_read_input_tokens": directives.cached_tokens,
        "output_tokens": output_tokens,
        "service_tier": directives.service_tier or "standard",
    }
    if directives.web_searches:
        usage["server_tool_use"] = {"web_search_requests": directives.web_searches}
    if directives.cache_write_1h_tokens is not None:
        one_hour = directives.cache_write_1h_tokens
        usage["cache_creation"] = {
            "ephemeral_5m_input_tokens": directives.cache_write_tokens - one_hour,
            "ephemeral_1h_input_tokens": one_hour,
        }
    return usage


def _stop_reason(gen: Generation) -> str:
    return "max_tokens" if gen.truncated else "end_turn"


def _message(
    mid: str,
    model: str,
    content: list[dict[str, Any]],
    stop_reason: str | None,
    usage: dict[str, Any] | None,
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
    }
    if usage is not None:
        message["usage"] = usage
    return message


async def _stream(
    request: web.Request, directives: Directives, gen: Generation, mid: str, model: str
) -> web.StreamResponse:
    stream = await SseStream.open(request, directives, default_delay_ms(request))
    start_usage = None if directives.no_usage else anthropic_usage(gen, directives, 1)
    start = _message(mid, model, [], None, start_usage)
    await stream.send({"type": "message_start", "message": start}, "message_start")
    await stream.send(
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        "content_block_start",
    )
    await stream.send({"type": "ping"}, "ping")
    cut = interruption(directives, gen.output_tokens)
    limit = gen.output_tokens if cut is None else cut[1]
    for text in gen.deltas[:limit]:
        delta = {"type": "text_delta", "text": text}
        await stream.send(
            {"type": "content_block_delta", "index": 0, "delta": delta}, "content_block_delta"
        )
    if cut is not None:
        if cut[0] == "break":
            return stream.abort()
        await stream.send(OVERLOADED_EVENT, "error")
        return await stream.finish()
    await stream.send({"type": "content_block_stop", "index": 0}, "content_block_stop")
    message_delta: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": _stop_reason(gen), "stop_sequence": None},
    }
    if not directives.no_usage:
        message_delta["usage"] = {"output_tokens": gen.output_tokens}
    await stream.send(message_delta, "message_delta")
    await stream.send({"type": "message_stop"}, "message_stop")
    return await stream.finish()


async def handle_messages(request: web.Request) -> web.StreamResponse:
    directives = guard(request, Provider.ANTHROPIC)
    body = await read_json_object(request)
    model = require_str(body, "model")
    require_list(body, "messages")
    max_tokens = optional_max_tokens(body, "max_tokens")
    if max_tokens is None:
        raise SimError(400, "max_tokens: Field required")
    input_tokens = directives.input_tokens
    if input_tokens is None:
        input_tokens = anthropic_input_tokens(body)
    gen = make_generation(directives.chunks, max_tokens, input_tokens)
    mid = "msg_" + secrets.token_hex(12)
    if body.get("stream") is True:
        return await _stream(request, directives, gen, mid, model)
    usage = None if directives.no_usage else anthropic_usage(gen, directives, gen.output_tokens)
    content = [{"type": "text", "text": gen.text}]
    message = _message(mid, model, content, _stop_reason(gen), usage)
    return web.Response(body=orjson.dumps(message), content_type="application/json")
