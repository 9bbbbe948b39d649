"""Anthropic Messages: `POST /messages`."""

from __future__ import annotations

import re

import orjson

from proxy.providers.base import PreparedBody, int_field, tier_field
from proxy.providers.bounds import (
    MediaCount,
    RequestBound,
    may_hold,
    most_tool_calls,
    positive_count,
    requested_tier,
    text_bound,
    walk,
)
from proxy.providers.sse import StreamScanner, event_json
from shared.catalog import ModelPrice
from shared.events import TokenUsage


def usage_from_anthropic(usage: dict | None) -> TokenUsage | None:
    if not isinstance(usage, dict):
        return None
    cache_write = int_field(usage, "cache_creation_input_tokens")
    split = usage.get("cache_creation")
    write_1h = min(int_field(split, "ephemeral_1h_input_tokens"), cache_write)
    return TokenUsage(
        uncached_input_tokens=int_field(usage, "input_tokens"),
        cache_read_tokens=int_field(usage, "cache_read_input_tokens"),
        cache_write_tokens=cache_write,
        cache_write_1h_tokens=write_1h,
        output_tokens=int_field(usage, "output_tokens"),
        web_search_calls=int_field(usage.get("server_tool_use"), "web_search_requests"),
        service_tier=tier_field(usage),
    )


_BLOCK_DELTA = re.compile(rb'"type"\s*:\s*"content_block_delta"')


class MessagesScanner(StreamScanner):
    """`message_start` carries the input usage; `message_delta` the final output
    count (and, in newer API versions, the input fields again)."""

    def __init__(self) -> None:
        super().__init__()
        self._usage: dict = {}

    rare = (b"message_start", b"message_delta", b"message_stop", b"event: error")

    def count_deltas(self, events: bytes) -> int:
        return len(_BLOCK_DELTA.findall(events))

    def on_event(self, event: bytes) -> bool:
        if b"content_block_delta" in event:
            self.deltas += 1
        elif b"message_start" in event or b"message_delta" in event:
            data = event_json(event)
            if data:
                message = data.get("message")
                usage = message.get("usage") if isinstance(message, dict) else data.get("usage")
                if isinstance(usage, dict):
                    self._usage.update({k: v for k, v in usage.items() if v is not None})
                    self.usage = usage_from_anthropic(self._usage)
        elif b"message_stop" in event:
            self.complete = True
        elif b"event: error" in event:
            self.error_event = True
        return True


# Images are scaled down to at most about 1,600 tokens (w x h / 750); the margin
# keeps the bound true for rounding of the published figure.
ANTHROPIC_IMAGE_TOKENS = 1_700
# Client-run tools with a type (bash, text editor, computer use) add a system
# prompt and definition of at most about 1,300 tokens.
ANTHROPIC_TYPED_TOOL_TOKENS = 2_000
# Any tools at all add Anthropic's tool-use system prompt (346 tokens published).
ANTHROPIC_TOOL_PROMPT_TOKENS = 400
_SERVER_TOOLS = ("web_search", "web_fetch", "code_execution", "mcp", "tool_search")
_MESSAGES_MEDIA = (b'"image"', b'"document"', b"container_upload")


def _messages_part(part: dict, count: MediaCount) -> bool:
    kind = part.get("type")
    source = part.get("source")
    if kind == "image":
        inline = source.get("data") if isinstance(source, dict) else None
        count.image(inline if isinstance(inline, str) else None)
        return True
    if kind == "document":
        if isinstance(source, dict) and source.get("type") in ("text", "content"):
            return False  # plain text in the body: counted as text
        count.unbounded("a document")  # PDF pages, by bytes, URL or file id
        return True
    if kind == "container_upload":
        count.unbounded("a file upload")
        return True
    return False


def _searches(request: dict, price: ModelPrice) -> int:
    """The most web searches the request allows (each web_search tool's `max_uses`)."""
    tools = request.get("tools")
    total = 0
    for tool in tools if isinstance(tools, list) else ():
        if isinstance(tool, dict) and str(tool.get("type", "")).startswith("web_search"):
            total += most_tool_calls(positive_count(tool, "max_uses"), price, "web_search")
    return total


def _tools(request: dict, count: MediaCount) -> None:
    tools = request.get("tools")
    if isinstance(tools, list) and tools:
        count.extra_tokens += ANTHROPIC_TOOL_PROMPT_TOKENS
    for tool in tools if isinstance(tools, list) else ():
        kind = tool.get("type") if isinstance(tool, dict) else None
        if not isinstance(kind, str) or kind == "custom":
            continue
        if kind.startswith(_SERVER_TOOLS):
            count.unbounded("server tools")  # fetched pages, search results, code output
        else:
            count.extra_tokens += ANTHROPIC_TYPED_TOOL_TOKENS
    if request.get("mcp_servers"):
        count.unbounded("MCP servers")


class AnthropicMessages:
    kind = "anthropic"
    endpoint = "messages"

    def output_cap(self, request: dict) -> int | None:
        return positive_count(request, "max_tokens")

    def bound(self, request: dict, raw: bytes, price: ModelPrice) -> RequestBound:
        output = self.output_cap(request) or price.max_output_tokens
        count = MediaCount()
        _tools(request, count)  # a few field reads: never skipped
        if may_hold(raw, _MESSAGES_MEDIA):
            walk([request.get("system"), request.get("messages")], _messages_part, count)
        per_image = price.max_tokens_per_image or ANTHROPIC_IMAGE_TOKENS
        searches = _searches(request, price) if count.server_context else 0
        return RequestBound(
            text_bound(raw, count, per_image), output, count.server_context,
            service_tier=requested_tier(request), tool_calls=searches,
        )  # fmt: skip

    def prepare(self, request: dict, raw: bytes) -> PreparedBody:
        return PreparedBody(raw, stream=request.get("stream") is True)

    def usage_from_body(self, body: dict) -> TokenUsage | None:
        return usage_from_anthropic(body.get("usage"))

    def response_id(self, body: dict) -> str | None:
        return None  # no later request refers to an answer by its id

    def scanner(self, prepared: PreparedBody) -> StreamScanner:
        return MessagesScanner()

    def stream_error_event(self, message: str) -> bytes:
        payload = {"type": "error", "error": {"type": "api_error", "message": message}}
        return b"event: error\ndata: " + orjson.dumps(payload) + b"\n\n"
