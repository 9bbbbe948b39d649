"""`GET /models` for both providers: a small fixed catalogue."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from simulator.control import guard
from simulator.errors import Provider

OPENAI_MODELS: tuple[str, ...] = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "o3-mini")
ANTHROPIC_MODELS: tuple[tuple[str, str], ...] = (
    ("claude-opus-4-7", "Claude Opus 4.7"),
    ("claude-sonnet-4-6", "Claude Sonnet 4.6"),
    ("claude-haiku-4-5", "Claude Haiku 4.5"),
)
_CREATED = 1_715_367_049
_CREATED_AT = "2025-05-14T00:00:00Z"


def openai_models_body() -> dict[str, Any]:
    data = [
        {"id": model, "object": "model", "created": _CREATED, "owned_by": "system"}
        for model in OPENAI_MODELS
    ]
    return {"object": "list", "data": data}


def anthropic_models_body() -> dict[str, Any]:
    data = [
        {
            "type": "model",
            "id": model,
            "display_name": name,
            "created_at": _CREATED_AT,
            "lifecycle": "active",
        }
        for model, name in ANTHROPIC_MODELS
    ]
    return {
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"],
        "last_id": data[-1]["id"],
    }


def _json(body: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def handle_openai_models(request: web.Request) -> web.Response:
    guard(request, Provider.OPENAI)
    return _json(openai_models_body())


async def handle_anthropic_models(request: web.Request) -> web.Response:
    guard(request, Provider.ANTHROPIC)
    return _json(anthropic_models_body())
