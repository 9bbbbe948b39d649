"""OpenAI Responses: `POST /responses`."""

from __future__ import annotations

from proxy.providers.base import PreparedBody
from proxy.providers.openai_chat import usage_from_openai
from proxy.providers.sse import StreamScanner, event_json
from shared.events import TokenUsage

_FINAL = (b"response.completed", b"response.incomplete", b"response.failed")


class ResponsesScanner(StreamScanner):
    def on_event(self, event: bytes) -> bool:
        if b"response.output_text.delta" in event:
            self.deltas += 1
        elif any(name in event for name in _FINAL):
            data = event_json(event)
            response = data.get("response") if data else None
            if isinstance(response, dict):
                self.usage = usage_from_openai(
                    response.get("usage"), "input_tokens", "output_tokens"
                )
            self.complete = True
        elif b"event: error" in event or b'"type":"error"' in event:
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
