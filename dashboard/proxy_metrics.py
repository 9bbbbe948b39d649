"""Error rates of the proxies for the System page, from their Prometheus `/metrics`.

Design: the dashboard scrapes each URL of `PROXY_METRICS_URLS` (comma-separated
`/metrics` URLs, one per proxy host: `serve --workers N` sums its processes in
one scrape; default the configured proxy, `http://PROXY_HOST:PROXY_PORT/metrics`)
when the page is shown, with a short timeout, and sums
`meterway_requests_total` by status class. Counters only grow, so a rate needs
two scrapes: the last one is kept in Redis (`mw:dashboard:proxy_metrics`, with
its time) and the page shows the difference to it as "the last N s", replacing
it once it is a minute old. A proxy that restarted (a counter went down) counts
from zero. Nothing is written by the proxies for this: an unreachable proxy is
shown as such, and the page still loads.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

SAMPLE_KEY = "mw:dashboard:proxy_metrics"
KEEP_SECONDS = 60
TIMEOUT_SECONDS = 1.5
CLASSES = ("2xx", "4xx", "5xx")


def metrics_urls(settings: Any) -> list[str]:
    """`PROXY_METRICS_URLS` (a setting where there is one, else the environment),
    else the configured proxy's `/metrics`."""
    raw = getattr(settings, "proxy_metrics_urls", None) or os.environ.get("PROXY_METRICS_URLS")
    if isinstance(raw, list | tuple):
        urls = [str(u).strip() for u in raw]
    else:
        urls = [u.strip() for u in (raw or "").split(",")]
    urls = [u for u in urls if u]
    if urls:
        return urls
    host = settings.proxy_host if settings.proxy_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    return [f"http://{host}:{settings.proxy_port}/metrics"]


def status_class(status: str) -> str:
    return f"{status[0]}xx" if len(status) == 3 and status[0] in "12345" else "other"


def parse(text: str) -> dict[str, float]:
    """Requests by status class (2xx, 4xx, 5xx, ...) in one scrape, the free
    and account endpoints included."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in ("meterway_requests", "meterway_requests_total"):
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            cls = status_class(str(sample.labels.get("status", "")))
            totals[cls] = totals.get(cls, 0.0) + float(sample.value)
    return totals


@dataclass(slots=True)
class Rates:
    reachable: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    totals: dict[str, float] = field(default_factory=dict)  # since each proxy started
    window: dict[str, float] = field(default_factory=dict)  # since the kept scrape
    window_seconds: float | None = None

    @staticmethod
    def _share(counts: dict[str, float], cls: str) -> str:
        n = sum(counts.values())
        return "-" if n == 0 else f"{100 * counts.get(cls, 0.0) / n:.1f} %"

    def rows(self) -> list[tuple[str, str, bool]]:
        """(label, value, ok) lines for the page."""
        out: list[tuple[str, str, bool]] = []
        if self.window_seconds is not None:
            n = sum(self.window.values())
            out.append((f"Requests, last {self.window_seconds:.0f} s", f"{n:,.0f}", True))
            share = self._share(self.window, "5xx")
            out.append((f"5xx share, last {self.window_seconds:.0f} s", share,
                        self.window.get("5xx", 0) <= 0.05 * max(n, 1)))  # fmt: skip
            out.append((f"4xx share, last {self.window_seconds:.0f} s",
                        self._share(self.window, "4xx"), True))  # fmt: skip
        n = sum(self.totals.values())
        out.append(("Requests since the proxies started", f"{n:,.0f}", True))
        out.append(("5xx share since start", self._share(self.totals, "5xx"),
                    self.totals.get("5xx", 0) <= 0.05 * max(n, 1)))  # fmt: skip
        out.append(("4xx share since start", self._share(self.totals, "4xx"), True))
        return out


async def _scrape(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with http.get(url) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}")
        return parse(await resp.text())


async def collect(urls: list[str], redis: Any, now: float | None = None) -> Rates:
    """Scrape every URL at once; the window is the difference to the kept scrape."""
    now = time.time() if now is None else now
    rates = Rates()
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        results = await asyncio.gather(*(_scrape(http, u) for u in urls), return_exceptions=True)
    current: dict[str, dict[str, float]] = {}
    for url, result in zip(urls, results, strict=True):
        if isinstance(result, BaseException):
            rates.failed.append((url, str(result)[:120] or type(result).__name__))
            continue
        rates.reachable.append(url)
        current[url] = result
        for cls, n in result.items():
            rates.totals[cls] = rates.totals.get(cls, 0.0) + n
    try:
        kept_raw = await redis.get(SAMPLE_KEY)
        kept = json.loads(kept_raw) if kept_raw else None
    except Exception:
        kept = None
    if kept and isinstance(kept.get("at"), int | float) and now - kept["at"] > 0:
        rates.window_seconds = now - kept["at"]
        for url, counts in current.items():
            before = kept.get("by_url", {}).get(url, {})
            restarted = any(n < before.get(cls, 0.0) for cls, n in counts.items())
            for cls, n in counts.items():
                delta = n if restarted else n - before.get(cls, 0.0)
                rates.window[cls] = rates.window.get(cls, 0.0) + max(delta, 0.0)
    if current and (not kept or now - kept.get("at", 0) >= KEEP_SECONDS):
        try:
            await redis.set(SAMPLE_KEY, json.dumps({"at": now, "by_url": current}), ex=3600)
        except Exception:
            pass
    return rates
