"""Reading a client's request body: encoding, size limit, time limit, then JSON."""

from __future__ import annotations

import orjson
from aiohttp import web

from proxy.errors import ProxyError
from proxy.state import Gateway
from shared.http_server import BodyTimeout


async def read_json(gw: Gateway, request: web.Request) -> tuple[dict, bytes]:
    encoding = request.headers.get("Content-Encoding")
    if encoding is not None and encoding.strip().lower() not in ("", "identity"):
        # the server does not decompress (a small body could become a huge one)
        raise ProxyError(415, "Content-Encoding is not supported: send the body uncompressed")
    limit = gw.settings.max_request_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ProxyError(413, f"Request body is larger than {limit} bytes")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise ProxyError(413, f"Request body is larger than {limit} bytes") from exc
    except BodyTimeout as exc:  # armed by the server (shared.http_server) for every body
        raise ProxyError(
            408, f"Request body not received within {gw.settings.client_body_timeout_seconds:g} s"
        ) from exc
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ProxyError(400, f"Malformed JSON body: {exc}") from exc
    if not isinstance(body, dict):
        raise ProxyError(400, "The request body must be a JSON object")
    return body, raw
