"""Provider identification and provider-format error bodies."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson
from aiohttp import web

from simulator import gemini_errors as g


class Provider(StrEnum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    GEMINI = "gemini"


# Gemini sends no request-id header a client uses; its bodies carry `responseId`.
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
    """Raised by handlers; rendered by the middleware in the provider's error format.
    `error_type` (and, for OpenAI, `code` with it) replaces the status's usual type;
    for Gemini it is the canonical `status` string and `details` Google's detail list."""

    status: int
    message: str
    error_type: str | None = None
    code: str | None = None
    details: list[dict[str, Any]] | None = None

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


def provider_for_path(path: str) -> Provider | None:
    if path.startswith("/gemini/"):
        return Provider.GEMINI
    if path.startswith("/anthropic/") or path in ("/v1/messages", "/v1/messages/count_tokens"):
        return Provider.ANTHROPIC
    if path.startswith(("/openai/", "/v1/")):
        return Provider.OPENAI
    return None


def openai_error_body(
    status: int, message: str, error_type: str | None = None, code: str | None = None
) -> dict[str, Any]:
    if error_type is None:
        error_type, code = _OPENAI_TYPES.get(status, ("server_error", None))
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


def anthropic_error_type(status: int) -> str:
    return _ANTHROPIC_TYPES.get(status, "api_error")


def anthropic_error_body(
    status: int, message: str, request_id: str, error_type: str | None = None
) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": error_type or anthropic_error_type(status), "message": message},
        "request_id": request_id,
    }


# `x-sim-error: <name>`: errors as each provider really sends them, about the key
# or about the request itself (same name, each provider's own status and body).
NAMED_ERRORS: dict[str, dict[Provider, SimError]] = {
    # key-level: authentication failed (the relay probes the key before believing it)
    "invalid_api_key": {
        Provider.OPENAI: SimError(
            401,
            "Incorrect API key provided: sk-upstr*****0001. You can find your API key at"
            " https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            "invalid_api_key",
        ),
        Provider.ANTHROPIC: SimError(401, "invalid x-api-key", "authentication_error"),
        Provider.GEMINI: SimError(
            400, g.KEY_NOT_VALID, "INVALID_ARGUMENT", None, g.key_invalid_details(g.KEY_NOT_VALID)
        ),
    },
    # a permission for this request only (a model the project may not use)
    "permission": {
        Provider.OPENAI: SimError(
            403, "You are not allowed to sample from this model", "invalid_request_error", None
        ),
        Provider.ANTHROPIC: SimError(
            403,
            "Your API key does not have permission to use the specified resource.",
            "permission_error",
        ),
        Provider.GEMINI: SimError(403, g.NO_PERMISSION, "PERMISSION_DENIED"),
    },
    # where the request comes from, not the key
    "region": {
        Provider.OPENAI: SimError(
            403,
            "Country, region, or territory not supported",
            "request_forbidden",
            "unsupported_country_region_territory",
        ),
        Provider.ANTHROPIC: SimError(403, "Request not allowed", "forbidden"),
        Provider.GEMINI: SimError(400, g.LOCATION_UNSUPPORTED, "FAILED_PRECONDITION"),
    },
    # the key's rate limit
    "rate_limit": {
        Provider.OPENAI: SimError(
            429,
            "Rate limit reached for gpt-4o in organization org-sim on requests per min (RPM):"
            " Limit 3, Used 3, Requested 1. Please try again in 20s. Visit"
            " https://platform.openai.com/account/rate-limits to learn more.",
            "requests",
            "rate_limit_exceeded",
        ),
        Provider.ANTHROPIC: SimError(
            429,
            "This request would exceed the rate limit for your organization of 50 requests"
            " per minute. For details, refer to: https://docs.claude.com/en/api/rate-limits.",
            "rate_limit_error",
        ),
        Provider.GEMINI: SimError(
            429,
            g.QUOTA_EXCEEDED,
            "RESOURCE_EXHAUSTED",
            None,
            g.quota_details(
                "GenerateRequestsPerMinutePerProjectPerModel",
                "generate_content_requests",
                "gemini-2.5-flash",
            ),
        ),
    },
    # the request alone is beyond a limit (OpenAI says so with a rate-limit code)
    "request_too_large": {
        Provider.OPENAI: SimError(
            429,
            "Request too large for gpt-4o in organization org-sim on tokens per min (TPM):"
            " Limit 30000, Requested 48535. The input or output tokens must be reduced in"
            " order to run successfully. Visit https://platform.openai.com/account/rate-limits"
            " to learn more.",
            "tokens",
            "rate_limit_exceeded",
        ),
        Provider.ANTHROPIC: SimError(
            413, "Request exceeds the maximum allowed number of bytes.", "request_too_large"
        ),
        Provider.GEMINI: SimError(
            400,
            "The input token count (1200000) exceeds the maximum number of tokens allowed"
            " (1048576).",
            "INVALID_ARGUMENT",
        ),
    },
    # the key's account is out of credit
    "insufficient_quota": {
        Provider.OPENAI: SimError(
            429,
            "You exceeded your current quota, please check your plan and billing details."
            " For more information on this error, read the docs:"
            " https://platform.openai.com/docs/guides/error-codes/api-errors.",
            "insufficient_quota",
            "insufficient_quota",
        ),
        Provider.ANTHROPIC: SimError(
            400,
            "Your credit balance is too low to access the Anthropic API. Please go to"
            " Plans & Billing to upgrade or purchase credits.",
            "invalid_request_error",
        ),
        Provider.GEMINI: SimError(
            429,
            g.QUOTA_EXCEEDED,
            "RESOURCE_EXHAUSTED",
            None,
            g.quota_details(
                "GenerateContentInputTokensPerModelPerDay-FreeTier",
                "generate_content_free_tier_input_token_count",
                "gemini-2.5-flash",
            ),
        ),
    },
}


# Gemini key checks (simulator.control.check_auth): what Google answers for each case.
GEMINI_KEY_ERRORS: dict[str, SimError] = {
    "missing": SimError(403, g.UNREGISTERED_CALLER, "PERMISSION_DENIED"),
    "invalid": NAMED_ERRORS["invalid_api_key"][Provider.GEMINI],
    "expired": SimError(
        400, g.KEY_EXPIRED, "INVALID_ARGUMENT", None, g.key_invalid_details(g.KEY_EXPIRED)
    ),
    "forbidden": NAMED_ERRORS["permission"][Provider.GEMINI],
    "ratelimited": NAMED_ERRORS["rate_limit"][Provider.GEMINI],
    "broken": SimError(500, g.GOOGLE_MESSAGES[500], "INTERNAL"),
}


def gemini_status_error(status: int) -> SimError:
    """`x-sim-status` on a Gemini route: Google's own words where the status is common."""
    message = g.GOOGLE_MESSAGES.get(status, f"Simulated error with status {status}")
    return SimError(status, message, g.google_status(status))


def error_response(provider: Provider, err: SimError, request_id: str) -> web.Response:
    headers: dict[str, str] | None = None
    if provider is Provider.GEMINI:  # Google sends no retry-after; RetryInfo says when
        body = g.gemini_error_body(err.status, err.message, err.error_type, err.details)
    elif provider is Provider.ANTHROPIC:
        body = anthropic_error_body(err.status, err.message, request_id, err.error_type)
    else:
        body = openai_error_body(err.status, err.message, err.error_type, err.code)
    if err.status == 429 and provider is not Provider.GEMINI:
        headers = {"retry-after": "1"}
    return web.Response(
        status=err.status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers=headers,
    )
