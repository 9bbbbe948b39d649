"""The usage event: the one contract between proxy and worker.

It travels through the queue as JSON. Token counts are integers; money is not
in the event at all: the worker prices it from the catalog.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from shared.catalog import Provider


class TokenUsage(BaseModel):
    """Token counts split the way the pricing formula needs them.

    `cache_write_tokens` is every cache write; `cache_write_1h_tokens` is the
    part of it that Anthropic priced as a 1-hour cache write.
    """

    model_config = ConfigDict(frozen=True)

    uncached_input_tokens: int = Field(default=0, ge=0)
    cache_read_tokens: int = Field(default=0, ge=0)
    cache_write_tokens: int = Field(default=0, ge=0)
    cache_write_1h_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    web_search_calls: int = Field(default=0, ge=0)
    # the service tier the provider reported serving at (None: none reported)
    service_tier: str | None = Field(default=None, max_length=64)

    @property
    def input_tokens(self) -> int:
        """The whole input: uncached + cache read + cache write."""
        return self.uncached_input_tokens + self.cache_read_tokens + self.cache_write_tokens


class UsageEvent(BaseModel):
    """What the proxy knows about one finished request that must be billed."""

    model_config = ConfigDict(frozen=True)

    request_id: str
    user_id: int
    api_key_id: int
    provider: Provider
    provider_key_id: int | None = None
    model: str
    endpoint: str
    stream: bool
    usage: TokenUsage
    estimated: bool = False
    hold_units: int = 0
    # the caller's rate multiplier when the request was made (what its hold used);
    # None: the worker takes the user's current one
    rate_multiplier: Decimal | None = None
    outcome: str = "completed"
    upstream_request_id: str | None = None
    # as the proxy measured it: arrival to the answer's end, and to its first body
    # byte (a whole answer's body goes at once: the same); None from older proxies
    duration_ms: int | None = Field(default=None, ge=0)
    ttfb_ms: int | None = Field(default=None, ge=0)
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @property
    def token_count(self) -> int:
        """Input plus output tokens: what a per-minute token limit counts."""
        return self.usage.input_tokens + self.usage.output_tokens

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def encode(
        cls,
        *,
        request_id: str,
        user_id: int,
        usage: TokenUsage,
        hold_units: int = 0,
        rate_multiplier: Decimal | None = None,
        **rest: object,
    ) -> EncodedUsageEvent:
        """What `UsageEvent(...).to_json()` gives, without building the model:
        the proxy's hot path. The worker validates it with `from_json`; a test
        pins that both encodings decode to the same event."""
        document = {
            **rest,
            "request_id": request_id,
            "user_id": user_id,
            "usage": usage.__dict__,
            "hold_units": hold_units,
            "rate_multiplier": None if rate_multiplier is None else str(rate_multiplier),
            "created_at": datetime.now(UTC),
        }
        return EncodedUsageEvent(
            request_id=request_id,
            user_id=user_id,
            hold_units=hold_units,
            token_count=usage.input_tokens + usage.output_tokens,
            json=orjson.dumps(document).decode(),
        )

    @classmethod
    def from_json(cls, data: str | bytes) -> UsageEvent:
        return cls.model_validate_json(data)


@dataclass(frozen=True, slots=True)
class EncodedUsageEvent:
    """A usage event already in its JSON form, with what the queue needs to know."""

    request_id: str
    user_id: int
    hold_units: int
    token_count: int
    json: str

    def to_json(self) -> str:
        return self.json
