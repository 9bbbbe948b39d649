"""Providers as configuration (contract section 5): `meterway provider add|remove|list`
run as real commands, served by two running proxies within 5 s and gone within 5 s
of removal, the secret in the configured header and never the proxy key."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import aiohttp
import anthropic
import openai
import pytest

from proxy.app import make_runner
from shared import provider_config
from shared.config import Settings
from tests.clients import anthropic_client, openai_client
from tests.conftest import wait_settled
from tests.expected import expected_cost
from tests.test_cli import cli, cli_env  # noqa: F401  (fixtures)
from tests.util import free_port

pytestmark = pytest.mark.usefixtures("worker")

MESSAGES = [{"role": "user", "content": "Say hello"}]
BOUND_SECONDS = 5.0


@pytest.fixture
async def second_proxy(settings: Settings, provider_keys):
    other = settings.model_copy(update={"proxy_port": free_port()})
    runner = make_runner(other)
    await runner.setup()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", other.proxy_port).start()
    yield f"http://127.0.0.1:{other.proxy_port}"
    await runner.cleanup()


async def served_within(url: str, key: str, model: str, seconds: float) -> float:
    """Seconds until `url` serves `model` (a chat completion), failing past `seconds`."""
    started = time.monotonic()
    client = openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0)
    try:
        while True:
            try:
                await client.chat.completions.create(model=model, messages=MESSAGES)
                return time.monotonic() - started
            except (openai.NotFoundError, openai.APIStatusError) as exc:
                if time.monotonic() - started > seconds:
                    raise AssertionError(f"{url} not serving {model} after {seconds} s") from exc
            await asyncio.sleep(0.1)
    finally:
        await client.close()


async def gone_within(url: str, key: str, seconds: float) -> None:
    started = time.monotonic()
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.post(
                f"{url}/chat/completions",
                json={"model": "compat-chat", "messages": MESSAGES},
                headers={"Authorization": f"Bearer {key}"},
            ) as resp:
                if resp.status == 404:
                    body = await resp.json()
                    assert body["error"]["type"] == "invalid_request_error"
                    return
            assert time.monotonic() - started <= seconds, f"{url} still serves after removal"
            await asyncio.sleep(0.1)


async def test_added_provider_is_served_by_every_proxy_and_removed_again(
    cli,  # noqa: F811
    proxy_url,
    second_proxy,
    accounts,
    pg,
    upstream,
    catalog_path,
):
    acct = await accounts.create("5")
    base = f"{upstream.base}/openai/v1"
    await cli.ok(
        "provider", "add", "compat", "--kind", "openai", "--base-url", base,
        "--auth-header", "api-key", "--header", "X-Fixed: one",
        "--header", "X-Client:  from-provider ",
    )  # fmt: skip
    await cli.ok("provider-key", "add", "compat", "-", stdin=b"sk-compat-secret-0001\n")
    for url in (proxy_url, second_proxy):
        await served_within(f"{url}/v1/compat", acct.key, "compat-chat", BOUND_SECONDS)

    upstream.clear()
    client = openai_client(second_proxy, acct.key, **{"X-Client": "from-client"})
    client.base_url = f"{second_proxy}/v1/compat"
    raw = await client.chat.completions.with_raw_response.create(
        model="compat-chat", messages=MESSAGES
    )
    completion = raw.parse()
    sent = upstream.recorded()[-1]
    assert sent["path"] == "/openai/v1/chat/completions"
    headers = {k.lower(): v for k, v in sent["headers"].items()}
    assert headers["api-key"] == "sk-compat-secret-0001"  # the bare secret, as Azure takes it
    assert "authorization" not in headers
    assert headers["x-fixed"] == "one"
    assert headers["x-client"] == "from-provider"  # a fixed header replaces the client's
    assert acct.key not in str(sent["headers"])

    request_id = raw.headers["x-request-id"]
    await wait_settled(pg, [request_id])
    record = await pg.fetchrow("SELECT * FROM usage_records WHERE request_id = $1", request_id)
    assert record["provider"] == "compat"  # the provider's name, not its kind
    usage = completion.usage
    cost = expected_cost(
        catalog_path, "compat-chat", uncached=usage.prompt_tokens, output=usage.completion_tokens
    )
    assert record["cost_usd"] == cost > 0

    listed = {p["provider"]: p for p in (await cli.ok("provider", "list", "--json")).json()}
    assert listed["compat"]["kind"] == "openai"
    assert listed["compat"]["base_url"] == base
    assert listed["compat"]["auth_header"] == "api-key"
    assert listed["compat"]["headers"] == ["X-Fixed", "X-Client"]  # names, never values
    assert listed["gemini"]["kind"] == "gemini" and listed["gemini"]["builtin"] is True

    # pause works for an added provider as for a built-in one
    await cli.ok("provider", "pause", "compat")
    deadline = time.monotonic() + BOUND_SECONDS
    while True:
        try:
            await client.chat.completions.create(model="compat-chat", messages=MESSAGES)
        except openai.RateLimitError as exc:
            assert exc.body["code"] == "provider_paused"
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    await cli.ok("provider", "resume", "compat")
    await served_within(f"{proxy_url}/v1/compat", acct.key, "compat-chat", BOUND_SECONDS)

    await cli.ok("provider", "remove", "compat")
    upstream.clear()
    for url in (proxy_url, second_proxy):
        await gone_within(f"{url}/v1/compat", acct.key, BOUND_SECONDS)
    assert all(r["path"] != "/openai/v1/chat/completions" for r in upstream.recorded())
    # keys and records stay
    assert await pg.fetchval("SELECT count(*) FROM provider_keys WHERE provider = 'compat'") == 1
    assert await pg.fetchval("SELECT count(*) FROM usage_records WHERE provider = 'compat'") >= 1
    names = [p["provider"] for p in (await cli.ok("provider", "list", "--json")).json()]
    assert "compat" not in names
    balance = await accounts.balance(acct.user_id)
    assert balance < Decimal("5")


async def test_added_anthropic_kind_uses_x_api_key_and_drops_v1(
    cli,  # noqa: F811
    proxy_url,
    accounts,
    pg,
    upstream,
    catalog_path,
):
    acct = await accounts.create("5")
    await cli.ok(
        "provider", "add", "compat-anthropic", "--kind", "anthropic",
        "--base-url", f"{upstream.base}/anthropic/v1/",
    )  # fmt: skip
    await cli.ok("provider-key", "add", "compat-anthropic", "-", stdin=b"sk-ant-compat-0001")
    client = anthropic_client(proxy_url, acct.key)
    client.base_url = f"{proxy_url}/v1/compat-anthropic"
    deadline = time.monotonic() + BOUND_SECONDS
    while True:
        try:
            raw = await client.messages.with_raw_response.create(
                model="compat-claude", max_tokens=20, messages=MESSAGES
            )
            break
        except anthropic.APIStatusError:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    message = await raw.parse()
    sent = upstream.recorded()[-1]
    assert sent["path"] == "/anthropic/v1/messages"  # the SDK's v1/ dropped
    assert sent["headers"]["x-api-key"] == "sk-ant-compat-0001"
    await wait_settled(pg, [raw.headers["x-request-id"]])
    record = await pg.fetchrow(
        "SELECT * FROM usage_records WHERE request_id = $1", raw.headers["x-request-id"]
    )
    cost = expected_cost(
        catalog_path,
        "compat-claude",
        uncached=message.usage.input_tokens,
        output=message.usage.output_tokens,
    )
    assert record["provider"] == "compat-anthropic" and record["cost_usd"] == cost
    # a model of another provider is not served under this one's path
    with pytest.raises(anthropic.BadRequestError):
        await client.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=MESSAGES)
    await cli.ok("provider", "remove", "compat-anthropic")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("Bad_Name", "--kind", "openai", "--base-url", "http://x/v1"), "invalid provider name"),
        (("account", "--kind", "openai", "--base-url", "http://x/v1"), "invalid provider name"),
        (("x", "--kind", "openai", "--base-url", "http://x/v1"), "invalid provider name"),
        (("openai", "--kind", "openai", "--base-url", "http://x/v1"), "built in"),
        (("newco", "--kind", "openai", "--base-url", "ftp://x/v1"), "invalid base URL"),
        (("newco", "--kind", "openai", "--base-url", "http://x/v1?key=s"), "query"),
        (
            (
                "newco",
                "--kind",
                "openai",
                "--base-url",
                "http://x/v1",
                "--header",
                "Authorization: x",
            ),
            "auth header",
        ),
        (
            (
                "newco",
                "--kind",
                "gemini",
                "--base-url",
                "http://x",
                "--header",
                "X-Goog-Api-Key: s",
            ),
            "auth header",
        ),
        (
            ("newco", "--kind", "openai", "--base-url", "http://x/v1", "--header", "Connection: x"),
            "hop-by-hop",
        ),
        (("newco", "--kind", "openai", "--base-url", "http://x/v1", "--header", "NoColon"), "Name"),
    ],
)
async def test_provider_add_refuses_what_cannot_be_configured(cli, args, says):  # noqa: F811
    result = await cli.fails("provider", "add", *args)
    assert says in result.err


async def test_adding_twice_and_removing_built_ins_are_errors(cli):  # noqa: F811
    await cli.ok("provider", "add", "twice", "--kind", "openai", "--base-url", "http://h:1/v1")
    again = await cli.fails(
        "provider", "add", "twice", "--kind", "openai", "--base-url", "http://h:1/v1"
    )
    assert "already exists" in again.err
    await cli.ok("provider", "remove", "twice")
    assert "no provider" in (await cli.fails("provider", "remove", "twice")).err
    assert "built in" in (await cli.fails("provider", "remove", "gemini")).err
    # removed, it may be added again
    await cli.ok("provider", "add", "twice", "--kind", "gemini", "--base-url", "http://h:2")
    await cli.ok("provider", "remove", "twice")


def test_base_url_override_by_environment(settings):
    env = {"UPSTREAM_MY_CO_BASE_URL": "http://override:9/v1/"}
    assert provider_config.override_var("my-co") == "UPSTREAM_MY_CO_BASE_URL"
    assert provider_config.effective_base_url("my-co", "http://stored/v1", settings, env) == (
        "http://override:9/v1"
    )
    assert provider_config.effective_base_url("my-co", "http://stored/v1/", settings, {}) == (
        "http://stored/v1"
    )
    assert provider_config.effective_base_url("gemini", None, settings, {}) == (
        settings.upstream_gemini_base_url.rstrip("/")
    )


def test_auth_header_rule():
    spec = provider_config.ProviderSpec("a", "openai", "http://h/v1", "Authorization")
    assert spec.auth("s") == ("Authorization", "Bearer s")
    spec = provider_config.ProviderSpec("a", "openai", "http://h/v1", "api-key", (("X", "1"),))
    assert spec.auth("s") == ("api-key", "s")
    assert spec.replaced == frozenset({"api-key", "x"})


async def test_refusals_before_routing_take_an_added_providers_format(
    cli,  # noqa: F811
    proxy_url,
    accounts,
    upstream,
):
    """A request refused before it is routed (here: headers over 64 KiB) on an
    added gemini-kind provider's path is answered in Google's format, as on the
    built-in `gemini` path; on an unknown provider's path, in OpenAI's."""
    acct = await accounts.create("1")
    await cli.ok(
        "provider", "add", "compat-gemini", "--kind", "gemini", "--base-url", f"{upstream.base}/gemini"
    )  # fmt: skip
    listing = f"{proxy_url}/v1/compat-gemini/v1beta/models"
    deadline = time.monotonic() + BOUND_SECONDS
    async with aiohttp.ClientSession() as http:
        while True:  # the proxy's pool has loaded the provider once it lists its models
            async with http.get(listing, headers={"x-goog-api-key": acct.key}) as resp:
                if resp.status == 200:
                    break
            assert time.monotonic() < deadline, "the added provider was not loaded in time"
            await asyncio.sleep(0.1)
        pad = {f"X-Pad-{i}": "a" * 8000 for i in range(10)}  # 80 KB of headers
        for provider, google in (("compat-gemini", True), ("gemini", True), ("nobody", False)):
            path = f"{proxy_url}/v1/{provider}/v1beta/models/gemini-2.5-flash:generateContent"
            async with http.post(path, data=b"{}", headers=pad) as resp:
                assert resp.status == 431, provider
                error = (await resp.json(content_type=None))["error"]
                assert ("status" in error and error["code"] == 431) is google, (provider, error)
                assert resp.headers["x-request-id"].startswith("req_")
    await cli.ok("provider", "remove", "compat-gemini")


@pytest.mark.parametrize(
    ("auth_header", "headers", "served"),
    [
        ("x-key", [["X-Fixed", "1"]], True),
        ("x-key", [["X:Evil", "1"]], False),  # a colon in a name
        ("x-key", [["X-Fixed", "1\r\nEvil: 2"]], False),  # a line break in a value
        ("x key", [], False),  # not an HTTP header name
    ],
)
def test_a_provider_row_edited_into_bad_headers_is_not_served(
    settings: Settings, auth_header, headers, served
):
    row = {
        "name": "edited", "kind": "openai", "base_url": "http://h:1/v1",
        "auth_header": auth_header, "headers": headers, "builtin": False,
    }  # fmt: skip
    assert (provider_config._spec(row, settings) is not None) is served
