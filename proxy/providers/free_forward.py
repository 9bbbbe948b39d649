"""An endpoint forwarded free (contract section 5): the body goes upstream as
given, never held, never billed (`billed = False` routes it through
`proxy.free_endpoints`). Each provider's free endpoint is this plus its name."""

from __future__ import annotations

from proxy.providers.base import PreparedBody
from proxy.providers.bounds import RequestBound
from proxy.providers.openai_embeddings import NoStream
from proxy.providers.sse import StreamScanner
from shared.catalog import ModelPrice
from shared.events import TokenUsage


class FreeForward:
    kind: str
    endpoint: str
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
