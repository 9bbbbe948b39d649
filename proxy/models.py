"""`GET /v1/{provider}/models` (and Gemini's `{v}/models[/{model}]`): the
catalog's models of that provider, in its kind's list format."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from proxy.auth import KEY_PLACES
from proxy.errors import ProxyError
from proxy.handlers import authenticate
from proxy.routes import Listing
from proxy.state import GATEWAY, REQUEST_ID
from shared.catalog import ModelPrice
from shared.provider_config import ProviderSpec


def _openai(names: list[str], models: dict[str, ModelPrice], spec: ProviderSpec) -> dict:
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": spec.name} for name in names
        ],
    }


def _anthropic(names: list[str], models: dict[str, ModelPrice], spec: ProviderSpec) -> dict:
    return {
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


def gemini_model(name: str, price: ModelPrice) -> dict:
    methods = ["generateContent", "streamGenerateContent", "countTokens"]
    entry: dict = {
        "name": f"models/{name}",
        "baseModelId": name,
        "displayName": name,
        "outputTokenLimit": price.max_output_tokens,
        "supportedGenerationMethods": methods,
    }
    if price.context_window:
        entry["inputTokenLimit"] = price.context_window
    return entry


def _gemini(names: list[str], models: dict[str, ModelPrice], spec: ProviderSpec) -> dict:
    return {"models": [gemini_model(name, models[name]) for name in names]}


_FORMATS: dict[str, Callable[[list[str], dict[str, ModelPrice], ProviderSpec], dict]] = {
    "openai": _openai,
    "anthropic": _anthropic,
    "gemini": _gemini,
}


async def serve_listing(request: web.Request, spec: ProviderSpec, listing: Listing) -> web.Response:
    gw = request.app[GATEWAY]
    await authenticate(gw, request, **KEY_PLACES[spec.kind])
    models = {
        name: price
        for name, price in gw.catalog.for_provider(spec.name).items()
        if spec.kind != "gemini" or price.kind == "chat"
    }
    headers = {"x-request-id": request[REQUEST_ID]}
    if listing.one:
        price = models.get(listing.model or "")
        if price is None:
            raise ProxyError(
                404, f"Model {listing.model} is not served here", code="model_not_found"
            )
        return web.json_response(gemini_model(listing.model or "", price), headers=headers)
    body = _FORMATS[spec.kind](sorted(models), models, spec)
    return web.json_response(body, headers=headers)


async def not_found(request: web.Request) -> web.Response:
    raise ProxyError(404, f"Meterway does not meter {request.method} {request.path}")
