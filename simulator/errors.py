"""Provider identification and provider-format error bodies."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson
from aiohttp import web


class Provider(StrEnum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"


REQUEST_ID_HEADERS: dict[Provider, str] = {
    Provider.OPENAI: "x-request-id",
    Provider.ANTHROPIC: "request-id",
}

_ANTHROPIC_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}

# (type, code) pairs mirroring what api.openai.com sends for these statuses.
_OPENAI_TYPES: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


@dataclass(slots=True)
class SimError(Exception):
    """Raised by handlers; rendered by the middleware in the provider's error format."""

    status: int
    message: str

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


def provider_for_path(path: str) -> Provider | None:
    if path.startswith("/anthropic/") or path == "/v1/messages":
        return Provider.ANTHROPIC
    if path.startswith(("/openai/", "/v1/")):
        return Provider.OPENAI
    return None


def openai_error_body(status: int, message: str) -> dict[str, Any]:
    err_type, code = _OPENAI_TYPES.get(status, ("server_error", None))
    return {"error": {"message": message, "type": err_type, "param": None, "code": code}}


def anthropic_error_type(status: int) -> str:
    return _ANTHROPIC_TYPES.get(status, "api_error")


def anthropic_error_body(status: int, message: str, request_id: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": anthropic_error_type(status), "message": message},
        "request_id": request_id,
    }


def error_response(provider: Provider, err: SimError, request_id: str) -> web.Response:
    if provider is Provider.ANTHROPIC:
        body = anthropic_error_body(err.status, err.message, request_id)
    else:
        body = openai_error_body(err.status, err.message)
    headers = {"retry-after": "1"} if err.status == 429 else None
    return web.Response(
        status=err.status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers=headers,
    )
