"""OpenAI `POST /embeddings` wire format (JSON only; float or base64 vectors)."""

from __future__ import annotations

import base64
import struct
from typing import Any

import orjson
from aiohttp import web

from simulator.control import guard, optional_max_tokens, read_json_object, require_str
from simulator.errors import Provider, SimError
from simulator.tokens import count_from_chars

DEFAULT_DIMENSIONS = 8


MAX_BATCH = 2048


def batch_inputs(value: Any, field: str) -> list[int]:
    """Tokens of each input of a batch field (`input` of embeddings, `prompt` of
    completions): a string, a list of strings, a token array or a list of them.
    Text counts as the simulator counts it everywhere; a token id is one token."""
    if isinstance(value, str):
        return [count_from_chars(len(value))]
    if isinstance(value, list) and value:
        if all(type(item) is int for item in value):
            return [len(value)]
        if len(value) > MAX_BATCH:  # OpenAI takes at most 2048 inputs a request
            raise SimError(400, f"'{field}' has more than {MAX_BATCH} items.")
        counts = []
        for item in value:
            if isinstance(item, str):
                counts.append(count_from_chars(len(item)))
            elif isinstance(item, list) and all(type(t) is int for t in item):
                counts.append(len(item))
            else:
                break
        else:
            return counts
    raise SimError(400, f"'{field}' must be a string, an array of strings or of token ids.")


def _vector(index: int, dimensions: int) -> list[float]:
    return [round(((index + 1) * (d + 1)) % 97 / 97 - 0.5, 6) for d in range(dimensions)]


def _encoded(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


async def handle_embeddings(request: web.Request) -> web.Response:
    directives = guard(request, Provider.OPENAI)
    body = await read_json_object(request)
    model = require_str(body, "model")
    counts = batch_inputs(body.get("input"), "input")
    dimensions = optional_max_tokens(body, "dimensions") or DEFAULT_DIMENSIONS
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise SimError(400, "'encoding_format' must be 'float' or 'base64'.")
    tokens = directives.input_tokens if directives.input_tokens is not None else sum(counts)
    answer: dict[str, Any] = {
        "object": "list",
        "data": [
            {
                "object": "embedding",
                "index": i,
                "embedding": _encoded(_vector(i, dimensions), encoding),
            }
            for i in range(len(counts))
        ],
        "model": model,
    }
    if not directives.no_usage:
        answer["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    return web.Response(body=orjson.dumps(answer), content_type="application/json")
