"""`meterway key create|set|list` with the key controls of CONTRACT.md section 6
(budget and period, models, expiry, rpm/tpm), run as real subprocesses."""

# ruff: noqa: F811  (the fixtures imported from test_cli are parameters here)

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import aiohttp
import asyncpg
from redis.asyncio import Redis

from shared.balance_view import BalanceView
from shared.db import users
from shared.keys import hash_proxy_key
from shared.periods import period_start
from shared.redis_keys import INVALIDATE_CHANNEL
from tests.conftest import wait_settled
from tests.test_cli import Cli, cli, cli_env, new_email, user_row  # noqa: F401  (fixtures)

JSON_FIELDS = {
    "id", "name", "prefix", "created", "last_used", "revoked", "rpm", "tpm",
    "budget_usd", "budget_period", "spend_period_usd", "models", "expires_at",
}  # fmt: skip


async def _user(cli: Cli) -> str:
    email = new_email()
    await cli.ok("user", "create", email)
    return email


async def _listed(cli: Cli, email: str) -> list[dict]:
    keys = (await cli.ok("key", "list", email, "--json")).json()
    assert isinstance(keys, list)
    for k in keys:
        assert set(k) == JSON_FIELDS, k
    return sorted(keys, key=lambda k: k["id"])


async def _key_row(pg: asyncpg.Pool, key_id: int) -> asyncpg.Record:
    row = await pg.fetchrow("SELECT * FROM api_keys WHERE id = $1", key_id)
    assert row is not None
    return row


def _key_id(out: str) -> int:
    line = next(line for line in out.splitlines() if line.startswith("created key "))
    return int(line.split()[2])


async def test_create_with_controls_and_list_json(cli: Cli, pg: asyncpg.Pool) -> None:
    email = await _user(cli)
    r = await cli.ok(
        "key", "create", email, "--name", "agent", "--rpm", "7", "--tpm", "9000",
        "--budget-usd", "12.5", "--budget-period", "week",
        "--models", "gpt-4o, gpt-4o-mini,gpt-4o", "--expires-at", "2031-06-01T12:00:00+02:00",
    )  # fmt: skip
    secret = r.out.splitlines()[-1]
    assert secret.startswith("mw-") and r.out.count(secret) == 1
    key_id = _key_id(r.out)
    row = await _key_row(pg, key_id)
    assert row["budget_usd"] == Decimal("12.5") and row["budget_period"] == "week"
    assert row["models"] == ["gpt-4o", "gpt-4o-mini"]  # duplicates dropped, order kept
    assert row["expires_at"] == datetime(2031, 6, 1, 10, tzinfo=UTC)
    assert (row["rpm_limit"], row["tpm_limit"]) == (7, 9000)

    # a budget without a period is monthly; a plain key has none of it
    monthly = _key_id((await cli.ok("key", "create", email, "--budget-usd", "3")).out)
    plain = _key_id((await cli.ok("key", "create", email)).out)
    listed = await _listed(cli, email)
    assert [k["id"] for k in listed] == [key_id, monthly, plain]
    first, second, third = listed
    assert first["budget_usd"] == "12.5" and first["budget_period"] == "week"
    assert first["models"] == ["gpt-4o", "gpt-4o-mini"]
    assert first["expires_at"] == "2031-06-01T10:00:00Z"
    assert (first["rpm"], first["tpm"], first["spend_period_usd"]) == (7, 9000, "0")
    assert second["budget_usd"] == "3" and second["budget_period"] == "month"
    assert third == {**third, "budget_usd": None, "budget_period": None, "models": None,
                     "expires_at": None, "rpm": None, "tpm": None, "spend_period_usd": "0",
                     "revoked": False, "last_used": None}  # fmt: skip

    table = (await cli.ok("key", "list", email)).out
    assert (
        "$12.50/week" in table and "gpt-4o,gpt-4o-mini" in table and "2031-06-01T10:00:00Z" in table
    )
    assert "$3.00/month" in table and "never" in table and secret not in table


async def test_create_refuses_bad_controls_with_one_line(cli: Cli, pg: asyncpg.Pool) -> None:
    email = await _user(cli)
    user_id = (await user_row(pg, email))["id"]
    cases = {
        ("--budget-usd", "-1"): "--budget-usd",
        ("--budget-usd", "1e3"): "--budget-usd",
        ("--budget-usd", "none"): "--budget-usd",  # nothing to clear on create
        ("--budget-usd", "1000000000"): "--budget-usd",
        ("--budget-period", "day"): "--budget-period",  # a period without a budget
        ("--models", "gpt-4o,no-such-model,also-not"): "'no-such-model', 'also-not'",
        ("--models", ""): "--models",
        ("--models", "gpt-4o,,gpt-4.1"): "--models",
        ("--models", "all"): "'all'",
        ("--expires-at", "2031-06-01T12:00:00"): "time zone",  # naive
        ("--expires-at", "2031-06-01"): "time zone",
        ("--expires-at", "tomorrow"): "ISO 8601",
        ("--expires-at", "never"): "ISO 8601",
        ("--rpm", "0"): "--rpm",
        ("--tpm", "-5"): "--tpm",
    }
    results = await asyncio.gather(*(cli.fails("key", "create", email, *args) for args in cases))
    for r, needle in zip(results, cases.values(), strict=True):
        assert needle in r.err and r.out == "", r
    assert await pg.fetchval("SELECT count(*) FROM api_keys WHERE user_id = $1", user_id) == 0
    # argparse refuses what is not one of its choices or not an integer (exit 2, usage)
    bad = await asyncio.gather(
        cli("key", "create", email, "--budget-usd", "1", "--budget-period", "year"),
        cli("key", "create", email, "--rpm", "ten"),
    )
    assert all(r.rc == 2 and "usage: meterway" in r.err for r in bad), bad


async def _listen(redis: Redis):
    pubsub = redis.pubsub()
    await pubsub.subscribe(INVALIDATE_CHANNEL)
    await pubsub.get_message(timeout=1.0)  # the subscribe confirmation
    return pubsub


async def _messages(pubsub, wait: float = 1.0) -> list[str]:
    found, deadline = [], asyncio.get_running_loop().time() + wait
    while asyncio.get_running_loop().time() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message:
            found.append(message["data"].decode())
    return found


async def test_set_changes_only_what_is_given_clears_and_invalidates(
    cli: Cli, pg: asyncpg.Pool, redis: Redis
) -> None:
    email = await _user(cli)
    r = await cli.ok("key", "create", email, "--name", "k", "--rpm", "5")
    secret, key_id = r.out.splitlines()[-1], _key_id(r.out)
    message = f"key:{hash_proxy_key(secret).hex()}"

    pubsub = await _listen(redis)
    try:
        r = await cli.ok("key", "set", str(key_id), "--budget-usd", "0.25", "--models", "gpt-4o")
        assert message in await _messages(pubsub)
        assert "budget $0.25 per month" in r.out and "models gpt-4o" in r.out, r
        k = (await _listed(cli, email))[0]
        assert (k["budget_usd"], k["budget_period"], k["models"], k["rpm"]) == (
            "0.25", "month", ["gpt-4o"], 5)  # fmt: skip

        await cli.ok("key", "set", str(key_id), "--budget-period", "day", "--tpm", "100",
                     "--expires-at", "2030-01-01T00:00:00Z")  # fmt: skip
        assert message in await _messages(pubsub)
        k = (await _listed(cli, email))[0]
        assert (k["budget_usd"], k["budget_period"], k["tpm"], k["rpm"]) == ("0.25", "day", 100, 5)
        assert k["expires_at"] == "2030-01-01T00:00:00Z" and k["models"] == ["gpt-4o"]

        # the full key works as well as the id
        await cli.ok("key", "set", secret, "--budget-usd", "1.000000000001")
        assert message in await _messages(pubsub)
        k = (await _listed(cli, email))[0]
        assert k["budget_usd"] == "1.000000000001" and k["budget_period"] == "day"

        # clear every control
        await cli.ok("key", "set", str(key_id), "--budget-usd", "none", "--models", "all",
                     "--expires-at", "never", "--rpm", "none", "--tpm", "NONE")  # fmt: skip
        assert message in await _messages(pubsub)
    finally:
        await pubsub.aclose()
    k = (await _listed(cli, email))[0]
    assert (k["budget_usd"], k["budget_period"], k["models"], k["expires_at"], k["rpm"],
            k["tpm"]) == (None,) * 6  # fmt: skip
    row = await _key_row(pg, key_id)
    assert row["budget_period"] is None and row["models"] is None


async def test_set_refuses_bad_values_and_changes_nothing(cli: Cli, pg: asyncpg.Pool) -> None:
    email = await _user(cli)
    r = await cli.ok("key", "create", email, "--budget-usd", "2", "--models", "gpt-4o")
    key_id = _key_id(r.out)
    plain = _key_id((await cli.ok("key", "create", email)).out)
    before = await _key_row(pg, key_id)
    cases = [
        ((str(key_id),), "nothing to change"),
        ((str(key_id), "--budget-usd", "-0.01"), "--budget-usd"),
        ((str(key_id), "--budget-usd", "abc"), "--budget-usd"),
        ((str(key_id), "--budget-usd", "none", "--budget-period", "day"), "--budget-period"),
        ((str(plain), "--budget-period", "week"), "has none"),
        ((str(key_id), "--models", "gpt-4o,nope-model"), "'nope-model'"),
        ((str(key_id), "--expires-at", "2030-01-01 00:00"), "time zone"),
        ((str(key_id), "--expires-at", "soon"), "ISO 8601"),
        ((str(key_id), "--rpm", "0"), "--rpm"),
        ((str(key_id), "--rpm", "ten"), "--rpm"),
        ((str(key_id), "--tpm", "1.5"), "--tpm"),
        (("999999999", "--rpm", "1"), "no key with id"),
        (("mw-" + secrets.token_hex(16), "--rpm", "1"), "no such key"),
    ]
    results = await asyncio.gather(*(cli.fails("key", "set", *args) for args, _ in cases))
    for r, (_, needle) in zip(results, cases, strict=True):
        assert needle in r.err and r.out == "", r
    assert await _key_row(pg, key_id) == before

    await cli.ok("key", "revoke", str(key_id))
    r = await cli.fails("key", "set", str(key_id), "--rpm", "3")
    assert "revoked" in r.err


async def test_spend_period_is_exact_after_settled_usage(
    cli: Cli, pg: asyncpg.Pool, redis: Redis, proxy_url: str, worker: None
) -> None:
    email = await _user(cli)
    await cli.ok("credits", "add", email, "5")
    r = await cli.ok("key", "create", email, "--budget-usd", "4", "--budget-period", "day")
    secret, key_id = r.out.splitlines()[-1], _key_id(r.out)
    user_id = (await user_row(pg, email))["id"]

    request_ids = []
    async with aiohttp.ClientSession() as http:
        for i in range(3):
            async with http.post(
                f"{proxy_url}/v1/openai/chat/completions",
                headers={"Authorization": f"Bearer {secret}"},
                json={"model": "gpt-4o", "max_tokens": 20,
                      "messages": [{"role": "user", "content": f"hello {i}"}]},
            ) as resp:  # fmt: skip
                assert resp.status == 200, await resp.text()
                request_ids.append(resp.headers["x-request-id"])
    await wait_settled(pg, request_ids)
    # a record from yesterday belongs to yesterday's budget, not today's
    now = datetime.now(UTC)
    request_id = "req_" + secrets.token_hex(8)
    async with pg.acquire() as conn, conn.transaction():  # with its charge: the books reconcile
        await conn.execute(
            "INSERT INTO usage_records (request_id, user_id, api_key_id, provider, model,"
            " endpoint, stream, input_tokens, output_tokens, cache_read_tokens,"
            " cache_write_tokens, cost_usd, created_at) VALUES ($1, $2, $3, 'openai', 'gpt-4o',"
            " 'chat/completions', false, 1, 1, 0, 0, 7.5, $4)",
            request_id, user_id, key_id, period_start("day", now) - timedelta(microseconds=1),
        )  # fmt: skip
        balance, version = await users.change_balance(
            conn, user_id, Decimal("-7.5"), kind="charge", request_id=request_id
        )
    await BalanceView(redis).publish(user_id, balance, version)
    settled = await pg.fetchval(
        "SELECT sum(cost_usd) FROM usage_records WHERE request_id = ANY($1::text[])", request_ids
    )
    assert settled > 0
    k = (await _listed(cli, email))[0]
    assert Decimal(k["spend_period_usd"]) == settled  # exact, to the last digit

    # without a budget the spend is this calendar month's (yesterday included unless it
    # was last month)
    await cli.ok("key", "set", str(key_id), "--budget-usd", "none")
    k = (await _listed(cli, email))[0]
    yesterday_in_month = (now - timedelta(days=1)).month == now.month
    expected = settled + (Decimal("7.5") if yesterday_in_month else 0)
    assert Decimal(k["spend_period_usd"]) == expected and k["budget_period"] is None
    await cli.ok("key", "set", str(key_id), "--budget-usd", "100", "--budget-period", "total")
    k = (await _listed(cli, email))[0]
    assert Decimal(k["spend_period_usd"]) == settled + Decimal("7.5")


async def _until(http: aiohttp.ClientSession, proxy_url: str, secret: str, model: str,
                 status: int, within: float = 5.0) -> dict:  # fmt: skip
    """Send requests until the proxy answers `status` (a `key set` reached it); the body."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        async with http.post(
            f"{proxy_url}/v1/openai/chat/completions",
            headers={"Authorization": f"Bearer {secret}"},
            json={"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
        ) as resp:
            body = await resp.json()
            if resp.status == status:
                return body
        assert asyncio.get_running_loop().time() < deadline, (status, resp.status, body)
        await asyncio.sleep(0.05)


async def test_key_set_reaches_the_running_proxy(
    cli: Cli, pg: asyncpg.Pool, proxy_url: str, worker: None
) -> None:
    """Each control set and cleared with `key set` is in effect on the proxy within 5 s
    (its cached owner dropped by the invalidation message)."""
    email = await _user(cli)
    await cli.ok("credits", "add", email, "5")
    r = await cli.ok("key", "create", email)
    secret, key_id = r.out.splitlines()[-1], _key_id(r.out)
    async with aiohttp.ClientSession() as http:
        await _until(http, proxy_url, secret, "gpt-4o", 200)  # the owner is cached now

        await cli.ok("key", "set", str(key_id), "--models", "gpt-4.1")
        body = await _until(http, proxy_url, secret, "gpt-4o", 403)
        assert body["error"]["code"] == "model_not_allowed", body
        await _until(http, proxy_url, secret, "gpt-4.1", 200, within=0)
        await cli.ok("key", "set", str(key_id), "--models", "all")
        await _until(http, proxy_url, secret, "gpt-4o", 200)

        await cli.ok("key", "set", str(key_id), "--expires-at", "2020-01-01T00:00:00Z")
        body = await _until(http, proxy_url, secret, "gpt-4o", 401)
        assert body["error"]["code"] == "expired_api_key", body
        await cli.ok("key", "set", str(key_id), "--expires-at", "never")
        await _until(http, proxy_url, secret, "gpt-4o", 200)

        await cli.ok("key", "set", str(key_id), "--budget-usd", "0", "--budget-period", "day")
        body = await _until(http, proxy_url, secret, "gpt-4o", 402)
        assert body["error"]["code"] == "key_budget_exceeded", body
        await cli.ok("key", "set", str(key_id), "--budget-usd", "none")
        await _until(http, proxy_url, secret, "gpt-4o", 200)
