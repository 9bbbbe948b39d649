"""Redemption codes (contract section 7): the CLI, `POST /v1/account/redeem` on the
proxy, exactly-once under a race across two proxy processes, and the throttle."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import aiohttp
import pytest

from shared.config import Settings
from shared.db import codes
from tests.util import SECRET_KEY

CLI = [sys.executable, "-c", "import sys; from meterway.cli import main; sys.exit(main())"]


@pytest.fixture(scope="module")
def cli_env(database_url: str, redis_url: str) -> dict[str, str]:
    names = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in names}
    env.update(DATABASE_URL=database_url, REDIS_URL=redis_url, METERWAY_SECRET_KEY=SECRET_KEY)
    return env


async def cli(env: dict[str, str], *args: str, cwd=None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def make_codes(pg, amount: str, n: int = 1, *, expires_at=None, note=None) -> list[str]:
    async with pg.acquire() as conn:
        made = await codes.create_batch(
            conn, Decimal(amount), n, expires_at=expires_at, note=note, created_by="test"
        )
    return [c for _, c in made]


async def redeem(http: aiohttp.ClientSession, url: str, key: str, code) -> tuple[int, dict]:
    async with http.post(
        url + "/v1/account/redeem", json={"code": code}, headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        return resp.status, await resp.json()


async def test_cli_creates_codes_shown_once_and_lists_them_without_codes(
    cli_env, pg, tmp_path, accounts, proxy_url
):
    rc, out, err = await cli(
        cli_env, "code", "create", "2.50", "--count", "3", "--note", "campaign A", cwd=tmp_path
    )
    assert rc == 0, err
    made = out.split()
    assert len(made) == 3 and len(set(made)) == 3 and err == ""
    for code in made:
        assert code.startswith("mwc-") and len(code) >= 4 + 22  # >= 128 bits of base64
        stored = await pg.fetchrow(
            "SELECT id, code_hash, amount_usd, note FROM redemption_codes WHERE code_hash = $1",
            codes.hash_code(code),
        )
        assert stored["amount_usd"] == Decimal("2.50") and stored["note"] == "campaign A"
        # only the hash: the code is in no column
        row = await pg.fetchrow("SELECT * FROM redemption_codes WHERE id = $1", stored["id"])
        assert code not in json.dumps({k: str(v) for k, v in dict(row).items()})

    user = await accounts.create("0")
    async with aiohttp.ClientSession() as http:
        assert (await redeem(http, proxy_url, user.key, made[0]))[0] == 200

    rc, out, err = await cli(cli_env, "code", "list", "--json", cwd=tmp_path)
    assert rc == 0, err
    listed = {r["id"]: r for r in json.loads(out)}
    for code in made:
        assert code not in out
    ids = [
        await pg.fetchval(
            "SELECT id FROM redemption_codes WHERE code_hash = $1", codes.hash_code(c)
        )
        for c in made
    ]
    first = listed[ids[0]]
    assert set(first) == {"id", "amount_usd", "state", "redeemed_by", "redeemed_at",
                          "expires_at", "note"}  # fmt: skip
    assert first["state"] == "redeemed" and first["redeemed_by"] == user.email
    assert Decimal(first["amount_usd"]) == Decimal("2.5") and first["redeemed_at"]
    assert listed[ids[1]]["state"] == "open" and listed[ids[1]]["redeemed_by"] is None
    rc, out, _ = await cli(cli_env, "code", "list", cwd=tmp_path)
    assert rc == 0 and "redeemed" in out and made[1] not in out


async def test_cli_refuses_bad_amounts_and_past_expiry(cli_env, tmp_path):
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    for args in (["1e3"], ["-5"], ["0"], ["abc"], ["5", "--expires-at", "2020-01-01T00:00:00Z"],
                 ["5", "--expires-at", "tomorrow"], ["5", "--count", "0"],
                 ["5", "--expires-at", future.replace("+00:00", "")]):  # fmt: skip
        rc, out, err = await cli(cli_env, "code", "create", *args, cwd=tmp_path)
        assert rc != 0 and out == "", args
        assert len(err.splitlines()) == 1 and err.startswith("meterway: "), (args, err)
    rc, out, err = await cli(
        cli_env, "code", "create", "5", "--expires-at", future.replace("+00:00", "Z"), cwd=tmp_path
    )
    assert rc == 0 and len(out.split()) == 1, err


async def test_redeem_credits_once_then_409_invalid_and_expired_400(pg, redis, accounts, proxy_url):
    user = await accounts.create("1")
    (code,) = await make_codes(pg, "3.25")
    async with aiohttp.ClientSession() as http:
        status, body = await redeem(http, proxy_url, user.key, code)
        assert status == 200, body
        assert Decimal(body["credited_usd"]) == Decimal("3.25")
        assert Decimal(body["balance_usd"]) == Decimal("4.25")
        # visible at once in /v1/account (the Redis view was published)
        async with http.get(
            proxy_url + "/v1/account", headers={"Authorization": f"Bearer {user.key}"}
        ) as resp:
            account = await resp.json()
        assert Decimal(account["available_usd"]) == Decimal("4.25")
        assert account["user_id"] == user.user_id

        status, body = await redeem(http, proxy_url, user.key, code)
        assert status == 409 and body["error"]["code"] == "code_already_redeemed"
        assert set(body["error"]) >= {"message", "type", "code"}
        status, body = await redeem(http, proxy_url, user.key, "mwc-not-a-real-code")
        assert status == 400 and body["error"]["code"] == "invalid_code"
        (expired,) = await make_codes(pg, "5", expires_at=datetime.now(UTC) - timedelta(seconds=1))
        status, body = await redeem(http, proxy_url, user.key, expired)
        assert status == 400 and body["error"]["code"] == "invalid_code"
        # malformed bodies and a missing key
        async with http.post(
            proxy_url + "/v1/account/redeem", data=b"{nope",
            headers={"Authorization": f"Bearer {user.key}"},
        ) as resp:  # fmt: skip
            assert resp.status == 400 and "error" in await resp.json()
        status, body = await redeem(http, proxy_url, user.key, 12)
        assert status == 400
        async with http.post(proxy_url + "/v1/account/redeem", json={"code": code}) as resp:
            assert resp.status == 401
    assert await accounts.balance(user.user_id) == Decimal("4.25")
    rows = await pg.fetch(
        "SELECT kind, amount_usd, external_id FROM ledger WHERE user_id = $1 AND kind = 'redemption'",
        user.user_id,
    )
    code_id = await pg.fetchval(
        "SELECT id FROM redemption_codes WHERE code_hash = $1", codes.hash_code(code)
    )
    assert [(r["amount_usd"], r["external_id"]) for r in rows] == [
        (Decimal("3.25"), f"code:{code_id}")
    ]


async def test_more_than_ten_failures_an_hour_are_429_even_for_a_good_code(
    pg, redis, accounts, proxy_url
):
    user = await accounts.create("0")
    other = await accounts.create("0")
    good = await make_codes(pg, "1", 2)
    async with aiohttp.ClientSession() as http:
        results = await asyncio.gather(
            *[redeem(http, proxy_url, user.key, f"mwc-wrong-{i}") for i in range(14)]
        )
        statuses = sorted(s for s, _ in results)
        assert statuses.count(400) == 10 and statuses.count(429) == 4, statuses
        status, body = await redeem(http, proxy_url, user.key, good[0])
        assert status == 429 and body["error"]["type"] == "rate_limit_exceeded"
        # another user is not affected
        assert (await redeem(http, proxy_url, other.key, good[0]))[0] == 200
        # an hour later (the failures aged out) tries go through again
        key = f"mw:{{u:{user.user_id}}}:redeem"
        old = (datetime.now(UTC) - timedelta(hours=1, seconds=1)).timestamp() * 1000
        members = await redis.zrange(key, 0, -1)
        assert len(members) == 10
        await redis.zadd(key, {m: old for m in members})
        assert (await redeem(http, proxy_url, user.key, good[1]))[0] == 200
    assert await accounts.balance(user.user_id) == Decimal(1)


async def test_twenty_racing_requests_from_two_users_on_two_proxies_credit_once(stack, books, pg):
    (_, url_a), (_, url_b) = await asyncio.gather(stack.proxy(), stack.proxy())
    alice, bob = await books.create("0"), await books.create("0")
    (code,) = await make_codes(pg, "7.77")
    async with aiohttp.ClientSession() as http:
        tries = [
            redeem(http, (url_a, url_b)[i % 2], (alice, bob)[(i // 2) % 2].key, code)
            for i in range(20)
        ]
        results = await asyncio.gather(*tries)
    statuses = sorted(s for s, _ in results)
    assert statuses == [200] + [409] * 19, statuses
    assert all(b["error"]["code"] == "code_already_redeemed" for s, b in results if s == 409)
    total = await books.balance(alice.user_id) + await books.balance(bob.user_id)
    assert total == Decimal("7.77")
    assert (
        await pg.fetchval(
            "SELECT count(*) FROM ledger WHERE user_id = ANY($1::bigint[]) AND kind = 'redemption'",
            [alice.user_id, bob.user_id],
        )
        == 1
    )
    rc, out = await stack.reconcile()
    assert rc == 0, out
