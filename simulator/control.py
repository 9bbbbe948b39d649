"""Per-request directives (x-sim-* headers), auth simulation and request recording."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import orjson
from aiohttp import web

from simulator.errors import (
    GEMINI_KEY_ERRORS,
    NAMED_ERRORS,
    Provider,
    SimError,
    gemini_status_error,
)

DEFAULT_CHUNKS = 5
MAX_RECORDED = 1000


@dataclass(frozen=True, slots=True)
class Directives:
    chunks: int = DEFAULT_CHUNKS
    delay_ms: float | None = None
    status: int | None = None
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int | None = None
    no_usage: bool = False
    break_after: int | None = None
    error_event_after: int | None = None
    input_tokens: int | None = None
    service_tier: str | None = None  # as the provider reports it (None: its default)
    web_searches: int = 0  # server-side web search calls the answer made
    error: str | None = None
    thoughts_tokens: int = 0  # Gemini `thoughtsTokenCount` (thinking), within the cap
    tool_use_tokens: int = 0  # Gemini `toolUsePromptTokenCount`


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        raise SimError(400, f"{name} must be an integer, got {raw!r}") from None
    if value < 0:
        raise SimError(400, f"{name} must be >= 0, got {value}")
    return value


def _float_header(headers: Mapping[str, str], name: str) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        raise SimError(400, f"{name} must be a number, got {raw!r}") from None
    if not value >= 0:
        raise SimError(400, f"{name} must be >= 0, got {raw!r}")
    return value


def _flag_header(headers: Mapping[str, str], name: str) -> bool:
    return headers.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def parse_directives(headers: Mapping[str, str]) -> Directives:
    """Read the x-sim-* request headers; malformed values raise a 400 SimError."""
    chunks = _int_header(headers, "x-sim-chunks")
    status = _int_header(headers, "x-sim-status")
    if status is not None and not 400 <= status <= 599:
        raise SimError(400, f"x-sim-status must be an HTTP error status, got {status}")
    error = headers.get("x-sim-error")
    if error is not None:
        error = error.strip().lower()
        if error not in NAMED_ERRORS:
            names = ", ".join(sorted(NAMED_ERRORS))
            raise SimError(400, f"x-sim-error must be one of {names}, got {error!r}")
    write_total = _int_header(headers, "x-sim-cache-write-tokens") or 0
    write_1h = _int_header(headers, "x-sim-cache-write-1h-tokens")
    if write_1h is not None:
        write_1h = min(write_1h, write_total)
    return Directives(
        chunks=DEFAULT_CHUNKS if chunks is None else chunks,
        delay_ms=_float_header(headers, "x-sim-delay-ms"),
        status=status,
        cached_tokens=_int_header(headers, "x-sim-cached-tokens") or 0,
        cache_write_tokens=write_total,
        cache_write_1h_tokens=write_1h,
        no_usage=_flag_header(headers, "x-sim-no-usage"),
        break_after=_int_header(headers, "x-sim-break-after"),
        error_event_after=_int_header(headers, "x-sim-error-event-after"),
        input_tokens=_int_header(headers, "x-sim-input-tokens"),
        error=error,
        service_tier=headers.get("x-sim-service-tier") or None,
        web_searches=_int_header(headers, "x-sim-web-searches") or 0,
        thoughts_tokens=_int_header(headers, "x-sim-thoughts-tokens") or 0,
        tool_use_tokens=_int_header(headers, "x-sim-tool-use-tokens") or 0,
    )


def _api_key(request: web.Request, provider: Provider) -> str | None:
    """The key as each provider takes it: Anthropic `x-api-key`; Gemini `x-goog-api-key`
    or `?key=`; then `Authorization: Bearer`; OpenAI also `api-key` (Azure OpenAI's v1
    API style) when no Authorization header is present."""
    if provider is Provider.ANTHROPIC:
        key = request.headers.get("x-api-key")
        if key:
            return key
    if provider is Provider.GEMINI:
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if key:
            return key
    if provider is Provider.OPENAI and "authorization" not in request.headers:
        key = request.headers.get("api-key", "").strip()
        if key:
            return key
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


_OPENAI_NO_SCOPES = (
    "You have insufficient permissions for this operation. Missing scopes: api.model.read,"
    " model.request. Check that you have the correct role in your organization (Reader,"
    " Writer, Owner) and project (Member, Owner), and if you're using a restricted API key,"
    " that it has the necessary scopes."
)


def check_auth(request: web.Request, provider: Provider) -> None:
    """Simulate the provider's key checks; substrings of the key pick the failure mode,
    on every route, the models list included: `invalid` or `revoked` (401), `forbidden`
    (403, the key may do nothing), `ratelimited` (429), `broken` (500)."""
    key = _api_key(request, provider)
    if provider is Provider.GEMINI:
        _check_gemini_key(key)
        return
    if key is None:
        if provider is Provider.ANTHROPIC:
            raise SimError(401, "x-api-key header is required")
        raise SimError(401, "You didn't provide an API key.")
    if "invalid" in key or "revoked" in key:
        if provider is Provider.ANTHROPIC:
            raise SimError(401, "invalid x-api-key")
        raise SimError(401, "Incorrect API key provided.")
    if "forbidden" in key:
        if provider is Provider.ANTHROPIC:
            raise SimError(
                403, "Your API key does not have permission to use the specified resource."
            )
        raise SimError(403, _OPENAI_NO_SCOPES, "invalid_request_error", None)
    if "ratelimited" in key:
        raise SimError(429, "Rate limit reached (simulated).")
    if "broken" in key:
        raise SimError(500, "The server had an error while processing your request (simulated).")


def _check_gemini_key(key: str | None) -> None:
    """As Google answers: no key 403 PERMISSION_DENIED; a bad key 400 INVALID_ARGUMENT
    with reason API_KEY_INVALID (`invalid`, `revoked`, `expired`)."""
    if key is None:
        kind = "missing"
    elif "invalid" in key or "revoked" in key:
        kind = "invalid"
    else:
        kind = next((k for k in ("expired", "forbidden", "ratelimited", "broken") if k in key), "")
    if kind:
        raise replace(GEMINI_KEY_ERRORS[kind])


def guard(request: web.Request, provider: Provider) -> Directives:
    """Auth, then directives, then a forced x-sim-error or x-sim-status error."""
    check_auth(request, provider)
    directives = parse_directives(request.headers)
    if directives.error is not None:
        raise replace(NAMED_ERRORS[directives.error][provider])
    if directives.status is not None:
        if provider is Provider.ANTHROPIC and directives.status == 529:
            raise SimError(529, "Overloaded")
        if provider is Provider.GEMINI:
            raise gemini_status_error(directives.status)
        raise SimError(directives.status, f"Simulated error with status {directives.status}")
    return directives


async def read_json_object(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        raise SimError(400, "Request body is empty; expected a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise SimError(400, "Request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise SimError(400, "Request body must be a JSON object.")
    return body


def require_str(body: dict[str, Any], field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value:
        raise SimError(400, f"'{field}' is required and must be a non-empty string.")
    return value


def require_list(body: dict[str, Any], field: str) -> list[Any]:
    value = body.get(field)
    if not isinstance(value, list):
        raise SimError(400, f"'{field}' is required and must be an array.")
    return value


def optional_max_tokens(body: dict[str, Any], *fields: str) -> int | None:
    """First present field of `fields`; must be a positive integer."""
    for field in fields:
        value = body.get(field)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SimError(400, f"'{field}' must be a positive integer.")
        return value
    return None


class Recorder:
    """Bounded log of requests received on provider routes (newest last)."""

    def __init__(self, limit: int = MAX_RECORDED) -> None:
        self._items: deque[dict[str, Any]] = deque(maxlen=limit)

    async def record(self, request: web.Request) -> None:
        raw = await request.read() if request.can_read_body else b""
        body: Any = None
        if raw:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = None
        self._items.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.query),
                "headers": {str(k).lower(): v for k, v in request.headers.items()},
                "body": body,
            }
        )

    @property
    def items(self) -> list[dict[str, Any]]:
        return list(self._items)

    def clear(self) -> None:
        self._items.clear()
