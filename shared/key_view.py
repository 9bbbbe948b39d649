"""One API key as the JSON object of `meterway key list --json` and of
`GET /v1/account/key` (CONTRACT.md section 6): one function, so both agree."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from shared.db import api_keys
from shared.db.api_keys import ApiKey
from shared.db.users import Conn
from shared.money import usd_str


def spend_period(key: ApiKey) -> str:
    """The period `spend_period_usd` counts: the budget's, or this calendar month."""
    return key.budget_period if key.budget_usd is not None and key.budget_period else "month"


def iso_z(at: datetime) -> str:
    """ISO 8601 in UTC with `Z`: `2026-12-01T00:00:00Z`."""
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def key_document(key: ApiKey, spend: Decimal) -> dict[str, Any]:
    """The key's JSON object; `spend` is its settled spend in `spend_period(key)`
    (`api_keys.spend_in_period`). Amounts are exact decimal strings."""
    has_budget = key.budget_usd is not None
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "created": key.created_at.isoformat(),
        "last_used": key.last_used_at.isoformat() if key.last_used_at else None,
        "revoked": key.revoked_at is not None,
        "rpm": key.rpm_limit,
        "tpm": key.tpm_limit,
        "budget_usd": usd_str(key.budget_usd) if key.budget_usd is not None else None,
        "budget_period": key.budget_period if has_budget else None,
        "spend_period_usd": usd_str(spend),
        "models": list(key.models) if key.models is not None else None,
        "expires_at": iso_z(key.expires_at) if key.expires_at is not None else None,
    }


async def load_document(conn: Conn, key: ApiKey, at: datetime | None = None) -> dict[str, Any]:
    """`key_document` with the spend read from Postgres for the period containing `at` (now)."""
    spend = await api_keys.spend_in_period(conn, key.id, spend_period(key), at or datetime.now(UTC))
    return key_document(key, spend)
