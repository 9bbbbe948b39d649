"""`GET /v1/account/key`: the calling key's controls and spend (contract
section 6), the same object as `meterway key list --json` shows."""

from __future__ import annotations

from aiohttp import web

from proxy.handlers import authenticate
from proxy.state import GATEWAY, REQUEST_ID
from shared.db import api_keys
from shared.key_view import load_document


async def account_key(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    owner = await authenticate(gw, request, allow_x_api_key=True)
    key = await api_keys.get(gw.pg, owner.api_key_id)
    assert key is not None  # the key was found by its hash a moment ago
    document = await load_document(gw.pg, key)
    return web.json_response(document, headers={"x-request-id": request[REQUEST_ID]})
