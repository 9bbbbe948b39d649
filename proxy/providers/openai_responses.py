"""OpenAI Responses: `POST /responses`."""

from __future__ import annotations

import re

from proxy.providers.base import PreparedBody
from proxy.providers.openai_chat import usage_from_openai
from proxy.providers.sse import StreamScanner, event_json
from shared.events import TokenUsage

_FINAL = ("response.completed", "response.incomplete", "response.failed")
_FINAL_BYTES = tuple(name.encode() for name in _FINAL)
_ERROR_TYPE = re.compile(rb'"type"\s*:\s*"error"')
_TEXT_DELTA = re.compile(rb'"type"\s*:\s*"response\.output_text\.delta"')


class ResponsesScanner(StreamScanner):
    rare = (*_FINAL_BYTES, b"event: error", _ERROR_TYPE)

    def count_deltas(self, events: bytes) -> int:
        return len(_TEXT_DELTA.findall(events))

    def on_event(self, event: bytes) -> bool:
        if b"response.output_text.delta" in event:
            self.deltas += 1
        elif any(name in event for name in _FINAL_BYTES):
            data = event_json(event)
            if data is not None and data.get("type") in _FINAL:
                response = data.get("response")
                if isinstance(response, dict):
                    self.usage = usage_from_openai(
                        response.get("usage"), "input_tokens", "output_tokens"
                    )
                self.complete = True
        elif event.startswith(b"event: error") or _ERROR_TYPE.search(event):
            self.error_event = True
        return True


class OpenAIResponses:
    provider = "openai"
    endpoint = "responses"

    def output_cap(self, request: dict) -> int | None:
        cap = request.get("max_output_tokens")
        return cap if isinstance(cap, int) and cap > 0 else None

    def prepare(self, request: dict, raw: bytes) -> PreparedBody:
        return PreparedBody(raw, stream=request.get("stream") is True)

    def usage_from_body(self, body: dict) -> TokenUsage | None:
        return usage_from_openai(body.get("usage"), "input_tokens", "output_tokens")

    def scanner(self, prepared: PreparedBody) -> StreamScanner:
        return ResponsesScanner()
