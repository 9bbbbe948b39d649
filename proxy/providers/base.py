"""What every provider adapter offers the relay."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from proxy.providers.bounds import RequestBound
from proxy.providers.sse import StreamScanner
from shared.catalog import ModelPrice
from shared.events import TokenUsage


@dataclass(slots=True)
class PreparedBody:
    """The body to send upstream and how to read the answer."""

    body: bytes
    stream: bool
    hide_usage_chunk: bool = False


class Adapter(Protocol):
    kind: str  # the provider kind whose wire format this is
    endpoint: str

    def output_cap(self, request: dict) -> int | None:
        """The request's own output cap, or None when it sets none."""

    def bound(self, request: dict, raw: bytes, price: ModelPrice) -> RequestBound:
        """The most input and output tokens the request can be billed for."""

    def prepare(self, request: dict, raw: bytes) -> PreparedBody:
        """Tweak the request where metering needs it (e.g. ask for stream usage)."""

    def usage_from_body(self, body: dict) -> TokenUsage | None:
        """Usage of a non-streaming answer, or None when it carries none."""

    def response_id(self, body: dict) -> str | None:
        """The id by which a later request may refer to this answer, or None."""

    def scanner(self, prepared: PreparedBody) -> StreamScanner:
        """A fresh scanner for one streamed answer."""

    def stream_error_event(self, message: str) -> bytes:
        """The event that tells a client, in this format, that its stream broke."""


# Optional, read with getattr: `billed = False` (forwarded free), `model_in_path =
# True` (the model is in the path, not the body), `upstream_id(body)` (the
# provider's id for an answer when no header carries one).


def tier_field(data: dict | None) -> str | None:
    """A reported `service_tier`: a short string, else None."""
    value = data.get("service_tier") if isinstance(data, dict) else None
    return value if isinstance(value, str) and 0 < len(value) <= 64 else None


def int_field(data: dict | None, name: str) -> int:
    if not data:
        return 0
    value = data.get(name)
    return value if type(value) is int and value > 0 else 0
