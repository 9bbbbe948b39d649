"""OpenAI Embeddings: `POST /embeddings`, billed as input only.

Also the bound of inputs that may be a batch (a string, a list of strings, a
list of token ids, or a list of such lists), which the legacy completions
endpoint shares for its `prompt`.
"""

from __future__ import annotations

from proxy.providers.base import PreparedBody, int_field
from proxy.providers.bounds import TEXT_MARGIN_TOKENS, RequestBound
from proxy.providers.sse import StreamScanner
from shared.catalog import ModelPrice
from shared.events import TokenUsage


def batch_bound(value: object, raw: bytes, extra_text: object = None) -> tuple[int, int]:
    """(the most input tokens, the number of separate inputs) of an input field.

    Text is bounded at one token per byte of the whole raw body (it carries all
    the text); token ids are counted one each, which is exact and tighter (the
    request's other text, e.g. a completion's `suffix`, is added at its bytes).
    The provider limits each input to the context window on its own, so the
    number of inputs is what the window cap is multiplied by."""
    text = len(raw) + TEXT_MARGIN_TOKENS
    if not isinstance(value, list) or not value:
        return text, 1
    first = value[0]
    if type(first) is int and all(type(item) is int for item in value):  # one token array
        return min(len(value) + _extra(extra_text), text), 1
    if isinstance(first, list) and all(isinstance(item, list) for item in value):
        tokens = sum(len(item) for item in value) + _extra(extra_text)
        return min(tokens, text), len(value)
    return text, len(value)


def _extra(text: object) -> int:
    """Tokens other text of the request can add (one per byte), plus the margin."""
    size = len(text.encode("utf-8", "surrogatepass")) if isinstance(text, str) else 0
    return size + TEXT_MARGIN_TOKENS


class NoStream(StreamScanner):
    """Embeddings never stream; an answer that does anyway is passed on as is."""

    def on_event(self, event: bytes) -> bool:
        return True


class OpenAIEmbeddings:
    kind = "openai"
    endpoint = "embeddings"
    model_kind = "embedding"  # only `kind: embedding` models, and no others

    def output_cap(self, request: dict) -> int | None:
        return 0

    def bound(self, request: dict, raw: bytes, price: ModelPrice) -> RequestBound:
        tokens, inputs = batch_bound(request.get("input"), raw)
        return RequestBound(tokens, 0, inputs=inputs)

    def prepare(self, request: dict, raw: bytes) -> PreparedBody:
        return PreparedBody(raw, stream=False)

    def usage_from_body(self, body: dict) -> TokenUsage | None:
        usage = body.get("usage")
        if not isinstance(usage, dict):
            return None
        return TokenUsage(uncached_input_tokens=int_field(usage, "prompt_tokens"), output_tokens=0)

    def response_id(self, body: dict) -> str | None:
        return None

    def scanner(self, prepared: PreparedBody) -> StreamScanner:
        return NoStream()
