"""OpenAI `POST /chat/completions` wire format (JSON and SSE)."""

from __future__ import annotations

import secrets
import time
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
from simulator.errors import Provider, SimError, openai_error_body
from simulator.sse import SseStream, interruption
from simulator.state import default_delay_ms
from simulator.tokens import Generation, chat_input_tokens, make_generation

FINGERPRINT = "fp_sim"
MAX_CHOICES = 128


def chat_usage(gen: Generation, directives: Directives, choices: int = 1) -> dict[str, Any]:
    """The prompt is billed once; every choice's output counts."""
    cached = min(directives.cached_tokens, gen.input_tokens)
    output = gen.output_tokens * choices
    return {
        "prompt_tokens": gen.input_tokens,
        "completion_tokens": output,
        "total_tokens": gen.input_tokens + output,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _finish_reason(gen: Generation) -> str:
    return "length" if gen.truncated else "stop"


def _completion(
    cid: str, created: int, model: str, gen: Generation, directives: Directives, choices: int
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": index,
                "message": {"role": "assistant", "content": gen.text, "refusal": None},
                "logprobs": None,
                "finish_reason": _finish_reason(gen),
            }
            for index in range(choices)
        ],
    }
    if not directives.no_usage:
        body["usage"] = chat_usage(gen, directives, choices)
    body["system_fingerprint"] = FINGERPRINT
    return body


class _ChunkFactory:
    def __init__(
        self, cid: str, created: int, model: str, include_usage: bool, choices: int = 1
    ) -> None:
        self.choices = choices
        self._base = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": FINGERPRINT,
        }
        self.include_usage = include_usage

    def choice(
        self, delta: dict[str, Any], finish_reason: str | None = None, index: int = 0
    ) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            **self._base,
            "choices": [
                {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def usage(self, usage: dict[str, Any]) -> dict[str, Any]:
        return {**self._base, "choices": [], "usage": usage}


async def _stream(
    request: web.Request,
    directives: Directives,
    gen: Generation,
    chunks: _ChunkFactory,
) -> web.StreamResponse:
    stream = await SseStream.open(request, directives, default_delay_ms(request))
    indexes = range(chunks.choices)
    for index in indexes:
        role = {"role": "assistant", "content": "", "refusal": None}
        await stream.send(chunks.choice(role, index=index))
    cut = interruption(directives, gen.output_tokens)
    limit = gen.output_tokens if cut is None else cut[1]
    for text in gen.deltas[:limit]:
        for index in indexes:
            await stream.send(chunks.choice({"content": text}, index=index))
    if cut is not None:
        if cut[0] == "break":
            return stream.abort()
        await stream.send(openai_error_body(500, "The server had an error (simulated)."))
        return await stream.finish()
    for index in indexes:
        await stream.send(chunks.choice({}, _finish_reason(gen), index=index))
    if chunks.include_usage and not directives.no_usage:
        await stream.send(chunks.usage(chat_usage(gen, directives, chunks.choices)))
    await stream.send_raw(b"data: [DONE]\n\n")
    return await stream.finish()


async def handle_chat_completions(request: web.Request) -> web.StreamResponse:
    directives = guard(request, Provider.OPENAI)
    body = await read_json_object(request)
    model = require_str(body, "model")
    require_list(body, "messages")
    max_tokens = optional_max_tokens(body, "max_completion_tokens", "max_tokens")
    input_tokens = directives.input_tokens
    if input_tokens is None:
        input_tokens = chat_input_tokens(body)
    gen = make_generation(directives.chunks, max_tokens, input_tokens)
    choices = optional_max_tokens(body, "n") or 1
    if choices > MAX_CHOICES:  # as OpenAI: at most 128 choices
        raise SimError(400, f"{choices} is greater than the maximum of {MAX_CHOICES} - 'n'")
    cid = "chatcmpl-" + secrets.token_hex(12)
    created = int(time.time())
    if body.get("stream") is True:
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        factory = _ChunkFactory(cid, created, model, include_usage, choices)
        return await _stream(request, directives, gen, factory)
    return web.Response(
        body=orjson.dumps(_completion(cid, created, model, gen, directives, choices)),
        content_type="application/json",
    )
