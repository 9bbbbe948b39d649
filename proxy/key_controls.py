"""An API key's own limits on the request path (contract sections 2 and 6):
expiry, the model list, per-minute rates and the budget that rides the hold.

A key without limits pays one field check each; nothing here reads Postgres.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from proxy.errors import ProxyError
from shared import redis_keys
from shared.balance_view import KeyBudget, RateLimit
from shared.db.api_keys import KeyOwner
from shared.money import units_floor
from shared.periods import period_id


def now() -> datetime:
    """The clock key controls read (tests move it to cross a period)."""
    return datetime.now(UTC)


def check_expiry(owner: KeyOwner) -> None:
    """From `expires_at` on the key is refused, on every proxy at once (the
    time is in the cached owner; only the clock moves)."""
    if owner.expires_at is not None and owner.expires_at <= now():
        raise ProxyError(401, "API key expired", code="expired_api_key")


def check_model(owner: KeyOwner, model: str) -> None:
    if owner.models is not None and model not in owner.models:
        raise ProxyError(403, "Model not allowed for this API key", code="model_not_allowed")


def rate_limit_of(owner: KeyOwner) -> RateLimit | None:
    """The key's per-minute limits, counted in a window shared by all proxies."""
    if not owner.rpm_limit and not owner.tpm_limit:
        return None
    minute = int(time.time() // 60)
    window = redis_keys.rate_window(owner.user_id, owner.api_key_id, minute)
    return RateLimit(window, owner.rpm_limit, owner.tpm_limit)


def seconds_to_next_minute() -> int:
    return 60 - int(time.time()) % 60


def budget_of(owner: KeyOwner, at: datetime | None = None) -> KeyBudget | None:
    """The key's budget for the period containing `at` (now), or None."""
    if owner.budget_usd is None:
        return None
    kind = owner.budget_period or "month"
    at = at or now()
    return KeyBudget(owner.api_key_id, period_id(kind, at), units_floor(owner.budget_usd), kind, at)


def key_tag(owner: KeyOwner) -> str:
    """`<key>:<period>` of the period a finishing request is counted in ('' none)."""
    budget = budget_of(owner)
    return budget.tag if budget is not None else ""
