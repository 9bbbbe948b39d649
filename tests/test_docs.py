"""`/docs`, `/docs/pricing` and `/public/...` on a running proxy (real HTTP)."""

from __future__ import annotations

import asyncio
import html
import json
import re
import shutil
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import aiohttp
import pytest

from proxy.static_files import STATIC_ROOT, resolve
from shared import public_urls
from shared.config import Settings

SCREENSHOT = STATIC_ROOT / "images" / "api-key.png"


async def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        return resp.status, await resp.text()


# --- /docs --------------------------------------------------------------------------------------


async def test_docs_page_covers_the_developer_guide(proxy_url, settings):
    async with aiohttp.ClientSession() as http, http.get(f"{proxy_url}/docs") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        html = await resp.text()
    for section in (
        "Quick start", "Getting your proxy API key", "Authentication", "OpenAI Python",
        "Embeddings", "Legacy completions", "Anthropic Python", "Anthropic token counting (free)",
        "Gemini (google-genai)", "Node", "LangChain", "curl",
        "Adding an OpenAI-compatible provider", "How you are billed", "Errors",
        "Security practices",
    ):  # fmt: skip
        assert f">{section}" in html, section
    assert f"{proxy_url}/v1/openai" in html
    assert 'name="viewport"' in html  # readable on a phone


async def test_docs_gemini_embeddings_completions_and_free_counting(proxy_url):
    _, html = await _get(f"{proxy_url}/docs")
    gemini = html[html.index('id="gemini"') : html.index("Node (openai package)")]
    assert "genai.Client(" in gemini
    assert f'types.HttpOptions(base_url="{proxy_url}/v1/gemini")' in gemini
    for call in ("client.models.generate_content(", "generate_content_stream(", "count_tokens("):
        assert call in gemini, call
    assert f"{proxy_url}/v1/gemini/v1beta/models/gemini-2.5-flash:generateContent" in gemini
    assert ":streamGenerateContent?alt=sse&amp;key=mw-" in gemini  # the key as ?key=
    assert '-H "x-goog-api-key: mw-..."' in gemini
    assert "promptTokenCount</code> \u2212 <code>cachedContentTokenCount" in gemini
    assert "402 <code>FAILED_PRECONDITION</code>" in gemini and "RESOURCE_EXHAUSTED" in gemini

    assert "client.embeddings.create(" in html and f"{proxy_url}/v1/openai/embeddings" in html
    assert "billed as input only" in html
    assert "client.completions.create(" in html and "defaults to 16" in html
    counting = html[html.index('id="count-tokens"') : html.index('id="gemini"')]
    assert f"{proxy_url}/v1/anthropic/v1/messages/count_tokens" in counting
    assert "nothing is held and nothing is\nbilled" in counting


async def test_docs_adding_an_openai_compatible_provider(proxy_url):
    _, html = await _get(f"{proxy_url}/docs")
    part = html[html.index('id="add-provider"') : html.index("How you are billed")]
    assert "meterway provider add NAME --kind openai --base-url URL" in part
    assert "[--auth-header HEADER] [--header &#34;Name: value&#34;]" in part or (
        '[--auth-header HEADER] [--header "Name: value"]' in part
    )
    assert (
        "--base-url https://RESOURCE.openai.azure.com/openai/v1 --auth-header api-key" in part
    )  # Azure's v1 API: the secret in an api-key header
    assert "--base-url https://api.groq.com/openai/v1" in part
    assert "--base-url http://host:8000/v1" in part
    assert "meterway provider-key add azure -" in part
    assert '"provider": "vllm"' in part
    assert f"{proxy_url}/v1/NAME/chat/completions" in part
    assert f'OpenAI(base_url="{proxy_url}/v1/vllm"' in part
    assert "within 5 seconds" in part and "answer\n404" in part


async def test_docs_say_where_to_click_for_a_key_and_link_the_dashboard(proxy_url, settings):
    _, html = await _get(f"{proxy_url}/docs")
    part = html[html.index('id="api-key"') : html.index('<h2 id="endpoints">')]
    assert "<em>Dashboard → Settings → API Keys → Create new key</em>" in part
    assert '<img src="/public/images/api-key.png"' in part
    # no DASHBOARD_URL: the host of the request on the dashboard's port
    dashboard = f"http://127.0.0.1:{settings.dashboard_port}"
    assert f'href="{dashboard}/keys" id="dashboard-keys"' in part
    assert f'id="dashboard-link" href="{dashboard}/"' in html  # in the top bar of every page
    _, pricing = await _get(f"{proxy_url}/docs/pricing")
    assert f'id="dashboard-link" href="{dashboard}/"' in pricing


async def test_configured_dashboard_and_public_proxy_urls(proxy_url, settings: Settings):
    # the running proxy reads its Settings object per request: set both for this test only
    settings.dashboard_url = "https://dash.example.com/"
    settings.public_proxy_url = "https://api.example.com"
    try:
        _, html = await _get(f"{proxy_url}/docs")
    finally:
        settings.dashboard_url = settings.public_proxy_url = None
    assert 'href="https://dash.example.com/keys" id="dashboard-keys"' in html
    assert 'OpenAI(base_url="https://api.example.com/v1/openai"' in html
    assert f"{proxy_url}/v1" not in html  # the public URL, not the address the request came to


def test_public_urls_rule():
    plain = Settings(_env_file=None, proxy_port=8000, dashboard_port=8001)
    assert public_urls.dashboard_url(plain, "http", "10.0.0.5:8000") == "http://10.0.0.5:8001"
    assert public_urls.proxy_url(plain, "https", "gw.example.com") == "https://gw.example.com:8000"
    assert public_urls.proxy_url(plain, "http", "[::1]:8001") == "http://[::1]:8000"
    assert public_urls.proxy_url(plain, "http", "bad host:x") == "http://localhost:8000"
    set_ = Settings(_env_file=None, dashboard_url=" https://d.example/ ",
                    public_proxy_url="https://p.example/")  # fmt: skip
    assert public_urls.dashboard_url(set_, "http", "x:1") == "https://d.example"
    assert public_urls.proxy_url(set_, "http", "x:1") == "https://p.example"


def _code_blocks(page: str, key: str) -> list[str]:
    """The page's code examples as a reader copies them, with a real key pasted in."""
    blocks = re.findall(r"<pre><code>(.*?)</code></pre>", page, re.S)
    return [html.unescape(b).replace("mw-...", key) for b in blocks]


@pytest.mark.usefixtures("worker")
async def test_docs_examples_run_as_shown(proxy_url, accounts, pg):
    """The Gemini, embeddings, completions and Anthropic examples, copied from /docs
    and run with the official SDKs (and curl), work and bill as the page says."""
    acct = await accounts.create("5")
    _, page = await _get(f"{proxy_url}/docs")
    blocks = _code_blocks(page, acct.key)

    def block(start: str) -> str:
        return next(b for b in blocks if b.startswith(start))

    def run(*codes: str) -> dict:
        namespace: dict = {}
        for code in codes:
            exec(compile(code, "<docs example>", "exec"), namespace)
        return namespace

    gemini = await asyncio.to_thread(run, block("from google import genai"))
    assert gemini["reply"].text and gemini["reply"].usage_metadata.total_token_count > 0
    openai_ns = await asyncio.to_thread(
        run, next(b for b in blocks if "client.embeddings.create(" in b),
        block("completion = client.completions.create("),
    )  # fmt: skip
    assert len(openai_ns["result"].data) == 2 and openai_ns["result"].usage.prompt_tokens > 0
    assert openai_ns["completion"].choices[0].text
    anthropic_ns = await asyncio.to_thread(run, block("from anthropic import Anthropic"))
    assert anthropic_ns["message"].content[0].text

    curls = block("curl " + proxy_url + "/v1/gemini/")
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", "set -e\n" + curls,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert b'"candidates"' in out and b'"totalTokens"' in out and b'"models"' in out

    # billed as the page says: every metered call once, the free ones never
    for _ in range(100):
        rows = await pg.fetch(
            "SELECT endpoint, count(*) AS n FROM usage_records WHERE user_id = $1"
            " GROUP BY endpoint",
            acct.user_id,
        )
        if sum(r["n"] for r in rows) >= 9:
            break
        await asyncio.sleep(0.1)
    assert {r["endpoint"]: r["n"] for r in rows} == {
        "generateContent": 2, "streamGenerateContent": 2, "embeddings": 1, "completions": 2,
        "messages": 2,
    }  # fmt: skip


# --- /docs/pricing ------------------------------------------------------------------------------


class _Tables(HTMLParser):
    """Rows of every `<table id=...>` as lists of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._table = dict(attrs).get("id")
            self.tables[self._table or ""] = []
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row:
                self.tables[self._table or ""].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _tables(html: str) -> dict[str, list[list[str]]]:
    parser = _Tables()
    parser.feed(html)
    return parser.tables


def _usd(value: Decimal) -> str:
    """The expected display of a unit price: exact, at least 2 decimals, `$`, commas."""
    text = format(value.normalize(), "f")
    whole, _, frac = text.partition(".")
    return f"${int(whole):,}.{frac.ljust(2, '0')}"


async def test_pricing_page_shows_catalog_and_the_callers_own_prices(proxy_url, accounts):
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{proxy_url}/docs/pricing") as resp:
            public = await resp.text()
        acct = await accounts.create("1", rate_multiplier="1.5")
        headers = {"Authorization": f"Bearer {acct.key}"}
        async with http.get(f"{proxy_url}/docs/pricing", headers=headers) as resp:
            mine = await resp.text()
    rows = {r[0]: r for r in _tables(public)["models"][1:]}
    assert "gpt-4o" in rows and "claude-sonnet-4-5" in rows
    assert "your input" not in public
    # gpt-4o-markup: 2.5 input with model multiplier 1.5 = 3.75; with the user's 1.5 too: 5.625
    assert rows["gpt-4o-markup"][2:4] == ["$3.75", "$15.00"]
    my_rows = {r[0]: r for r in _tables(mine)["models"][1:]}
    assert my_rows["gpt-4o-markup"][-2:] == ["$5.625", "$22.50"]
    # a cache price the model does not list is its input price, as billed
    assert rows["gpt-4o"][2:7] == ["$2.50", "$10.00", "$1.25", "$2.50", "$2.50"]
    assert rows["text-embedding-3-small"][2:4] == ["$0.02", "-"]  # input only


async def test_pricing_page_shows_tier_service_tier_and_per_call_prices(
    proxy_url, accounts, catalog_path: Path
):
    raw = json.loads(await asyncio.to_thread(catalog_path.read_text), parse_float=Decimal)
    raw = raw["models"]
    _, html = await _get(f"{proxy_url}/docs/pricing")
    tables = _tables(html)
    fields = ("input", "output", "cache_read", "cache_write", "cache_write_1h")

    def expected(chain: list[dict], multiplier: Decimal) -> list[str]:
        def pick(name: str) -> Decimal | None:
            return next((Decimal(p[name]) for p in chain if p.get(f"{name}") is not None), None)

        values = {f: pick(f"{f}_per_mtok") for f in fields}
        base_input = values["input"]
        return [_usd((base_input if v is None else v) * multiplier) for v in values.values()]

    # long-context tiers: every model that has them, prices exactly as the catalog's
    tier_rows = {(r[0], r[2]): r[3:8] for r in tables["tiers"][1:]}
    want_tiers = {}
    for name, m in raw.items():
        for t in m.get("tiers", []):
            label = f"above {t['above_input_tokens']:,} input tokens"
            want_tiers[(name, label)] = expected([t, m], Decimal(m.get("multiplier", 1)))
    assert want_tiers and tier_rows == want_tiers
    assert tier_rows[("claude-sonnet-4-5", "above 200,000 input tokens")] == [
        "$6.00", "$22.50", "$0.60", "$7.50", "$12.00",
    ]  # fmt: skip

    # service tiers (flex, priority): a price the tier leaves out is the model's
    service_rows = {(r[0], r[2]): r[3:8] for r in tables["service"][1:]}
    want_service = {
        (name, tier): expected([st, m], Decimal(m.get("multiplier", 1)))
        for name, m in raw.items()
        for tier, st in m.get("service_tiers", {}).items()
    }
    assert want_service and service_rows == want_service
    assert service_rows[("gpt-5", "flex")][:3] == ["$0.625", "$5.00", "$0.0625"]
    assert service_rows[("gpt-5", "priority")][:3] == ["$2.50", "$20.00", "$0.25"]

    # web search per call, for every model that has a price for it
    per_call = {r[0]: r[2] for r in tables["per-call-prices"][1:]}
    want_calls = {
        name: _usd(Decimal(m["web_search_per_call"]) * Decimal(m.get("multiplier", 1)))
        for name, m in raw.items()
        if m.get("web_search_per_call") is not None
    }
    assert want_calls and per_call == want_calls
    assert per_call["gpt-4o"] == "$0.025" and per_call["claude-sonnet-4-5"] == "$0.01"

    # the caller's own multiplier on the tier tables too
    acct = await accounts.create("1", rate_multiplier="1.5")
    _, mine = await _get(f"{proxy_url}/docs/pricing", {"Authorization": f"Bearer {acct.key}"})
    mine_service = {(r[0], r[2]): r[-2:] for r in _tables(mine)["service"][1:]}
    assert mine_service[("gpt-5", "flex")] == ["$0.9375", "$7.50"]
    assert {r[0]: r[-1] for r in _tables(mine)["per-call-prices"][1:]}["gpt-4o"] == "$0.0375"


# --- /public/... --------------------------------------------------------------------------------


async def _raw_get(url: str, target: str, method: str = "GET") -> tuple[int, dict, bytes]:
    """Send `target` byte for byte (no client-side normalisation of `..` or escapes)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    )
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


async def test_public_serves_the_screenshot_as_png(proxy_url):
    assert SCREENSHOT.is_file(), "proxy/static/images/api-key.png is missing"
    status, headers, body = await _raw_get(proxy_url, "/public/images/api-key.png")
    assert status == 200
    assert headers["content-type"] == "image/png"
    assert headers["cache-control"] == "public, max-age=3600"
    assert headers["x-content-type-options"] == "nosniff"
    assert body == SCREENSHOT.read_bytes() and body.startswith(b"\x89PNG\r\n\x1a\n")
    status, headers, body = await _raw_get(proxy_url, "/public/images/api-key.png", "HEAD")
    assert status == 200 and headers["content-type"] == "image/png" and body == b""


@pytest.mark.parametrize(
    "target",
    [
        "/public/../app.py", "/public/%2e%2e/app.py", "/public/%2E%2E/app.py",
        "/public/..%2fapp.py", "/public/..%2Fapp.py", "/public/%2e%2e%2fapp.py",
        "/public/images/..%2f..%2fapp.py", "/public/images/%2e%2e/%2e%2e/app.py",
        "/public/..%5capp.py", "/public/..\\app.py", "/public/%252e%252e/app.py",
        "/public/images/../../docs.py", "/public//etc/passwd", "/public/%2fetc/passwd",
        "/public/images/api-key.png%00.txt", "/public/.hidden.png", "/public/images/",
        "/public/", "/public/images/missing.png", "/public/../static/images/api-key.png/..",
        "/public/images/api-key.png/", "/public/templates/docs.html",
    ],
)  # fmt: skip
async def test_public_refuses_everything_outside_proxy_static(proxy_url, target):
    status, _, body = await _raw_get(proxy_url, target)
    assert status == 404, (target, status)
    assert b"import" not in body and b"<html" not in body  # no source, no template


def test_resolve_stays_inside_its_root(tmp_path: Path):
    root = (tmp_path / "static").resolve()
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.png").write_bytes(b"\x89PNG")
    (tmp_path / "secret.png").write_bytes(b"secret")
    (root / "images" / "link.png").symlink_to(tmp_path / "secret.png")
    (root / "images" / "notes.py").write_text("x = 1")
    assert resolve("images/a.png", root) == root / "images" / "a.png"
    for bad in ("images/link.png", "../secret.png", "images/notes.py", "images", "",
                "images//a.png", "images/./a.png", "./images/a.png"):  # fmt: skip
        assert resolve(bad, root) is None, bad


# --- the phone layout of /docs/pricing ----------------------------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HAVE_CHROMIUM = Path(CHROMIUM).exists()


async def test_pricing_on_a_phone_never_breaks_a_model_name(proxy_url):
    async_api = pytest.importorskip("playwright.async_api", reason="pip install playwright")
    if not HAVE_CHROMIUM:
        pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    async with async_api.async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = await browser.new_page(viewport={"width": 390, "height": 844})
            await page.goto(f"{proxy_url}/docs/pricing")
            broken = await page.eval_on_selector_all(
                "span.model",
                "els => els.filter(e => e.getClientRects().length !== 1).map(e => e.textContent)",
            )
            count = await page.eval_on_selector_all("span.model", "els => els.length")
            width = await page.evaluate("document.documentElement.scrollWidth")
            sonnet = await page.eval_on_selector(
                "#models span.model", "e => e.getBoundingClientRect().width"
            )
            await page.goto(f"{proxy_url}/docs")
            docs_width = await page.evaluate("document.documentElement.scrollWidth")
        finally:
            await browser.close()
    assert count > 50 and broken == []  # each name on one line
    assert width <= 390 and docs_width <= 390  # nothing scrolls sideways
    assert sonnet > 0
