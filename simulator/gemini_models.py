"""Gemini `GET {v}/models` and `GET {v}/models/{model}` in Google's Model format."""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson
from aiohttp import web

from simulator.control import guard
from simulator.errors import Provider, SimError

_METHODS = ("generateContent", "countTokens", "createCachedContent", "batchGenerateContent")


class GeminiModel(NamedTuple):
    id: str
    display_name: str
    version: str
    output_limit: int
    thinking: bool


GEMINI_MODELS: tuple[GeminiModel, ...] = (
    GeminiModel("gemini-2.5-pro", "Gemini 2.5 Pro", "2.5", 65536, True),
    GeminiModel("gemini-2.5-flash", "Gemini 2.5 Flash", "001", 65536, True),
    GeminiModel("gemini-2.5-flash-lite", "Gemini 2.5 Flash-Lite", "001", 65536, True),
    GeminiModel("gemini-2.0-flash", "Gemini 2.0 Flash", "2.0", 8192, False),
    GeminiModel("gemini-3-pro-preview", "Gemini 3 Pro Preview", "3-pro-preview", 65536, True),
)
INPUT_TOKEN_LIMIT = 1_048_576


def gemini_model_body(model: GeminiModel) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": f"models/{model.id}",
        "version": model.version,
        "displayName": model.display_name,
        "description": f"{model.display_name} (simulated)",
        "inputTokenLimit": INPUT_TOKEN_LIMIT,
        "outputTokenLimit": model.output_limit,
        "supportedGenerationMethods": list(_METHODS),
        "temperature": 1,
        "topP": 0.95,
        "topK": 64,
        "maxTemperature": 2,
    }
    if model.thinking:
        body["thinking"] = True
    return body


def gemini_models_body() -> dict[str, Any]:
    return {"models": [gemini_model_body(model) for model in GEMINI_MODELS]}


def _json(body: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def handle_gemini_models(request: web.Request) -> web.Response:
    guard(request, Provider.GEMINI)
    return _json(gemini_models_body())


async def handle_gemini_model(request: web.Request) -> web.Response:
    guard(request, Provider.GEMINI)
    name = request.match_info["model"]
    for model in GEMINI_MODELS:
        if model.id == name:
            return _json(gemini_model_body(model))
    version = request.match_info["version"]
    raise SimError(404, f"models/{name} is not found for API version {version}.")
