"""Reading a client's request body: size limit, then JSON."""

from __future__ import annotations

import orjson
from aiohttp import web

from proxy.errors import ProxyError
from proxy.state import Gateway


async def read_json(gw: Gateway, request: web.Request) -> tuple[dict, bytes]:
    limit = gw.settings.max_request_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ProxyError(413, f"Request body is larger than {limit} bytes")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise ProxyError(413, f"Request body is larger than {limit} bytes") from exc
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProxyError(400, f"Malformed JSON body: {exc}") from exc
    if not isinstance(body, dict):
        raise ProxyError(400, "The request body must be a JSON object")
    return body, raw
