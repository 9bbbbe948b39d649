"""API-key controls on the dashboard (CONTRACT.md section 6), for a key's owner
(/keys) and for operators (/admin/users/{id}): the form that sets a key's
budget and period, models and expiry (and, for operators, rpm/tpm), what the
key pages show about each key, and the update that every proxy hears of."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from aiohttp import web

from dashboard.common import FormError, field, log, parse_amount, state
from shared import invalidation
from shared.catalog import load_catalog
from shared.db import api_keys, audit
from shared.db import dashboard as q
from shared.key_view import spend_period
from shared.periods import DEFAULT_PERIOD, PERIODS, period_end, period_start

MAX_MODELS = 200
_LIMIT_MAX = 2**31


def catalog_models(request: web.Request) -> list[str]:
    """The catalog's model ids, sorted (provider, then id); empty when it cannot load."""
    try:
        catalog = load_catalog(state(request).settings.model_catalog)
    except ValueError as exc:
        log.warning("catalog_unreadable", error=str(exc).splitlines()[0])
        return []
    return [name for name, m in sorted(catalog.models.items(), key=lambda i: (i[1].provider, i[0]))]


def _models(form: Any, known: list[str]) -> tuple[str, ...] | None:
    """The models chosen: the multi-select's values and/or a comma list;
    nothing chosen is every model (None). Unknown ids are named."""
    chosen: list[str] = []
    values = form.getall("models", []) if hasattr(form, "getall") else []
    for value in values[: MAX_MODELS + 1]:
        if isinstance(value, str):
            chosen.extend(part.strip() for part in value[:10_000].split(","))
    chosen = [c for c in dict.fromkeys(chosen) if c]
    if not chosen:
        return None
    if len(chosen) > MAX_MODELS:
        raise FormError(f"At most {MAX_MODELS} models")
    unknown = [c for c in chosen if c not in set(known)]
    if unknown:
        shown = ", ".join(repr(u[:60]) for u in unknown[:5])
        raise FormError(f"Not in the model catalog: {shown}")
    return tuple(chosen)


def _expiry(text: str) -> datetime | None:
    """Blank: never. ISO 8601; without Z or an offset it is UTC (the form says so)."""
    text = text.strip()
    if not text:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError as exc:
        raise FormError("Expiry must look like 2026-12-31T23:59 (UTC)") from exc
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC)


def _limit(text: str, what: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < _LIMIT_MAX:
        raise FormError(f"{what} must be a positive whole number (blank: no limit)")
    return int(text)


def parse_create(form: Any, known: list[str]) -> dict[str, Any]:
    """The optional controls of a key creation form, as `api_keys.create` keywords."""
    c = parse_controls(form, known, with_rates=False)
    return {"budget_usd": c["budget_usd"], "budget_period": c["budget_period"],
            "models": c["models"], "expires_at": c["expires_at"]}  # fmt: skip


def parse_controls(form: Any, known: list[str], *, with_rates: bool) -> dict[str, Any]:
    """A controls form as `api_keys.set_controls` keywords. The form shows every
    control, so a blank field clears it: no budget, every model, never expires."""
    budget = parse_amount(field(form, "budget_usd", 100), "Budget", allow_blank=True,
                          negative=False)  # fmt: skip
    period = field(form, "budget_period", 20).strip() or DEFAULT_PERIOD
    if period not in PERIODS:
        raise FormError("The budget period is day, week, month or total")
    changes: dict[str, Any] = {
        "budget_usd": budget,
        "budget_period": period if budget is not None else None,
        "models": _models(form, known),
        "expires_at": _expiry(field(form, "expires_at", 100)),
    }
    if with_rates:
        changes["rpm"] = _limit(field(form, "rpm", 20), "Requests per minute")
        changes["tpm"] = _limit(field(form, "tpm", 20), "Tokens per minute")
    return changes


async def apply(request: web.Request, key: api_keys.ApiKey, changes: dict[str, Any],
                actor: str | None = None) -> None:  # fmt: skip
    """Store the key's new controls and tell every proxy to drop its cached owner;
    an operator's change (`actor`) is audited in the same transaction."""
    st = state(request)
    key_hash = await api_keys.hash_of(st.pg, key.id)
    async with st.pg.acquire() as conn, conn.transaction():
        updated = await api_keys.set_controls(conn, key.id, **changes)
        if actor is not None and updated is not None:
            await audit.record(conn, actor, "key.set", f"key:{key.id}", audit.key_fields(key),
                               audit.key_fields(updated))  # fmt: skip
    if key_hash is not None:
        await st.notify(invalidation.key_message(key_hash))


async def key_rows(request: web.Request, keys: list[api_keys.ApiKey]) -> list[dict[str, Any]]:
    """What the key tables show: each key with its spend and request count this
    period (one query for every key)."""
    st = state(request)
    now = datetime.now(UTC)
    spans = [(k.id, period_start(spend_period(k), now), period_end(spend_period(k), now))
             for k in keys]  # fmt: skip
    spends = await q.key_spends(st.pg, spans)
    rows = []
    for k in keys:
        spend, requests = spends.get(k.id, (Decimal(0), 0))
        rows.append({
            "key": k, "spend": spend, "requests": requests, "period": spend_period(k),
            "expired": k.expires_at is not None and k.expires_at <= now,
            "expires_value": k.expires_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
            if k.expires_at else "",
        })  # fmt: skip
    return rows
