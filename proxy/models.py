"""`GET /v1/{provider}/models`: the catalog's models in the provider's list format."""

from __future__ import annotations

from aiohttp import web

from proxy.errors import ProxyError
from proxy.handlers import authenticate
from proxy.state import GATEWAY, REQUEST_ID


def models_handler(provider: str):
    async def handle(request: web.Request) -> web.Response:
        gw = request.app[GATEWAY]
        await authenticate(gw, request, allow_x_api_key=provider == "anthropic")
        names = sorted(gw.catalog.for_provider(provider))
        if provider == "anthropic":
            body: dict = {
                "data": [
                    {
                        "type": "model",
                        "id": name,
                        "display_name": name,
                        "created_at": "2024-01-01T00:00:00Z",
                    }
                    for name in names
                ],
                "has_more": False,
                "first_id": names[0] if names else None,
                "last_id": names[-1] if names else None,
            }
        else:
            body = {
                "object": "list",
                "data": [
                    {"id": name, "object": "model", "created": 0, "owned_by": "openai"}
                    for name in names
                ],
            }
        return web.json_response(body, headers={"x-request-id": request[REQUEST_ID]})

    return handle


async def not_found(request: web.Request) -> web.Response:
    raise ProxyError(404, f"Meterway does not meter {request.method} {request.path}")
