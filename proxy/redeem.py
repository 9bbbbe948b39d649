"""`POST /v1/account/redeem` `{"code": "..."}`: credit a redemption code to the
caller (contract section 7). Errors in OpenAI's format, like every account endpoint."""

from __future__ import annotations

import orjson
from aiohttp import web

from proxy.errors import ProxyError
from proxy.handlers import authenticate
from proxy.state import GATEWAY, REQUEST_ID
from shared.money import usd_str
from shared.redeem import Redeemer, RedeemRefused

MAX_BODY = 4096


async def redeem(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    request_id = request[REQUEST_ID]
    owner = await authenticate(gw, request, allow_x_api_key=False)
    code = await _code_of(request)
    try:
        result = await Redeemer(gw.pg, gw.redis, gw.holds.view).redeem(owner.user_id, code)
    except RedeemRefused as exc:
        return _refusal(exc, request_id)
    return web.json_response(
        {"credited_usd": usd_str(result.credited_usd), "balance_usd": usd_str(result.balance_usd)},
        headers={"x-request-id": request_id},
    )


async def _code_of(request: web.Request) -> str:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ProxyError(413, "Request body too large", code="request_too_large")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise ProxyError(413, "Request body too large", code="request_too_large")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        message = 'The body must be JSON: {"code": "..."}'
        raise ProxyError(400, message, code="invalid_json") from None
    if not isinstance(body, dict) or not isinstance(body.get("code"), str) or not body["code"]:
        raise ProxyError(400, "Missing 'code' (a string) in the request body", code="code_required")
    return body["code"]


def _refusal(exc: RedeemRefused, request_id: str) -> web.Response:
    error_type = "rate_limit_exceeded" if exc.status == 429 else "invalid_request_error"
    headers = {"x-request-id": request_id}
    if exc.retry_after is not None:
        headers["retry-after"] = str(exc.retry_after)
    else:
        headers["x-should-retry"] = "false"
    body = {"error": {"message": exc.message, "type": error_type, "param": None, "code": exc.code}}
    return web.Response(
        status=exc.status, body=orjson.dumps(body), content_type="application/json",
        headers=headers,
    )  # fmt: skip
