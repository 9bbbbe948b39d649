"""OpenAI Responses: `POST /responses`."""

from __future__ import annotations

import re

import orjson

from proxy.errors import ProxyError
from proxy.providers.base import PreparedBody, tier_field
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
from proxy.providers.openai_chat import OPENAI_IMAGE_TOKENS, usage_from_openai
from proxy.providers.sse import StreamScanner, event_json
from shared.catalog import ModelPrice
from shared.events import TokenUsage

_FINAL = ("response.completed", "response.incomplete", "response.failed")
_FINAL_BYTES = tuple(name.encode() for name in _FINAL)
_ERROR_TYPE = re.compile(rb'"type"\s*:\s*"error"')
_TEXT_DELTA = re.compile(rb'"type"\s*:\s*"response\.output_text\.delta"')


def web_search_calls(response: dict) -> int:
    """Every `web_search_call` output item counts, whatever its status."""
    output = response.get("output")
    if not isinstance(output, list):
        return 0
    return sum(
        1 for item in output if isinstance(item, dict) and item.get("type") == "web_search_call"
    )


def usage_from_response(response: dict) -> TokenUsage | None:
    return usage_from_openai(
        response.get("usage"), "input_tokens", "output_tokens", tier_field(response),
        web_search_calls(response),
    )  # fmt: skip


def response_id_of(response: dict) -> str | None:
    value = response.get("id")
    return value if isinstance(value, str) and 0 < len(value) <= 200 else None


class ResponsesScanner(StreamScanner):
    usage_arrives_last = True  # usage comes with the final event only
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
                    self.usage = usage_from_response(response)
                    self.response_id = response_id_of(response)
                self.complete = True
        elif event.startswith(b"event: error") or _ERROR_TYPE.search(event):
            self.error_event = True
        return True


# Markers of input items worth a walk (anything typed but plain text messages).
_RESPONSES_MEDIA = (b'"type"',)
# Input items and parts whose content is all in the body. Any other type (a
# stored item, a file, a hosted tool's call whose results OpenAI keeps) leaves
# the input to the context window.
_SELF_CONTAINED = frozenset(
    {
        "message", "input_text", "output_text", "refusal", "summary_text", "reasoning_text",
        "input_audio", "function_call", "function_call_output", "custom_tool_call",
        "custom_tool_call_output", "computer_call", "local_shell_call",
        "local_shell_call_output", "shell_call", "shell_call_output", "apply_patch_call",
        "apply_patch_call_output", "mcp_approval_response", "url_citation", "file_citation",
        "container_file_citation", "file_path",
    }
)  # fmt: skip
# Context kept by OpenAI, not in the body: the input part of the hold is the
# model's context window (contract section 10).
_SERVER_CONTEXT = {
    "conversation": "a conversation",
    "prompt": "a stored prompt",
}
_CLIENT_TOOLS = frozenset({"function", "custom"})


def _responses_part(part: dict, count: MediaCount) -> bool:
    kind = part.get("type")
    if not isinstance(kind, str) or kind in _SELF_CONTAINED:
        return False  # (a type that is not a name: the provider refuses the request)
    if kind in ("input_image", "computer_screenshot"):
        url = part.get("image_url")
        count.image(url if isinstance(url, str) and url.startswith("data:") else None)
        return True
    if kind == "computer_call_output":
        return False  # its screenshot is counted as an image
    if kind == "reasoning" and isinstance(part.get("encrypted_content"), str):
        return False  # carried whole; without it OpenAI reads the stored item
    if kind == "input_file":
        count.unbounded("a file input")
    elif kind == "item_reference":
        count.unbounded("a stored item")
    else:
        count.unbounded(f"an input item of type {str(kind)[:40]!r}")
    return True


def _server_side(request: dict, count: MediaCount) -> None:
    previous = request.get("previous_response_id")
    if previous is not None:
        if isinstance(previous, str) and 0 < len(previous) <= 200:
            count.continues = previous
        else:
            count.unbounded("a previous response")
    for field, reason in _SERVER_CONTEXT.items():
        if request.get(field) is not None:
            count.unbounded(reason)
    if request.get("background") is True:
        count.unbounded("a background run")
    tools = request.get("tools")
    if isinstance(tools, list) and any(
        isinstance(tool, dict) and tool.get("type") not in _CLIENT_TOOLS for tool in tools
    ):
        count.unbounded("hosted tools")  # search results, files, code output join the input


def _searches(request: dict) -> bool:
    tools = request.get("tools")
    return isinstance(tools, list) and any(
        isinstance(tool, dict) and str(tool.get("type", "")).startswith("web_search")
        for tool in tools
    )


class OpenAIResponses:
    kind = "openai"
    endpoint = "responses"

    def output_cap(self, request: dict) -> int | None:
        return positive_count(request, "max_output_tokens")

    def bound(self, request: dict, raw: bytes, price: ModelPrice) -> RequestBound:
        output = self.output_cap(request) or price.max_output_tokens
        count = MediaCount()
        _server_side(request, count)  # a few field reads: never skipped
        if may_hold(raw, _RESPONSES_MEDIA):
            walk(request.get("input"), _responses_part, count)
        per_image = price.max_tokens_per_image or OPENAI_IMAGE_TOKENS
        if request.get("background") is True and request.get("stream") is not True:
            raise ProxyError(
                400,
                "A background response must be streamed through Meterway (stream: true):"
                " its usage would never pass through otherwise, so it could not be billed",
                code="background_needs_stream",
            )
        searches = 0
        if _searches(request):
            own = positive_count(request, "max_tool_calls")
            searches = most_tool_calls(own, price, "web search")
        return RequestBound(
            text_bound(raw, count, per_image),
            output,
            count.server_context,
            count.continues,
            requested_tier(request),
            searches,
        )

    def prepare(self, request: dict, raw: bytes) -> PreparedBody:
        return PreparedBody(raw, stream=request.get("stream") is True)

    def usage_from_body(self, body: dict) -> TokenUsage | None:
        return usage_from_response(body)

    def response_id(self, body: dict) -> str | None:
        return response_id_of(body)

    def scanner(self, prepared: PreparedBody) -> StreamScanner:
        return ResponsesScanner()

    def stream_error_event(self, message: str) -> bytes:
        payload = {"type": "error", "code": "upstream_error", "message": message, "param": None}
        return b"event: error\ndata: " + orjson.dumps(payload) + b"\n\n"
