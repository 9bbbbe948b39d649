"""Anthropic Messages: `POST /messages`."""

from __future__ import annotations

import re

from proxy.providers.base import PreparedBody, int_field
from proxy.providers.sse import StreamScanner, event_json
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


class AnthropicMessages:
    provider = "anthropic"
    endpoint = "messages"

    def output_cap(self, request: dict) -> int | None:
        cap = request.get("max_tokens")
        return cap if isinstance(cap, int) and cap > 0 else None

    def prepare(self, request: dict, raw: bytes) -> PreparedBody:
        return PreparedBody(raw, stream=request.get("stream") is True)

    def usage_from_body(self, body: dict) -> TokenUsage | None:
        return usage_from_anthropic(body.get("usage"))

    def scanner(self, prepared: PreparedBody) -> StreamScanner:
        return MessagesScanner()
