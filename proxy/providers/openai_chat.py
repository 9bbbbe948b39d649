"""OpenAI Chat Completions: `POST /chat/completions`."""

from __future__ import annotations

import re

import orjson

from proxy.errors import ProxyError
from proxy.providers.base import PreparedBody, int_field, tier_field
from proxy.providers.bounds import (
    MediaCount,
    RequestBound,
    choices,
    may_hold,
    positive_count,
    requested_tier,
    text_bound,
    walk,
)
from proxy.providers.sse import StreamScanner, event_data, event_json
from shared.catalog import ModelPrice
from shared.events import TokenUsage


def usage_from_openai(
    usage: dict | None,
    input_name: str,
    output_name: str,
    service_tier: str | None = None,
    web_search_calls: int = 0,
) -> TokenUsage | None:
    """Chat (`prompt_tokens`) and Responses (`input_tokens`) usage objects; the
    service tier is reported beside them (`service_tier` of the answer)."""
    if not isinstance(usage, dict):
        return None
    details = usage.get(f"{input_name.split('_')[0]}_tokens_details")
    prompt = int_field(usage, input_name)
    cached = min(int_field(details, "cached_tokens"), prompt)
    return TokenUsage(
        uncached_input_tokens=prompt - cached,
        cache_read_tokens=cached,
        output_tokens=int_field(usage, output_name),
        web_search_calls=web_search_calls,
        service_tier=service_tier,
    )


_NULL_USAGE = (b'"usage":null', b'"usage": null')
# a usage object, however spaced (even split over two `data:` lines)
_USAGE_OBJECT = re.compile(rb'"usage"\s*:(?:\s|data:)*\{')


def _carries_output(event: bytes) -> bool:
    """A delta with text or a tool call (the role-only and final chunks carry none)."""
    if b'"tool_calls"' in event:
        return True
    at = event.find(b'"content":')
    if at == -1:
        return False
    value = event[at + 10 : at + 14].lstrip()
    return value[:1] == b'"' and value[:2] != b'""'


def _output_deltas(block: bytes) -> int:
    """Events carrying text or a tool call, counted over a block of whole events."""
    count = block.count(b'"content":"') - block.count(b'"content":""')
    if b'"content": "' in block:
        count += block.count(b'"content": "') - block.count(b'"content": ""')
    return count + block.count(b'"tool_calls"')


class ChatScanner(StreamScanner):
    usage_arrives_last = True  # the usage chunk is the last before [DONE]: it is final
    # the end, a usage object that is not null, an error
    rare = (b"[DONE]", _USAGE_OBJECT, b'"error"')

    def count_deltas(self, events: bytes) -> int:
        return _output_deltas(events)

    def on_event(self, event: bytes) -> bool:
        if b"[DONE]" in event and event_data(event) == b"[DONE]":
            self.complete = True
            return True
        if b'"delta"' in event and _carries_output(event):
            self.deltas += 1
        if b'"usage"' in event and not any(null in event for null in _NULL_USAGE):
            data = event_json(event)
            if data is not None:
                usage = usage_from_openai(
                    data.get("usage"), "prompt_tokens", "completion_tokens", tier_field(data)
                )
                if usage is not None:
                    self.usage = usage
                    if self.filtering and data.get("choices") == []:
                        return False
        elif b'"error"' in event and b'"delta"' not in event:
            data = event_json(event)
            if data is not None and "error" in data:
                self.error_event = True
        return True


# The most tokens one image can count (high detail: 85 + 8 tiles x 170 for
# gpt-4o; gpt-4o-mini's larger rates, 2833 + 8 x 5667, are the worst published).
OPENAI_IMAGE_TOKENS = 48_169
_CHAT_MEDIA = (b'"image_url"', b'"file"')


def _chat_part(part: dict, count: MediaCount) -> bool:
    kind = part.get("type")
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        count.image(url if isinstance(url, str) and url.startswith("data:") else None)
        return True
    if kind == "file":  # a PDF inline or by file id: its pages are not in the body
        count.unbounded("a file input")
        return True
    return False


class OpenAIChat:
    kind = "openai"
    endpoint = "chat/completions"

    def output_cap(self, request: dict) -> int | None:
        """The larger of `max_completion_tokens` and `max_tokens`, where set."""
        first = positive_count(request, "max_completion_tokens")
        second = positive_count(request, "max_tokens")
        if first is None or second is None:
            return second if first is None else first
        return max(first, second)

    def bound(self, request: dict, raw: bytes, price: ModelPrice) -> RequestBound:
        output = (self.output_cap(request) or price.max_output_tokens) * choices(request)
        count = MediaCount()
        if request.get("web_search_options") is not None:
            count.unbounded("web search results")
        if request.get("prediction") is not None:  # rejected predictions bill as output
            output += len(raw)
        if may_hold(raw, _CHAT_MEDIA):
            walk(request.get("messages"), _chat_part, count)
        per_image = price.max_tokens_per_image or OPENAI_IMAGE_TOKENS
        return RequestBound(
            text_bound(raw, count, per_image), output, count.server_context,
            service_tier=requested_tier(request),
        )  # fmt: skip

    def prepare(self, request: dict, raw: bytes) -> PreparedBody:
        if request.get("stream") is not True:
            return PreparedBody(raw, stream=False)
        options = request.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise ProxyError(400, "'stream_options' must be an object", code="invalid_value")
        if options and options.get("include_usage") is True:
            return PreparedBody(raw, stream=True)
        tweaked = dict(request)
        tweaked["stream_options"] = {**(options or {}), "include_usage": True}
        return PreparedBody(orjson.dumps(tweaked), stream=True, hide_usage_chunk=True)

    def usage_from_body(self, body: dict) -> TokenUsage | None:
        return usage_from_openai(
            body.get("usage"), "prompt_tokens", "completion_tokens", tier_field(body)
        )

    def response_id(self, body: dict) -> str | None:
        return None  # no later request refers to an answer by its id

    def scanner(self, prepared: PreparedBody) -> StreamScanner:
        return ChatScanner(filtering=prepared.hide_usage_chunk)

    def stream_error_event(self, message: str) -> bytes:
        payload = {"error": {"message": message, "type": "server_error", "code": None}}
        return b"data: " + orjson.dumps(payload) + b"\n\n"
