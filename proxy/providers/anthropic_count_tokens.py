"""Anthropic token counting: `POST /messages/count_tokens`, forwarded free.

Never billed and never held (contract section 5): `billed = False` routes it
through `proxy.free_endpoints`, which checks the key, the model and the key's
requests per minute, and relays the body as given.
"""

from __future__ import annotations

from proxy.providers.base import PreparedBody
from proxy.providers.bounds import RequestBound
from proxy.providers.openai_embeddings import NoStream
from proxy.providers.sse import StreamScanner
from shared.catalog import ModelPrice
from shared.events import TokenUsage


class AnthropicCountTokens:
    kind = "anthropic"
    endpoint = "messages/count_tokens"
    billed = False  # a free endpoint: no hold, no usage record

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
