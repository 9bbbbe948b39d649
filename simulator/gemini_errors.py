"""Google's error format for the Gemini API: `{"error": {code, message, status, details}}`.

Pure data helpers (no simulator imports), used by `simulator.errors` to build the Gemini
entries of its error tables and to render a Gemini error body.
"""

from __future__ import annotations

from typing import Any

SERVICE = "generativelanguage.googleapis.com"
_TYPE = "type.googleapis.com/google.rpc."

# HTTP status -> canonical status string, as Google maps them.
GOOGLE_STATUS: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    402: "FAILED_PRECONDITION",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}

# What Google says for the statuses a client meets most (x-sim-status uses these).
GOOGLE_MESSAGES: dict[int, str] = {
    429: "Resource has been exhausted (e.g. check quota).",
    500: "An internal error has occurred. Please retry or report in"
    " https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
    504: "Deadline expired before operation could complete.",
}

KEY_NOT_VALID = "API key not valid. Please pass a valid API key."
KEY_EXPIRED = "API key expired. Please renew the API key."
UNREGISTERED_CALLER = (
    "Method doesn't allow unregistered callers (callers without established identity)."
    " Please use API Key or other form of API consumer identity to call this API."
)
NO_PERMISSION = "The caller does not have permission"
LOCATION_UNSUPPORTED = "User location is not supported for the API use."
QUOTA_EXCEEDED = (
    "You exceeded your current quota, please check your plan and billing details. For more"
    " information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits."
)
RATE_LIMIT_RETRY_DELAY = "1s"


def google_status(status: int) -> str:
    if status in GOOGLE_STATUS:
        return GOOGLE_STATUS[status]
    return "INTERNAL" if status >= 500 else "FAILED_PRECONDITION"


def error_info(reason: str) -> dict[str, Any]:
    return {
        "@type": _TYPE + "ErrorInfo",
        "reason": reason,
        "domain": "googleapis.com",
        "metadata": {"service": SERVICE},
    }


def localized(message: str) -> dict[str, Any]:
    return {"@type": _TYPE + "LocalizedMessage", "locale": "en-US", "message": message}


def key_invalid_details(message: str) -> list[dict[str, Any]]:
    """An invalid or expired key: 400 INVALID_ARGUMENT with reason API_KEY_INVALID."""
    return [error_info("API_KEY_INVALID"), localized(message)]


def quota_details(quota_id: str, metric: str, model: str) -> list[dict[str, Any]]:
    """A 429 RESOURCE_EXHAUSTED: which quota, a help link and when to retry."""
    return [
        {
            "@type": _TYPE + "QuotaFailure",
            "violations": [
                {
                    "quotaMetric": f"{SERVICE}/{metric}",
                    "quotaId": quota_id,
                    "quotaDimensions": {"location": "global", "model": model},
                    "quotaValue": "10",
                }
            ],
        },
        {
            "@type": _TYPE + "Help",
            "links": [
                {
                    "description": "Learn more about Gemini API quotas",
                    "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                }
            ],
        },
        {"@type": _TYPE + "RetryInfo", "retryDelay": RATE_LIMIT_RETRY_DELAY},
    ]


def gemini_error_body(
    code: int,
    message: str,
    status: str | None = None,
    details: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    error: dict[str, Any] = {
        "code": code,
        "message": message,
        "status": status or google_status(code),
    }
    if details:
        error["details"] = details
    return {"error": error}
