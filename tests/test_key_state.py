"""Provider-key state changes only on the provider's word about the key
(contract section 10), and hop-by-hop headers stay on their hop.

Through the in-process proxy and worker, with the simulator as upstream. Each
test runs with a pool of its own keys for the provider (the session's keys are
disabled meanwhile, and restored after), so it knows every key a request could
have touched; the simulator's recorded requests show which keys were tried
and which were probed (`GET .../models`).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass

import aiohttp
import anthropic
import openai
import orjson
import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from proxy.forwarded_headers import upstream_headers
from proxy.key_health import KeyHealth, Probe, Verdict, classify, rules_for
from proxy.keypool import UpstreamKey
from proxy.upstream import ConnectFailed, parse_target
from shared import invalidation, provider_state
from shared.keys import SecretBox, visible_prefix
from tests.clients import anthropic_client, openai_client
from tests.conftest import SECRET_KEY, wait_holds_released

pytestmark = pytest.mark.usefixtures("worker")

HELLO = [{"role": "user", "content": "Hi"}]
MODEL = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}
PREFIX = {"openai": "sk-", "anthropic": "sk-ant-"}


@dataclass
class Pool:
    provider: str
    ids: dict[str, int]  # secret -> provider key id

    def secret_of(self, headers: dict[str, str]) -> str | None:
        if self.provider == "anthropic":
            return headers.get("x-api-key")
        scheme, _, token = headers.get("authorization", "").partition(" ")
        return token if scheme == "Bearer" else None


@contextlib.asynccontextmanager
async def only_keys(pg, redis, provider: str, *kinds: str):
    """The provider's pool is exactly one key per `kinds` entry (a simulator
    marker: `good`, `revoked`, `forbidden`, ...) for the test's duration. Check
    the billing inside the block: the keys are disabled at its end."""
    box = SecretBox(SECRET_KEY)
    saved = [
        r["id"]
        for r in await pg.fetch(
            "SELECT id FROM provider_keys WHERE provider = $1 AND status = 'active'", provider
        )
    ]
    await pg.execute("UPDATE provider_keys SET status = 'disabled' WHERE id = ANY($1)", saved)
    ids = {}
    for n, kind in enumerate(kinds):
        secret = f"{PREFIX[provider]}{kind}-{n}-{secrets.token_hex(6)}"
        ids[secret] = await pg.fetchval(
            "INSERT INTO provider_keys (provider, name, prefix, secret_enc)"
            " VALUES ($1, 'key-state', $2, $3) RETURNING id",
            provider,
            visible_prefix(secret),
            box.encrypt(secret),
        )
    await invalidation.publish(redis, invalidation.PROVIDERS_MESSAGE)
    await asyncio.sleep(0.3)
    try:
        yield Pool(provider, ids)
    finally:
        # disabled, not deleted: a usage record still being settled may refer to one
        await pg.execute(
            "UPDATE provider_keys SET status = 'disabled', status_reason = 'test over'"
            " WHERE id = ANY($1)",
            list(ids.values()),
        )
        for key_id in ids.values():
            await redis.delete(f"mw:cooling:{key_id}")
        await pg.execute("UPDATE provider_keys SET status = 'active' WHERE id = ANY($1)", saved)
        await invalidation.publish(redis, invalidation.PROVIDERS_MESSAGE)
        await asyncio.sleep(0.3)


def tagged_client(proxy_url: str, key: str, provider: str, tag: str, **headers: str):
    headers["x-test-case"] = tag
    if provider == "anthropic":
        return anthropic_client(proxy_url, key, **headers)
    return openai_client(proxy_url, key, **headers)


async def ask(client, provider: str):
    if provider == "anthropic":
        return await client.messages.with_raw_response.create(
            model=MODEL[provider], max_tokens=5, messages=HELLO
        )
    return await client.chat.completions.with_raw_response.create(
        model=MODEL[provider], messages=HELLO
    )


def attempts(upstream, pool: Pool, tag: str) -> list[str]:
    """The secrets that the requests tagged `tag` were sent upstream with, in order."""
    return [
        pool.secret_of(r["headers"])
        for r in upstream.recorded()
        if r["method"] == "POST" and r["headers"].get("x-test-case") == tag
    ]


def probes(upstream, pool: Pool) -> list[str]:
    """The pool's keys that the proxy probed (models list), in order."""
    found = []
    for r in upstream.recorded():
        secret = pool.secret_of(r["headers"])
        if r["method"] == "GET" and r["path"].endswith("/models") and secret in pool.ids:
            found.append(secret)
    return found


async def states(pg, redis, pool: Pool) -> dict[str, str]:
    """secret -> active / cooling / disabled, as the CLI and the dashboard see it."""
    cooling = await provider_state.cooling_key_ids(redis)
    rows = await pg.fetch(
        "SELECT id, status FROM provider_keys WHERE id = ANY($1)", list(pool.ids.values())
    )
    stored = {r["id"]: r["status"] for r in rows}
    return {
        secret: provider_state.key_status(stored[key_id], key_id, cooling)
        for secret, key_id in pool.ids.items()
    }


def error_type(provider: str, exc: Exception) -> str | None:
    body = exc.body  # type: ignore[attr-defined]
    return body.get("type") if provider == "openai" else body["error"]["type"]


def error_code(exc: Exception) -> str | None:
    return exc.body.get("code")  # type: ignore[attr-defined]


async def assert_unbilled(pg, redis, user_id: int) -> None:
    await wait_holds_released(redis, user_id)
    await asyncio.sleep(0.2)
    assert await pg.fetchval("SELECT count(*) FROM usage_records WHERE user_id = $1", user_id) == 0


async def assert_unbilled_but(pg, redis, user_id: int, served: int) -> None:
    """Only the `served` successful requests were billed; the errors were not."""
    await wait_holds_released(redis, user_id)
    for _ in range(100):
        count = await pg.fetchval("SELECT count(*) FROM usage_records WHERE user_id = $1", user_id)
        if count >= served:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    assert (
        await pg.fetchval("SELECT count(*) FROM usage_records WHERE user_id = $1", user_id)
        == served
    )


# --- errors of the request itself: every key stays active -------------------------------


@pytest.mark.parametrize(
    ("provider", "error", "probed", "expected_type"),
    [
        ("openai", "permission", True, "invalid_request_error"),  # probe says the key is fine
        ("openai", "region", False, "request_forbidden"),  # about where we call from
        ("anthropic", "permission", True, "permission_error"),
        ("anthropic", "region", False, "forbidden"),
    ],
)
async def test_request_level_403_leaves_every_key_active(
    proxy_url, accounts, pg, redis, upstream, provider, error, probed, expected_type
):
    acct = await accounts.create("1")
    tag = secrets.token_hex(6)
    async with only_keys(pg, redis, provider, "good", "good", "good") as pool:
        client = tagged_client(proxy_url, acct.key, provider, tag, **{"x-sim-error": error})
        for _ in range(3):  # round robin: every key gets one
            with pytest.raises(
                (openai.PermissionDeniedError, anthropic.PermissionDeniedError)
            ) as e:
                await ask(client, provider)
            assert e.value.status_code == 403
            assert error_type(provider, e.value) == expected_type  # the upstream's own body
        assert set((await states(pg, redis, pool)).values()) == {"active"}
        tried = attempts(upstream, pool, tag)
        assert len(tried) == 3 and set(tried) == set(pool.ids)  # one key per request, no retry
        assert len(probes(upstream, pool)) == (3 if probed else 0)
        # still serving
        await ask(tagged_client(proxy_url, acct.key, provider, tag + "-ok"), provider)
        await assert_unbilled_but(pg, redis, acct.user_id, 1)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        ("request_too_large", "rate_limit_exceeded"),  # the code of a rate limit, yet the request's
        ("insufficient_quota", "insufficient_quota"),  # the account's billing, not a rate
    ],
)
async def test_request_level_429_cools_no_key(
    proxy_url, accounts, pg, redis, upstream, error, code
):
    acct = await accounts.create("1")
    tag = secrets.token_hex(6)
    async with only_keys(pg, redis, "openai", "good", "good", "good") as pool:
        client = tagged_client(proxy_url, acct.key, "openai", tag, **{"x-sim-error": error})
        for _ in range(3):
            with pytest.raises(openai.RateLimitError) as e:
                await ask(client, "openai")
            assert error_code(e.value) == code
        assert set((await states(pg, redis, pool)).values()) == {"active"}
        assert len(attempts(upstream, pool, tag)) == 3  # no retry on another key
        assert probes(upstream, pool) == []
        await assert_unbilled(pg, redis, acct.user_id)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_401_for_a_key_its_probe_accepts_is_passed_through(
    proxy_url, accounts, pg, redis, upstream, provider
):
    acct = await accounts.create("1")
    tag = secrets.token_hex(6)
    async with only_keys(pg, redis, provider, "good", "good", "good") as pool:
        client = tagged_client(
            proxy_url, acct.key, provider, tag, **{"x-sim-error": "invalid_api_key"}
        )
        for _ in range(6):
            with pytest.raises((openai.AuthenticationError, anthropic.AuthenticationError)) as e:
                await ask(client, provider)
            expected = "invalid_request_error" if provider == "openai" else "authentication_error"
            assert error_type(provider, e.value) == expected
        assert set((await states(pg, redis, pool)).values()) == {"active"}
        assert len(attempts(upstream, pool, tag)) == 6
        # each key probed once: a success is remembered for a while
        assert sorted(probes(upstream, pool)) == sorted(pool.ids)
        await assert_unbilled(pg, redis, acct.user_id)


# --- the key itself is bad: exactly one key changes, at most two are tried -------------


@pytest.mark.parametrize(
    ("provider", "bad"),
    [
        ("openai", "revoked"),  # 401 everywhere, the models list included
        ("anthropic", "revoked"),
        ("openai", "forbidden"),  # 403 everywhere
        ("anthropic", "forbidden"),
    ],
)
async def test_a_bad_key_is_disabled_and_another_serves_the_request(
    proxy_url, accounts, pg, redis, upstream, provider, bad
):
    acct = await accounts.create("1")
    tag = secrets.token_hex(6)
    async with only_keys(pg, redis, provider, bad, "good", "good") as pool:
        bad_secret = next(s for s in pool.ids if bad in s)
        client = tagged_client(proxy_url, acct.key, provider, tag)
        served = 0
        for _ in range(6):  # the client never sees the bad key's answer
            raw = await ask(client, provider)
            assert raw.status_code == 200
            served += 1
        state = await states(pg, redis, pool)
        assert state[bad_secret] == "disabled"
        assert sorted(state.values()) == ["active", "active", "disabled"]
        assert probes(upstream, pool) == [bad_secret]
        tried = attempts(upstream, pool, tag)
        assert tried.count(bad_secret) == 1  # dropped from the pool at once
        at = tried.index(bad_secret)
        assert tried[at + 1] != bad_secret and len(tried) == served + 1  # one retry, served
        reason = await pg.fetchval(
            "SELECT status_reason FROM provider_keys WHERE id = $1", pool.ids[bad_secret]
        )
        assert "models list" in reason
        await assert_unbilled_but(pg, redis, acct.user_id, served)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_third_key_is_never_tried(proxy_url, accounts, pg, redis, upstream, provider):
    acct = await accounts.create("1")
    tag = secrets.token_hex(6)
    async with only_keys(pg, redis, provider, "revoked", "revoked", "revoked") as pool:
        client = tagged_client(proxy_url, acct.key, provider, tag)
        with pytest.raises((openai.AuthenticationError, anthropic.AuthenticationError)):
            await ask(client, provider)  # the second key's own 401, not confirmed by this request
        tried = attempts(upstream, pool, tag)
        assert len(tried) == 2 and len(set(tried)) == 2
        assert probes(upstream, pool) == tried[:1]
        state = await states(pg, redis, pool)
        assert state[tried[0]] == "disabled"
        assert sorted(state.values()) == ["active", "active", "disabled"]  # one key per request
        await assert_unbilled(pg, redis, acct.user_id)


async def test_the_last_key_disabled_is_503(proxy_url, accounts, pg, redis, upstream):
    acct = await accounts.create("1")
    async with only_keys(pg, redis, "anthropic", "revoked") as pool:
        client = tagged_client(proxy_url, acct.key, "anthropic", secrets.token_hex(6))
        with pytest.raises(anthropic.InternalServerError) as e:
            await ask(client, "anthropic")
        assert e.value.status_code == 503 and "No active API keys" in e.value.message
        assert probes(upstream, pool) == list(pool.ids)  # disabled on the probe's word
        assert set((await states(pg, redis, pool)).values()) == {"disabled"}
        await assert_unbilled(pg, redis, acct.user_id)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_rate_limit_cools_exactly_one_key(
    proxy_url, accounts, pg, redis, upstream, provider
):
    acct = await accounts.create("1")
    tag = secrets.token_hex(6)
    async with only_keys(pg, redis, provider, "good", "good", "good") as pool:
        # every key answers this request with a rate limit
        client = tagged_client(proxy_url, acct.key, provider, tag, **{"x-sim-error": "rate_limit"})
        with pytest.raises((openai.RateLimitError, anthropic.RateLimitError)) as e:
            await ask(client, provider)
        assert e.value.response.headers["retry-after"] == "1"
        tried = attempts(upstream, pool, tag)
        assert len(tried) == 2 and len(set(tried)) == 2  # retried on one other key only
        state = await states(pg, redis, pool)
        assert state[tried[0]] == "cooling"
        assert sorted(state.values()) == ["active", "active", "cooling"]
        assert probes(upstream, pool) == []
        # the next request goes to the keys that are not cooling, and is served
        other = tagged_client(proxy_url, acct.key, provider, tag + "-ok")
        await ask(other, provider)
        assert attempts(upstream, pool, tag + "-ok")[0] != tried[0]
        await assert_unbilled_but(pg, redis, acct.user_id, 1)


# --- hop-by-hop headers ----------------------------------------------------------------


async def test_hop_by_hop_headers_are_not_forwarded(proxy_url, accounts, upstream):
    acct = await accounts.create("1")
    tag = secrets.token_hex(6)
    headers = {
        "Authorization": f"Bearer {acct.key}",
        "Connection": "keep-alive, X-Hop-One,x-HOP-two",
        "X-Hop-One": "1",
        "X-Hop-Two": "2",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Proxy-Authorization": "Basic c2VjcmV0",
        "Proxy-Connection": "keep-alive",
        "X-Kept": "yes",
        "x-test-case": tag,
    }
    body = {"model": "gpt-4o-mini", "messages": HELLO}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{proxy_url}/v1/openai/chat/completions", json=body, headers=headers) as resp,
    ):
        assert resp.status == 200, await resp.text()
    [sent] = [r for r in upstream.recorded() if r["headers"].get("x-test-case") == tag]
    forwarded = sent["headers"]
    for name in (
        "x-hop-one",
        "x-hop-two",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
    ):
        assert name not in forwarded, name
    assert forwarded["x-kept"] == "yes"
    assert forwarded["authorization"].startswith("Bearer sk-")  # the provider key, not ours
    assert acct.key not in str(forwarded)


def test_upstream_headers_drop_hop_by_hop_and_connection_named():
    key = UpstreamKey(1, "anthropic", "sk-ant-secret", "sk-ant-se")
    received = CIMultiDict(
        [
            ("Host", "proxy"),
            ("Connection", "Upgrade, X-One"),
            ("connection", " x-two ,, "),
            ("X-One", "1"),
            ("X-Two", "2"),
            ("Upgrade", "websocket"),
            ("Trailer", "x-checksum"),
            ("Transfer-Encoding", "chunked"),
            ("Content-Encoding", "gzip"),
            ("HTTP2-Settings", "AAMAAABkAAQAAP__"),
            ("x-api-key", "mw-proxy-key"),
            ("anthropic-version", "2023-06-01"),
            ("Content-Type", "application/json; charset=utf-8"),
        ]
    )
    request = make_mocked_request("POST", "/v1/anthropic/v1/messages", headers=received)
    sent = upstream_headers(request, key)
    assert sent == [
        ("anthropic-version", "2023-06-01"),
        ("Content-Type", "application/json"),
        ("x-api-key", "sk-ant-secret"),
    ]
    plain = make_mocked_request("POST", "/", headers=CIMultiDict([("X-One", "1")]))
    openai_key = UpstreamKey(2, "openai", "sk-secret", "sk-secr")
    assert upstream_headers(plain, openai_key) == [
        ("X-One", "1"),
        ("Content-Type", "application/json"),
        ("Authorization", "Bearer sk-secret"),
    ]


# --- classification and the probe, unit by unit -----------------------------------------


def _openai(type_: str, code: str | None, message: str = "m") -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}})


def _anthropic(type_: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": type_, "message": "m"}})


@pytest.mark.parametrize(
    ("provider", "status", "body", "verdict"),
    [
        # 401: about the key, whatever the body
        ("openai", 401, _openai("invalid_request_error", "invalid_api_key"), Verdict.SUSPECT),
        ("anthropic", 401, b"<html>Unauthorized</html>", Verdict.SUSPECT),
        # 403
        ("openai", 403, _openai("invalid_request_error", None), Verdict.SUSPECT),
        (
            "openai",
            403,
            _openai("request_forbidden", "unsupported_country_region_territory"),
            Verdict.PASS,
        ),
        ("anthropic", 403, _anthropic("permission_error"), Verdict.SUSPECT),
        ("anthropic", 403, _anthropic("forbidden"), Verdict.PASS),
        ("openai", 403, b"<html>Access denied</html>", Verdict.PASS),  # a CDN, not OpenAI
        ("anthropic", 403, _openai("permission_error", None), Verdict.PASS),  # not its format
        # 429
        ("openai", 429, _openai("requests", "rate_limit_exceeded"), Verdict.RATE_LIMITED),
        ("openai", 429, _openai("tokens", "rate_limit_exceeded"), Verdict.RATE_LIMITED),
        (
            "openai",
            429,
            _openai("tokens", "rate_limit_exceeded", "Request too large for gpt-4o in org"),
            Verdict.PASS,
        ),
        ("openai", 429, _openai("insufficient_quota", "insufficient_quota"), Verdict.QUOTA),
        ("openai", 429, b"", Verdict.PASS),
        ("anthropic", 429, _anthropic("rate_limit_error"), Verdict.RATE_LIMITED),
        ("anthropic", 429, b'{"type":"error","error":"odd"}', Verdict.PASS),
        # others never speak about the key
        ("openai", 400, _openai("invalid_request_error", None), Verdict.PASS),
        ("anthropic", 404, _anthropic("not_found_error"), Verdict.PASS),
    ],
)
def test_classify(provider, status, body, verdict):
    assert classify(rules_for(provider), status, body) is verdict


def test_an_unknown_kind_authenticates_with_bearer_and_cools_on_nothing():
    rules = rules_for("some-future-kind")
    assert rules.auth("s") == ("Authorization", "Bearer s")
    assert classify(rules, 401, b"") is Verdict.SUSPECT
    assert classify(rules, 429, _openai("requests", "rate_limit_exceeded")) is Verdict.PASS


class _Answer:
    def __init__(self, status: int) -> None:
        self.status = status

    async def read(self) -> bytes:
        return b"{}"

    def release(self) -> None:
        pass


class _Upstream:
    """Answers every GET with `status` after `delay`, counting them."""

    def __init__(self, status: int, delay: float = 0.0) -> None:
        self.status = status
        self.delay = delay
        self.calls: list[list[tuple[str, str]]] = []

    async def get(self, target, headers):
        self.calls.append(headers)
        await asyncio.sleep(self.delay)
        if self.status == 0:
            raise ConnectFailed("refused")
        return _Answer(self.status)


@pytest.mark.parametrize(
    ("status", "result"),
    [
        (200, Probe.OK),
        (401, Probe.REJECTED),
        (403, Probe.REJECTED),
        (429, Probe.UNKNOWN),
        (500, Probe.UNKNOWN),
        (0, Probe.UNKNOWN),
    ],
)
async def test_probe_results(status, result):
    upstream = _Upstream(status)
    target = parse_target("http://127.0.0.1:1/v1/models")
    health = KeyHealth()
    assert await health.probe(upstream, target, rules_for("anthropic"), 7, "sk-ant-k") is result
    assert upstream.calls == [
        [
            ("x-api-key", "sk-ant-k"),
            ("anthropic-version", "2023-06-01"),
            ("Accept", "application/json"),
        ]
    ]


async def test_one_probe_per_key_at_a_time_and_a_success_is_remembered():
    upstream = _Upstream(200, delay=0.05)
    target = parse_target("http://127.0.0.1:1/v1/models")
    health = KeyHealth()
    rules = rules_for("openai")
    results = await asyncio.gather(
        *(health.probe(upstream, target, rules, 1, "k") for _ in range(5))
    )
    assert results == [Probe.OK] * 5 and len(upstream.calls) == 1
    assert await health.probe(upstream, target, rules, 1, "k") is Probe.OK
    assert len(upstream.calls) == 1  # remembered
    await health.probe(upstream, target, rules, 2, "k2")
    assert len(upstream.calls) == 2  # another key is probed on its own
    health.forget(1)
    upstream.status = 401
    assert await health.probe(upstream, target, rules, 1, "k") is Probe.REJECTED
    assert await health.probe(upstream, target, rules, 1, "k") is Probe.REJECTED
    assert len(upstream.calls) == 4  # a refusal is not remembered
