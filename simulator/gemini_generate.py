"""Gemini `POST {v}/models/{model}:{method}`: generateContent (JSON),
streamGenerateContent (SSE with `?alt=sse`, else a JSON array) and countTokens."""

from __future__ import annotations

import secrets
from typing import Any

import orjson
from aiohttp import web

from simulator.control import Directives, guard, read_json_object
from simulator.errors import Provider, SimError
from simulator.gemini_errors import GOOGLE_MESSAGES, gemini_error_body
from simulator.gemini_stream import GeminiStream
from simulator.gemini_tokens import GeminiAnswer, gemini_input_tokens, make_answer, require_contents
from simulator.sse import interruption
from simulator.state import default_delay_ms

STREAM_ERROR = gemini_error_body(500, GOOGLE_MESSAGES[500])


def new_response_id() -> str:
    """Like Google's `responseId`: 23 URL-safe characters, the same in every chunk."""
    return secrets.token_urlsafe(17)


def response_body(
    answer: GeminiAnswer,
    model: str,
    response_id: str,
    text: str,
    finish_reason: str | None,
    usage: dict[str, Any] | None,
) -> dict[str, Any]:
    """One GenerateContentResponse (a whole answer, or one chunk of a stream)."""
    candidates = []
    for index in range(answer.candidates):
        candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}}
        if finish_reason is not None:
            candidate["finishReason"] = finish_reason
        candidate["index"] = index
        candidates.append(candidate)
    body: dict[str, Any] = {"candidates": candidates}
    if usage is not None:
        body["usageMetadata"] = usage
    body["modelVersion"] = model
    body["responseId"] = response_id
    return body


async def _stream(
    request: web.Request, directives: Directives, answer: GeminiAnswer, model: str, sse: bool
) -> web.StreamResponse:
    """One chunk per delta (every candidate's delta in it), each with the running usage;
    the last carries finishReason and the final usage. No deltas: one empty-text chunk."""
    stream = await GeminiStream.open(request, directives, default_delay_ms(request), sse)
    rid = new_response_id()
    deltas = answer.gen.deltas
    cut = interruption(directives, len(deltas))
    limit = len(deltas) if cut is None else cut[1]
    for sent, text in enumerate(deltas[:limit], start=1):
        final = cut is None and sent == len(deltas)
        usage = None if directives.no_usage else answer.usage(sent)
        finish = answer.finish_reason if final else None
        await stream.send(response_body(answer, model, rid, text, finish, usage))
    if cut is not None:
        if cut[0] == "break":
            return stream.abort()
        await stream.send(STREAM_ERROR)
        return await stream.finish()
    if not deltas:
        usage = None if directives.no_usage else answer.usage()
        await stream.send(response_body(answer, model, rid, "", answer.finish_reason, usage))
    return await stream.finish()


def _json(body: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def _count_tokens(body: dict[str, Any], directives: Directives) -> web.Response:
    if "contents" not in body and "generateContentRequest" not in body:
        raise SimError(400, "* CountTokensRequest: contents or generateContentRequest is required")
    tokens = directives.input_tokens
    if tokens is None:
        tokens = gemini_input_tokens(body)
    answer: dict[str, Any] = {"totalTokens": tokens}
    cached = min(directives.cached_tokens, tokens)
    if cached:
        answer["cachedContentTokenCount"] = cached
    answer["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": tokens}]
    return _json(answer)


async def handle_gemini_post(request: web.Request) -> web.StreamResponse:
    directives = guard(request, Provider.GEMINI)
    model, sep, method = request.match_info["target"].rpartition(":")
    if (
        not sep
        or not model
        or method
        not in (
            "generateContent",
            "streamGenerateContent",
            "countTokens",
        )
    ):
        raise SimError(404, f"Method not found: models/{request.match_info['target']}")
    body = await read_json_object(request)
    if method == "countTokens":
        return _count_tokens(body, directives)
    require_contents(body)
    answer = make_answer(body, directives)
    if method == "streamGenerateContent":
        sse = request.query.get("alt") == "sse"
        return await _stream(request, directives, answer, model, sse)
    usage = None if directives.no_usage else answer.usage()
    rid = new_response_id()
    return _json(response_body(answer, model, rid, answer.gen.text, answer.finish_reason, usage))
