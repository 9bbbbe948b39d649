"""Google Gemini: `{v}/models/{model}:generateContent` and
`:streamGenerateContent` (SSE with `?alt=sse`, else one JSON array), and the
free `:countTokens` (contract section 5).

The model is in the path, not the body. Usage is `usageMetadata` (in a stream,
every chunk carries the counts so far; the last chunk's are final):
uncached input = promptTokenCount - cachedContentTokenCount +
toolUsePromptTokenCount, cache read = cachedContentTokenCount, output =
candidatesTokenCount + thoughtsTokenCount. REST accepts camelCase and
snake_case field names alike, so both are read.
"""

from __future__ import annotations

import orjson

from proxy.providers.base import PreparedBody, int_field
from proxy.providers.bounds import (
    MediaCount,
    RequestBound,
    may_hold,
    positive_count,
    text_bound,
    walk,
)
from proxy.providers.free_forward import FreeForward
from proxy.providers.image_size import image_size
from proxy.providers.sse import StreamScanner, event_json
from shared.catalog import ModelPrice
from shared.events import TokenUsage

# The most tokens one image counts on a model without a catalog figure.
GEMINI_IMAGE_TOKENS = 2_240
_MEDIA = (b"inlineData", b"inline_data", b"fileData", b"file_data")
# the only tools the client runs itself; every other tool (search, code
# execution, URL context, maps, file search, MCP, any new one) runs at Google and
# puts what it found into the prompt
_CLIENT_TOOLS = frozenset({"functionDeclarations", "function_declarations"})
# Gemini 2.x counts an image as 258 tokens per 768 x 768 tile; Gemini 3 counts
# up to 2,240 per image (media resolution ultra high)
_TILE_TOKENS = 258
_TILE_PIXELS = 768
_MAX_ARRAY_BYTES = 32 * 1024 * 1024  # a JSON-array stream read on the side, at most


def _get(data: dict, camel: str, snake: str):
    value = data.get(camel)
    return data.get(snake) if value is None else value


def usage_from_gemini(meta: object) -> TokenUsage | None:
    if not isinstance(meta, dict):
        return None
    prompt = int_field(meta, "promptTokenCount")
    cached = min(int_field(meta, "cachedContentTokenCount"), prompt)
    return TokenUsage(
        uncached_input_tokens=prompt - cached + int_field(meta, "toolUsePromptTokenCount"),
        cache_read_tokens=cached,
        output_tokens=int_field(meta, "candidatesTokenCount")
        + int_field(meta, "thoughtsTokenCount"),
    )


def _finished(chunk: dict) -> bool:
    candidates = chunk.get("candidates")
    return isinstance(candidates, list) and any(
        isinstance(c, dict) and c.get("finishReason") for c in candidates
    )


def _response_id(chunk: dict) -> str | None:
    value = chunk.get("responseId")
    return value if isinstance(value, str) and 0 < len(value) <= 128 else None


class GeminiScanner(StreamScanner):
    """`data: {GenerateContentResponse}` events; each one's usage replaces the last."""

    def __init__(self) -> None:
        super().__init__()
        self.upstream_id: str | None = None

    def on_event(self, event: bytes) -> bool:
        data = event_json(event)
        if data is None:
            return True
        if "error" in data:
            self.error_event = True
            return True
        if "candidates" in data:
            self.deltas += 1
        usage = usage_from_gemini(data.get("usageMetadata"))
        if usage is not None:
            self.usage = usage
        if _finished(data) and "usageMetadata" in data:
            self.complete = True
        self.upstream_id = self.upstream_id or _response_id(data)
        return True


class JsonArrayScanner(StreamScanner):
    """`streamGenerateContent` without `alt=sse`: one JSON array of responses,
    passed on as it arrives; each element is read as soon as it is whole, so
    a stream cut short is billed for what came."""

    def __init__(self) -> None:
        super().__init__()
        self.upstream_id: str | None = None
        self._element = bytearray()
        self._depth = 0
        self._in_string = False
        self._escaped = False

    def feed(self, chunk: bytes) -> bytes:
        for byte in chunk:  # text streams are small; a byte loop keeps this exact
            self._step(byte)
        return chunk

    def _step(self, byte: int) -> None:
        if self._depth >= 1 and len(self._element) < _MAX_ARRAY_BYTES:
            self._element.append(byte)
        if self._in_string:
            if self._escaped:
                self._escaped = False
            elif byte == 0x5C:  # backslash
                self._escaped = True
            elif byte == 0x22:
                self._in_string = False
        elif byte == 0x22:
            self._in_string = True
        elif byte in (0x7B, 0x5B):  # { [
            if self._depth == 1:
                self._element = bytearray([byte])
            self._depth += 1
        elif byte in (0x7D, 0x5D):  # } ]
            self._depth -= 1
            if self._depth == 1:
                self._on_element(bytes(self._element))

    def _on_element(self, element: bytes) -> None:
        try:
            item = orjson.loads(element)
        except orjson.JSONDecodeError:
            return
        if not isinstance(item, dict):
            return
        if "error" in item:
            self.error_event = True
        self.deltas += 1
        usage = usage_from_gemini(item.get("usageMetadata"))
        if usage is not None:
            self.usage = usage
        self.complete = self.complete or (_finished(item) and usage is not None)
        self.upstream_id = self.upstream_id or _response_id(item)

    def finish(self) -> bytes:
        return b""


def _count(request: dict, camel: str, snake: str, *, unreadable: int | None = None) -> int | None:
    """A whole number of `generationConfig` (either spelling of both the object
    and the field; proto JSON takes numbers as strings too): the largest given.
    One that is present but not a number counts as `unreadable`."""
    found: int | None = None
    for config in (request.get("generationConfig"), request.get("generation_config")):
        if not isinstance(config, dict):
            continue
        for name in (camel, snake):
            value = config.get(name)
            if value is None:
                continue
            if isinstance(value, str) and value.strip().isdigit():
                value = int(value.strip())
            number = positive_count({name: value}, name)
            if number is None:
                number = unreadable
            if number is not None and (found is None or number > found):
                found = number
    return found


class _ImageRule:
    """Walks parts; an inline image holds the larger of the model's per-image
    figure and its 768-pixel tiles at 258 tokens each (its bytes are not text)."""

    def __init__(self, per_image: int) -> None:
        self.per_image = per_image

    def __call__(self, part: dict, count: MediaCount) -> bool:
        return _gemini_part(part, count, self.per_image)


def _gemini_part(part: dict, count: MediaCount, per_image: int) -> bool:
    inline = _get(part, "inlineData", "inline_data")
    if isinstance(inline, dict):
        mime = _get(inline, "mimeType", "mime_type")
        data = inline.get("data")
        size = image_size(data) if isinstance(data, str) else None
        if isinstance(mime, str) and mime.startswith("image/") and size is not None:
            width, height = size
            tiles = -(-width // _TILE_PIXELS) * -(-height // _TILE_PIXELS)
            count.image(data)
            count.extra_tokens += max(tiles * _TILE_TOKENS - per_image, 0)
        else:  # audio, video, PDF, an image of unreadable size: not bounded by bytes
            count.unbounded("inline media")
        return True
    if isinstance(_get(part, "fileData", "file_data"), dict):
        count.unbounded("a file")
        return True
    return False


def _tools(request: dict, count: MediaCount) -> None:
    tools = request.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        if not isinstance(tool, dict) or not _CLIENT_TOOLS.issuperset(tool):
            count.unbounded("server tools")
            return


class GeminiGenerate:
    kind = "gemini"
    model_in_path = True

    def __init__(self, endpoint: str, *, stream: bool = False, sse: bool = False) -> None:
        self.endpoint = endpoint
        self.stream = stream
        self.sse = sse  # a stream as server-sent events (`?alt=sse`), else a JSON array

    def output_cap(self, request: dict) -> int | None:
        return _count(request, "maxOutputTokens", "max_output_tokens")

    def bound(self, request: dict, raw: bytes, price: ModelPrice) -> RequestBound:
        candidates = _count(request, "candidateCount", "candidate_count", unreadable=8) or 1
        # thinking tokens are output too, and count against maxOutputTokens
        output = (self.output_cap(request) or price.max_output_tokens) * candidates
        count = MediaCount()
        _tools(request, count)
        if _get(request, "cachedContent", "cached_content"):
            count.unbounded("cached content")
        per_image = price.max_tokens_per_image or GEMINI_IMAGE_TOKENS
        if may_hold(raw, _MEDIA):
            walk(
                [request.get("contents"), _get(request, "systemInstruction", "system_instruction")],
                _ImageRule(per_image),
                count,
            )
        return RequestBound(text_bound(raw, count, per_image), output, count.server_context)

    def prepare(self, request: dict, raw: bytes) -> PreparedBody:
        return PreparedBody(raw, stream=self.stream)

    def usage_from_body(self, body: dict) -> TokenUsage | None:
        return usage_from_gemini(body.get("usageMetadata"))

    def response_id(self, body: dict) -> str | None:
        return None  # no later request refers to an answer by its id

    def upstream_id(self, body: dict) -> str | None:
        return _response_id(body)

    def scanner(self, prepared: PreparedBody) -> StreamScanner:
        return GeminiScanner() if self.sse else JsonArrayScanner()

    def stream_error_event(self, message: str) -> bytes:
        payload = orjson.dumps(
            {"error": {"code": 502, "message": message, "status": "UNAVAILABLE"}}
        )
        if not self.sse:  # one more element, and the array's end
            return b",\r\n" + payload + b"]"
        return b"data: " + payload + b"\r\n\r\n"


class GeminiCountTokens(FreeForward):
    """`:countTokens`, forwarded free: the body as given, never billed."""

    kind = "gemini"
    endpoint = "countTokens"
    model_in_path = True
