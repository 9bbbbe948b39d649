"""Where people reach the proxy and the dashboard, for the links between them.

`DASHBOARD_URL` and `PUBLIC_PROXY_URL` say so when the two are on different
hosts (or behind a reverse proxy); unset, a link goes to the host the request
came to, on the other service's configured port (`DASHBOARD_PORT`, `PROXY_PORT`).
"""

from __future__ import annotations

from yarl import URL

from shared.config import Settings


def _configured(value: str | None) -> str | None:
    value = (value or "").strip()
    return value.rstrip("/") or None


def _same_host(scheme: str, host: str, port: int) -> str:
    """`scheme://host:port` for the host a request came to (its own port dropped)."""
    try:
        here = URL(f"{scheme}://{host or 'localhost'}")
        hostname = here.raw_host or "localhost"
    except ValueError:
        hostname = "localhost"
    return str(URL.build(scheme=scheme, host=hostname, port=port)).rstrip("/")


def dashboard_url(settings: Settings, scheme: str, host: str) -> str:
    """The dashboard's base URL (no trailing slash) as seen from a request to
    `scheme://host` (a proxy page)."""
    return _configured(settings.dashboard_url) or _same_host(scheme, host, settings.dashboard_port)


def proxy_url(settings: Settings, scheme: str, host: str) -> str:
    """The proxy's base URL (no trailing slash) as seen from a request to
    `scheme://host` (a dashboard page); its developer docs are at `/docs`."""
    return _configured(settings.public_proxy_url) or _same_host(scheme, host, settings.proxy_port)
