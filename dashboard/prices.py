"""`/prices`: the catalog's prices as the signed-in user pays them, with their own
rate multiplier and each model's multiplier applied (USD per million tokens)."""

from __future__ import annotations

from decimal import Decimal

from aiohttp import web

from dashboard.common import current_user, log, login_required, render, state
from shared.catalog import load_catalog
from shared.db import users

KINDS = ("input", "cache_read", "cache_write", "cache_write_1h", "output")


@login_required
async def prices_page(request: web.Request) -> web.StreamResponse:
    st = state(request)
    fresh = await users.by_id(st.pg, current_user(request).id)
    assert fresh is not None
    rate = Decimal(fresh.rate_multiplier)
    rows, error = [], None
    try:
        catalog = load_catalog(st.settings.model_catalog)
    except ValueError as exc:
        log.warning("catalog_unreadable", error=str(exc).splitlines()[0])
        catalog, error = None, "The price list cannot be read right now."
    if catalog is not None:
        for name, model in sorted(catalog.models.items(), key=lambda i: (i[1].provider, i[0])):
            base = model.base
            factor = rate * model.multiplier
            rows.append({
                "name": name, "provider": model.provider, "kind": model.kind,
                "factor": factor, "tiers": bool(model.tiers or model.service_tiers),
                "list": {k: getattr(base, k) for k in KINDS},
                "yours": {k: getattr(base, k) * factor for k in KINDS},
            })  # fmt: skip
    return render(request, "prices.html", {"title": "Prices", "rows": rows, "rate": rate,
                  "error": error})  # fmt: skip
