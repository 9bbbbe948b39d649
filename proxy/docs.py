"""`/docs` and `/docs/pricing`: developer documentation and the price table."""

from __future__ import annotations

from decimal import Decimal

import jinja2
from aiohttp import web

from proxy.auth import presented_key
from proxy.state import GATEWAY
from shared.catalog import ModelPrice
from shared.money import usd_str

_TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("proxy", "templates"), autoescape=True)


def _html(template: str, **context: object) -> web.Response:
    text = _TEMPLATES.get_template(template).render(**context)
    return web.Response(text=text, content_type="text/html")


async def docs_page(request: web.Request) -> web.Response:
    return _html("docs.html", title="Docs", base=f"{request.scheme}://{request.host}")


def _row(name: str, m: ModelPrice, rate: Decimal | None) -> dict[str, str]:
    def price(value: Decimal) -> str:
        return usd_str(value * m.multiplier)

    anthropic = m.provider == "anthropic"
    row = {
        "name": name,
        "provider": m.provider,
        "input": price(m.input_per_mtok),
        "output": price(m.output_per_mtok),
        "cache_read": price(m.cache_read),
        "cache_write": price(m.cache_write) if anthropic else "-",
        "cache_write_1h": price(m.cache_write_1h) if anthropic else "-",
    }
    if rate is not None:
        row["my_input"] = price(m.input_per_mtok * rate)
        row["my_output"] = price(m.output_per_mtok * rate)
    return row


async def pricing_page(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    rate = None
    key = presented_key(request, allow_x_api_key=True)
    if key:
        owner = await gw.keys.lookup(key)
        rate = owner.rate_multiplier if owner else None
    models = sorted(gw.catalog.models.items(), key=lambda item: (item[1].provider, item[0]))
    rows = [_row(name, m, rate) for name, m in models]
    return _html("pricing.html", title="Prices", rows=rows, rate=rate)
