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
from proxy.providers.openai_embeddings import NoStream
from proxy.providers.sse import StreamScanner, event_json
from shared.catalog import ModelPrice
from shared.events import TokenUsage

# Gemini counts an image as 258 tokens per 768x768 tile; the most any published
# model counts for one image (media_resolution high on Gemini 3) is 1,120.
GEMINI_IMAGE_TOKENS = 1_120
_MEDIA = (b"inlineData", b"inline_data", b"fileData", b"file_data")
# tools that run at Google and put what they found into the prompt
_SERVER_TOOLS = frozenset(
    {
        "googleSearch",
        "google_search",
        "googleSearchRetrieval",
        "google_search_retrieval",
        "codeExecution",
        "code_execution",
        "urlContext",
        "url_context",
        "googleMaps",
        "google_maps",
        "fileSearch",
        "file_search",
        "retrieval",
        "computerUse",
        "computer_use",
    }
)
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
    passed on as it arrives and read whole at its end."""

    def __init__(self) -> None:
        super().__init__()
        self._body = bytearray()
        self.upstream_id: str | None = None

    def feed(self, chunk: bytes) -> bytes:
        if len(self._body) + len(chunk) <= _MAX_ARRAY_BYTES:
            self._body += chunk
        self.deltas += chunk.count(b'"text"')
        return chunk

    def finish(self) -> bytes:
        try:
            items = orjson.loads(bytes(self._body))
        except orjson.JSONDecodeError:
            return b""
        for item in items if isinstance(items, list) else ():
            if not isinstance(item, dict):
                continue
            if "error" in item:
                self.error_event = True
            usage = usage_from_gemini(item.get("usageMetadata"))
            if usage is not None:
                self.usage = usage
            self.complete = self.complete or (_finished(item) and usage is not None)
            self.upstream_id = self.upstream_id or _response_id(item)
        return b""


def _generation_config(request: dict) -> dict:
    config = _get(request, "generationConfig", "generation_config")
    return config if isinstance(config, dict) else {}


def _gemini_part(part: dict, count: MediaCount) -> bool:
    inline = _get(part, "inlineData", "inline_data")
    if isinstance(inline, dict):
        mime = _get(inline, "mimeType", "mime_type")
        if isinstance(mime, str) and mime.startswith("image/"):
            # a large image is tiled at 258 tokens per 768x768 tile, and no tile
            # encodes in fewer bytes than that: its bytes stay counted as text
            count.image(None)
        else:  # audio, video, PDF: counted by length or pages, not by bytes
            count.unbounded("inline audio, video or documents")
        return True
    if isinstance(_get(part, "fileData", "file_data"), dict):
        count.unbounded("a file")
        return True
    return False


def _tools(request: dict, count: MediaCount) -> None:
    tools = request.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        if isinstance(tool, dict) and _SERVER_TOOLS.intersection(tool):
            count.unbounded("server tools")


class GeminiGenerate:
    kind = "gemini"
    model_in_path = True

    def __init__(self, endpoint: str, *, stream: bool = False, sse: bool = False) -> None:
        self.endpoint = endpoint
        self.stream = stream
        self.sse = sse  # a stream as server-sent events (`?alt=sse`), else a JSON array

    def output_cap(self, request: dict) -> int | None:
        config = _generation_config(request)
        return positive_count(config, "maxOutputTokens") or positive_count(
            config, "max_output_tokens"
        )

    def bound(self, request: dict, raw: bytes, price: ModelPrice) -> RequestBound:
        config = _generation_config(request)
        candidates = positive_count(config, "candidateCount") or positive_count(
            config, "candidate_count", default=1
        )
        # thinking tokens are output too, and count against maxOutputTokens
        output = (self.output_cap(request) or price.max_output_tokens) * candidates
        count = MediaCount()
        _tools(request, count)
        if _get(request, "cachedContent", "cached_content"):
            count.unbounded("cached content")
        if may_hold(raw, _MEDIA):
            walk(
                [request.get("contents"), _get(request, "systemInstruction", "system_instruction")],
                _gemini_part,
                count,
            )
        per_image = price.max_tokens_per_image or GEMINI_IMAGE_TOKENS
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
        payload = {"error": {"code": 502, "message": message, "status": "UNAVAILABLE"}}
        return b"data: " + orjson.dumps(payload) + b"\r\n\r\n"


class GeminiCountTokens:
    """`:countTokens`, forwarded free: the body as given, never billed."""

    kind = "gemini"
    endpoint = "countTokens"
    model_in_path = True
    billed = False

    def output_cap(self, request: dict) -> int | None:
        return 0

    def bound(self, request: dict, raw: bytes, price: ModelPrice) -> RequestBound:
        return RequestBound(0, 0)

    def prepare(self, request: dict, raw: bytes) -> PreparedBody:
        return PreparedBody(raw, stream=False)

    def usage_from_body(self, body: dict) -> TokenUsage | None:
        return None

    def response_id(self, body: dict) -> str | None:
        return None

    def scanner(self, prepared: PreparedBody) -> StreamScanner:
        return NoStream()
