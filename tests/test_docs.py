"""`/docs` and `/docs/pricing` on the proxy."""

from __future__ import annotations

import aiohttp


async def test_docs_page_covers_the_developer_guide(proxy_url):
    async with aiohttp.ClientSession() as http, http.get(f"{proxy_url}/docs") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        html = await resp.text()
    for section in (
        "Quick start", "Authentication", "OpenAI Python", "Anthropic Python", "Node",
        "LangChain", "curl", "How you are billed", "Errors", "Security practices",
    ):  # fmt: skip
        assert section in html
    assert f"{proxy_url}/v1/openai" in html
    assert 'name="viewport"' in html  # readable on a phone


async def test_pricing_page_shows_catalog_and_the_callers_own_prices(proxy_url, accounts):
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{proxy_url}/docs/pricing") as resp:
            public = await resp.text()
        acct = await accounts.create("1", rate_multiplier="1.5")
        headers = {"Authorization": f"Bearer {acct.key}"}
        async with http.get(f"{proxy_url}/docs/pricing", headers=headers) as resp:
            mine = await resp.text()
    assert "<td>gpt-4o</td>" in public and "<td>claude-sonnet-4-5</td>" in public
    assert "your input" not in public
    # gpt-4o-markup: 2.5 input with model multiplier 1.5 = 3.75; with the user's 1.5 too: 5.625
    assert "3.75" in public
    assert "your input" in mine and "5.625" in mine
