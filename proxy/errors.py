"""Errors made by the proxy, in the caller's provider's own error format.

The SDKs read these bodies to raise their typed exceptions, so the shape is
the provider kind's: OpenAI `{"error": {...}}`, Anthropic `{"type": "error",
...}`, Google `{"error": {"code", "message", "status"}}`.
"""

from __future__ import annotations

import orjson
from aiohttp import web

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "timeout",
    413: "invalid_request_error",
    415: "invalid_request_error",
    431: "invalid_request_error",
    429: "rate_limit_exceeded",
    500: "server_error",
    502: "server_error",
    503: "server_error",
    504: "server_error",
}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "request_too_large",
    415: "invalid_request_error",
    431: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
}
# Google's canonical status names (contract section 5)
_GOOGLE_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    402: "FAILED_PRECONDITION",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "INVALID_ARGUMENT",
    408: "DEADLINE_EXCEEDED",
    413: "INVALID_ARGUMENT",
    415: "INVALID_ARGUMENT",
    431: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
# Key-control refusals (contract section 6) whose code Anthropic callers see in
# the message.
_CODES_IN_MESSAGE = frozenset({"key_budget_exceeded", "model_not_allowed", "expired_api_key"})
# Refusals that the SDKs' automatic retries cannot fix.
_NO_RETRY = {400, 401, 402, 403, 404, 405, 413, 415, 431}


class ProxyError(Exception):
    """Raised anywhere on the request path; rendered by `error_response`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        retry_after: int | None = None,
        retryable: bool | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.retry_after = retry_after
        self.headers = headers
        self.retryable = status not in _NO_RETRY if retryable is None else retryable


def _anthropic_body(status: int, message: str, code: str | None, request_id: str) -> bytes:
    error_type = _ANTHROPIC_TYPES.get(status, "api_error")
    if code in _CODES_IN_MESSAGE:  # Anthropic's format has no code field
        message = f"{message} ({code})"
    return orjson.dumps(
        {
            "type": "error",
            "error": {"type": error_type, "message": message},
            "request_id": request_id,
        }
    )


def _google_body(status: int, message: str, code: str | None, request_id: str) -> bytes:
    error: dict = {
        "code": status,
        "message": message,
        "status": _GOOGLE_STATUSES.get(status, "UNKNOWN"),
    }
    if code:  # Google's place for a machine-readable reason
        error["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": code,
                "domain": "meterway",
            }
        ]
    return orjson.dumps({"error": error})


def _openai_body(status: int, message: str, code: str | None, request_id: str) -> bytes:
    error_type = _OPENAI_TYPES.get(status, "server_error")
    return orjson.dumps(
        {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    )


_FORMATS = {"anthropic": _anthropic_body, "gemini": _google_body}


def error_body(kind: str, status: int, message: str, code: str | None, request_id: str) -> bytes:
    """An error body in the format of provider kind `kind` (openai for anything else)."""
    return _FORMATS.get(kind, _openai_body)(status, message, code, request_id)


def error_response(kind: str, error: ProxyError, request_id: str) -> web.Response:
    headers = {"x-request-id": request_id}
    if error.headers:
        headers.update(error.headers)
    if error.retry_after is not None:
        headers["retry-after"] = str(error.retry_after)
    if not error.retryable:
        headers["x-should-retry"] = "false"
    return web.Response(
        status=error.status,
        body=error_body(kind, error.status, error.message, error.code, request_id),
        content_type="application/json",
        headers=headers,
    )
