"""OpenAI legacy `POST /completions` wire format (JSON and SSE)."""

from __future__ import annotations

import secrets
import time
from typing import Any

import orjson
from aiohttp import web

from simulator.control import Directives, guard, optional_max_tokens, read_json_object, require_str
from simulator.errors import Provider, SimError, openai_error_body
from simulator.openai_embeddings import batch_inputs
from simulator.sse import SseStream, interruption
from simulator.state import default_delay_ms
from simulator.tokens import Generation, make_generation

DEFAULT_MAX_TOKENS = 16  # the provider's default for this endpoint


def _usage(prompt_tokens: int, gen: Generation, generated: int) -> dict[str, Any]:
    """Every prompt is billed once; every generated completion (`best_of` of them
    per prompt) counts its output."""
    output = gen.output_tokens * generated
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": output,
        "total_tokens": prompt_tokens + output,
    }


def _finish(gen: Generation) -> str:
    return "length" if gen.truncated else "stop"


async def handle_completions(request: web.Request) -> web.StreamResponse:
    directives = guard(request, Provider.OPENAI)
    body = await read_json_object(request)
    model = require_str(body, "model")
    counts = batch_inputs(body.get("prompt"), "prompt")
    max_tokens = optional_max_tokens(body, "max_tokens") or DEFAULT_MAX_TOKENS
    n = optional_max_tokens(body, "n") or 1
    best_of = max(optional_max_tokens(body, "best_of") or 1, n)
    for name, value, most in (("n", n, 128), ("best_of", best_of, 20)):  # OpenAI's limits
        if value > most:
            raise SimError(400, f"{value} is greater than the maximum of {most} - '{name}'")
    prompt_tokens = directives.input_tokens if directives.input_tokens is not None else sum(counts)
    gen = make_generation(directives.chunks, max_tokens, prompt_tokens)
    choices = len(counts) * n  # returned: n per prompt, indexed prompt by prompt
    usage = _usage(prompt_tokens, gen, len(counts) * best_of)
    base = {
        "id": "cmpl-" + secrets.token_hex(12),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
    }
    if body.get("stream") is True:
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        return await _stream(request, directives, gen, base, choices, usage, include_usage)
    prompt = body.get("prompt")
    echo = prompt if body.get("echo") is True and isinstance(prompt, str) else ""
    answer: dict[str, Any] = {
        **base,
        "choices": [
            {"text": echo + gen.text, "index": i, "logprobs": None, "finish_reason": _finish(gen)}
            for i in range(choices)
        ],
    }
    if not directives.no_usage:
        answer["usage"] = usage
    return web.Response(body=orjson.dumps(answer), content_type="application/json")


async def _stream(
    request: web.Request,
    directives: Directives,
    gen: Generation,
    base: dict[str, Any],
    choices: int,
    usage: dict[str, Any],
    include_usage: bool,
) -> web.StreamResponse:
    def chunk(text: str, index: int, finish: str | None = None) -> dict[str, Any]:
        data = {
            **base,
            "choices": [{"text": text, "index": index, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            data["usage"] = None
        return data

    stream = await SseStream.open(request, directives, default_delay_ms(request))
    cut = interruption(directives, gen.output_tokens)
    limit = gen.output_tokens if cut is None else cut[1]
    for text in gen.deltas[:limit]:
        for index in range(choices):
            await stream.send(chunk(text, index))
    if cut is not None:
        if cut[0] == "break":
            return stream.abort()
        await stream.send(openai_error_body(500, "The server had an error (simulated)."))
        return await stream.finish()
    for index in range(choices):
        await stream.send(chunk("", index, _finish(gen)))
    if include_usage and not directives.no_usage:
        await stream.send({**base, "choices": [], "usage": usage})
    await stream.send_raw(b"data: [DONE]\n\n")
    return await stream.finish()
