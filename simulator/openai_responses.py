"""OpenAI `POST /responses` wire format (JSON and typed SSE events)."""

from __future__ import annotations

import secrets
import time
from typing import Any

import orjson
from aiohttp import web

from simulator.control import Directives, guard, optional_max_tokens, read_json_object, require_str
from simulator.errors import Provider, SimError
from simulator.sse import SseStream, interruption
from simulator.state import default_delay_ms
from simulator.tokens import Generation, make_generation, responses_input_tokens


def responses_usage(gen: Generation, directives: Directives) -> dict[str, Any]:
    cached = min(directives.cached_tokens, gen.input_tokens)
    return {
        "input_tokens": gen.input_tokens,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": gen.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": gen.input_tokens + gen.output_tokens,
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message_item(item_id: str, status: str, text: str | None) -> dict[str, Any]:
    content = [] if text is None else [_text_part(text)]
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": content,
    }


class _ResponseShape:
    """Builds `response` objects echoing the request's parameters."""

    def __init__(
        self, body: dict[str, Any], model: str, max_tokens: int | None, service_tier: str
    ) -> None:
        self._service_tier = service_tier
        self.id = "resp_" + secrets.token_hex(16)
        self.item_id = "msg_" + secrets.token_hex(16)
        self.created_at = int(time.time())
        self._body = body
        self._model = model
        self._max_tokens = max_tokens

    def build(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None,
        *,
        with_usage: bool = True,
        incomplete: bool = False,
    ) -> dict[str, Any]:
        body = self._body
        response: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": body.get("instructions"),
            "max_output_tokens": self._max_tokens,
            "model": self._model,
            "output": output,
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "service_tier": self._service_tier,
            "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0),
            "text": {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools", []),
            "top_p": body.get("top_p", 1.0),
            "truncation": body.get("truncation", "disabled"),
            "user": body.get("user"),
            "metadata": body.get("metadata") or {},
        }
        if with_usage:
            response["usage"] = usage
        return response

    def final(self, gen: Generation, directives: Directives) -> dict[str, Any]:
        status = "incomplete" if gen.truncated else "completed"
        item = _message_item(self.item_id, status, gen.text)
        usage = None if directives.no_usage else responses_usage(gen, directives)
        searches = [
            {"id": f"ws_{i}", "type": "web_search_call", "status": "completed"}
            for i in range(directives.web_searches)
        ]
        return self.build(
            status,
            [*searches, item],
            usage,
            with_usage=not directives.no_usage,
            incomplete=gen.truncated,
        )


class _Sequencer:
    def __init__(self, stream: SseStream) -> None:
        self._stream = stream
        self._seq = 0

    async def emit(self, event_type: str, **fields: Any) -> None:
        data = {"type": event_type, "sequence_number": self._seq, **fields}
        self._seq += 1
        await self._stream.send(data, event=event_type)


async def _stream(
    request: web.Request, directives: Directives, gen: Generation, shape: _ResponseShape
) -> web.StreamResponse:
    stream = await SseStream.open(request, directives, default_delay_ms(request))
    seq = _Sequencer(stream)
    ids = {"item_id": shape.item_id, "output_index": 0, "content_index": 0}
    in_progress = shape.build("in_progress", [], None)
    await seq.emit("response.created", response=in_progress)
    await seq.emit("response.in_progress", response=in_progress)
    item = _message_item(shape.item_id, "in_progress", None)
    await seq.emit("response.output_item.added", output_index=0, item=item)
    await seq.emit("response.content_part.added", **ids, part=_text_part(""))
    cut = interruption(directives, gen.output_tokens)
    limit = gen.output_tokens if cut is None else cut[1]
    for text in gen.deltas[:limit]:
        await seq.emit("response.output_text.delta", **ids, delta=text, logprobs=[])
    if cut is not None:
        if cut[0] == "break":
            return stream.abort()
        await seq.emit(
            "error", code="server_error", message="The server had an error (simulated).", param=None
        )
        return await stream.finish()
    final = shape.final(gen, directives)
    message = final["output"][0]
    await seq.emit("response.output_text.done", **ids, text=gen.text, logprobs=[])
    await seq.emit("response.content_part.done", **ids, part=message["content"][0])
    await seq.emit("response.output_item.done", output_index=0, item=message)
    done_type = "response.incomplete" if gen.truncated else "response.completed"
    await seq.emit(done_type, response=final)
    return await stream.finish()


async def handle_responses(request: web.Request) -> web.StreamResponse:
    directives = guard(request, Provider.OPENAI)
    body = await read_json_object(request)
    model = require_str(body, "model")
    if "input" in body and not isinstance(body["input"], str | list):
        raise SimError(400, "'input' must be a string or an array of input items.")
    max_tokens = optional_max_tokens(body, "max_output_tokens")
    input_tokens = directives.input_tokens
    if input_tokens is None:
        input_tokens = responses_input_tokens(body)
    gen = make_generation(directives.chunks, max_tokens, input_tokens)
    shape = _ResponseShape(body, model, max_tokens, directives.service_tier or "default")
    if body.get("stream") is True:
        return await _stream(request, directives, gen, shape)
    return web.Response(
        body=orjson.dumps(shape.final(gen, directives)), content_type="application/json"
    )
