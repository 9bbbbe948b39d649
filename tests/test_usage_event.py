"""The usage event's two encodings (the model's and the proxy's fast one) agree."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import pytest

from shared.events import TokenUsage, UsageEvent

USAGE = TokenUsage(
    uncached_input_tokens=120,
    cache_read_tokens=30,
    cache_write_tokens=40,
    cache_write_1h_tokens=10,
    output_tokens=77,
)
BASE = {
    "request_id": "req_0123456789abcdef00000001",
    "user_id": 7,
    "api_key_id": 9,
    "provider": "anthropic",
    "provider_key_id": 3,
    "model": "claude-haiku-4-5",
    "endpoint": "messages",
    "stream": True,
    "usage": USAGE,
    "estimated": False,
    "hold_units": 123_456_789,
    "rate_multiplier": Decimal("1.25"),
    "outcome": "completed",
    "upstream_request_id": "msg_01",
    "duration_ms": 1234,
    "ttfb_ms": 56,
}


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"rate_multiplier": None, "provider_key_id": None, "upstream_request_id": None},
        {"duration_ms": None, "ttfb_ms": None},
        {"provider": "openai", "endpoint": "chat/completions", "stream": False, "estimated": True},
        {"rate_multiplier": Decimal("0.000001"), "outcome": "client_disconnected"},
    ],
)
def test_fast_encoding_decodes_to_the_same_event(changes):
    fields = {**BASE, **changes}
    model = UsageEvent(**fields)
    encoded = UsageEvent.encode(**fields)
    decoded = UsageEvent.from_json(encoded.json)
    assert decoded.model_dump(exclude={"created_at"}) == model.model_dump(exclude={"created_at"})
    assert set(orjson.loads(encoded.json)) == set(orjson.loads(model.to_json()))
    assert abs(decoded.created_at - datetime.now(UTC)) < timedelta(seconds=5)
    assert decoded.created_at.tzinfo is not None
    assert (encoded.request_id, encoded.user_id, encoded.hold_units) == (
        model.request_id,
        model.user_id,
        model.hold_units,
    )
    assert encoded.token_count == model.token_count == 120 + 30 + 40 + 77
