"""`/docs` and `/docs/pricing`: developer documentation and the price table."""

from __future__ import annotations

from html import escape

from aiohttp import web

from proxy.state import GATEWAY
from shared.money import usd_str

_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:auto;padding:1rem}}
table{{border-collapse:collapse;width:100%}}td,th{{border-bottom:1px solid #ddd;padding:.3rem;
text-align:left}}pre{{background:#f4f4f4;padding:.6rem;overflow-x:auto}}</style></head>
<body>{body}</body></html>"""

_DOCS = """<h1>Meterway</h1>
<p>Meterway is a metered proxy in front of OpenAI and Anthropic. Use your Meterway key with the
official SDKs; every request is priced from the <a href="/docs/pricing">price table</a> and
charged to your prepaid balance.</p>
<h2>OpenAI Python</h2>
<pre>from openai import OpenAI
client = OpenAI(base_url="{base}/v1/openai", api_key="mw-...")
client.chat.completions.create(model="gpt-4o", messages=[{{"role": "user", "content": "Hi"}}])</pre>
<h2>Anthropic Python</h2>
<pre>from anthropic import Anthropic
client = Anthropic(base_url="{base}/v1/anthropic", api_key="mw-...")
client.messages.create(model="claude-sonnet-4-5", max_tokens=256,
                       messages=[{{"role": "user", "content": "Hi"}}])</pre>
<h2>curl</h2>
<pre>curl {base}/v1/openai/chat/completions -H "Authorization: Bearer mw-..." \\
  -H "Content-Type: application/json" \\
  -d '{{"model": "gpt-4o", "messages": [{{"role": "user", "content": "Hi"}}]}}'</pre>
<h2>Balance and usage</h2>
<p><code>GET /v1/account</code> and <code>GET /v1/account/usage?limit=N</code>.</p>
<h2>Errors</h2>
<table><tr><th>status</th><th>meaning</th></tr>
<tr><td>400</td><td>malformed request, or a model not in the price table</td></tr>
<tr><td>401</td><td>missing, unknown or revoked key</td></tr>
<tr><td>402</td><td>available balance below the request's hold</td></tr>
<tr><td>413</td><td>request body too large</td></tr>
<tr><td>429</td><td>provider paused, rate limited, or all provider keys cooling down</td></tr>
<tr><td>502 / 504</td><td>upstream unreachable / timed out</td></tr>
<tr><td>503</td><td>no provider key available</td></tr></table>"""


def _html(title: str, body: str) -> web.Response:
    return web.Response(text=_PAGE.format(title=title, body=body), content_type="text/html")


async def docs_page(request: web.Request) -> web.Response:
    base = f"{request.scheme}://{request.host}"
    return _html("Meterway docs", _DOCS.format(base=escape(base)))


async def pricing_page(request: web.Request) -> web.Response:
    catalog = request.app[GATEWAY].catalog
    rows = []
    for name, m in sorted(catalog.models.items(), key=lambda item: (item[1].provider, item[0])):
        cells = [
            name,
            m.provider,
            usd_str(m.input_per_mtok * m.multiplier),
            usd_str(m.output_per_mtok * m.multiplier),
            usd_str(m.cache_read * m.multiplier),
            usd_str(m.cache_write * m.multiplier) if m.provider == "anthropic" else "-",
        ]
        rows.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
    body = (
        "<h1>Prices</h1><p>USD per million tokens, model multiplier applied.</p><table>"
        "<tr><th>model</th><th>provider</th><th>input</th><th>output</th>"
        "<th>cache read</th><th>cache write</th></tr>" + "".join(rows) + "</table>"
    )
    return _html("Meterway prices", body)
