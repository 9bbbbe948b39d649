"""`/docs` and `/docs/pricing`: developer documentation and the price table."""

from __future__ import annotations

import jinja2
from aiohttp import web

from proxy.auth import presented_key
from proxy.price_rows import price_tables
from proxy.state import GATEWAY, SETTINGS
from proxy.static_files import public_file
from shared import public_urls

__all__ = ["docs_page", "pricing_page", "public_file"]

_TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("proxy", "templates"), autoescape=True)
SCREENSHOT = "/public/images/api-key.png"


def _html(template: str, **context: object) -> web.Response:
    text = _TEMPLATES.get_template(template).render(**context)
    return web.Response(text=text, content_type="text/html")


def _links(request: web.Request) -> dict[str, str]:
    """This proxy's public base URL (the SDKs' base URLs start with it) and the
    dashboard's, from PUBLIC_PROXY_URL / DASHBOARD_URL or the request's host."""
    settings = request.app[SETTINGS]
    scheme = request.scheme
    base = (settings.public_proxy_url or "").strip().rstrip("/") or f"{scheme}://{request.host}"
    return {"base": base, "dashboard": public_urls.dashboard_url(settings, scheme, request.host)}


async def docs_page(request: web.Request) -> web.Response:
    return _html("docs.html", title="Docs", screenshot=SCREENSHOT, **_links(request))


async def pricing_page(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    rate = None
    key = presented_key(request, allow_x_api_key=True)
    if key:
        owner = await gw.keys.lookup(key)
        rate = owner.rate_multiplier if owner else None
    tables = price_tables(gw.catalog, rate)
    return _html("pricing.html", title="Prices", rate=rate, **tables, **_links(request))
