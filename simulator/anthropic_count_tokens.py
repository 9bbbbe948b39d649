"""Anthropic `POST /v1/messages/count_tokens` wire format: `{"input_tokens": N}`."""

from __future__ import annotations

import orjson
from aiohttp import web

from simulator.control import guard, read_json_object, require_list, require_str
from simulator.errors import Provider
from simulator.tokens import anthropic_input_tokens


async def handle_count_tokens(request: web.Request) -> web.Response:
    directives = guard(request, Provider.ANTHROPIC)
    body = await read_json_object(request)
    require_str(body, "model")
    require_list(body, "messages")
    tokens = directives.input_tokens
    if tokens is None:
        tokens = anthropic_input_tokens(body)
    return web.Response(
        body=orjson.dumps({"input_tokens": tokens}), content_type="application/json"
    )
