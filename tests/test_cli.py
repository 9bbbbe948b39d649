"""The `meterway` command (CONTRACT.md section 1), run as a real subprocess.

Every invocation is a fresh process with DATABASE_URL, REDIS_URL and
METERWAY_SECRET_KEY pointing at the test database and Redis, started in an
empty directory so that no `.env` file is read. The tests check exit codes,
stdout / stderr and the rows the commands leave in Postgres and Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from argon2 import PasswordHasher
from redis.asyncio import Redis

from shared import redis_keys
from shared.config import Settings
from shared.keys import SecretBox
from tests.conftest import SECRET_KEY
from tests.stack import wait_http
from tests.util import free_port

# `meterway.cli` has no __main__ guard: call the console script's entry point.
CLI = [sys.executable, "-c", "import sys; from meterway.cli import main; sys.exit(main())"]
TIMEOUT = 30


@dataclass
class Result:
    args: tuple[str, ...]
    rc: int
    out: str
    err: str

    def __str__(self) -> str:
        return (
            f"meterway {' '.join(self.args)} -> {self.rc}\nstdout:\n{self.out}\nstderr:\n{self.err}"
        )

    def json(self) -> object:
        return json.loads(self.out)


class Cli:
    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env = env
        self.cwd = cwd

    async def __call__(
        self, *args: str, env: dict[str, str] | None = None, stdin: bytes | None = None
    ) -> Result:
        proc = await asyncio.create_subprocess_exec(
            *CLI,
            *args,
            env=self.env if env is None else env,
            cwd=self.cwd,
            stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        assert proc.returncode is not None
        return Result(args, proc.returncode, out.decode(), err.decode())

    async def ok(
        self, *args: str, env: dict[str, str] | None = None, stdin: bytes | None = None
    ) -> Result:
        result = await self(*args, env=env, stdin=stdin)
        assert result.rc == 0, result
        assert result.err == "", result
        return result

    async def fails(
        self, *args: str, env: dict[str, str] | None = None, stdin: bytes | None = None
    ) -> Result:
        """A command error: non-zero exit and exactly one `meterway: ...` line on stderr."""
        result = await self(*args, env=env, stdin=stdin)
        assert result.rc != 0, result
        lines = result.err.splitlines()
        assert len(lines) == 1, result
        assert lines[0].startswith("meterway: "), result
        assert len(lines[0]) > len("meterway: "), result
        return result


@pytest.fixture(scope="session")
def cli_env(database_url: str, redis_url: str) -> dict[str, str]:
    # Drop anything from the developer's shell that would configure Meterway.
    config_names = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in config_names}
    env.update(DATABASE_URL=database_url, REDIS_URL=redis_url, METERWAY_SECRET_KEY=SECRET_KEY)
    return env


@pytest.fixture(scope="session")
def cli(cli_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Cli:
    return Cli(cli_env, tmp_path_factory.mktemp("cli-cwd"))


def new_email() -> str:
    return f"cli-{uuid.uuid4().hex[:12]}@example.com"


async def user_row(pg: asyncpg.Pool, email: str) -> asyncpg.Record:
    row = await pg.fetchrow("SELECT * FROM users WHERE email = $1", email)
    assert row is not None, f"no user {email}"
    return row


async def columns_containing(pg: asyncpg.Pool, needle: str) -> list[str]:
    """Every text or bytea column of the schema in which some row contains `needle`."""
    columns = await pg.fetch(
        "SELECT table_name, column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = 'public'"
        " AND data_type IN ('text', 'character varying', 'character', 'bytea', 'json', 'jsonb')"
    )
    hits = []
    for c in columns:
        table, column = c["table_name"], c["column_name"]
        if c["data_type"] == "bytea":
            query = f'SELECT count(*) FROM "{table}" WHERE position($1::bytea IN "{column}") > 0'
            arg: object = needle.encode()
        else:
            query = f'SELECT count(*) FROM "{table}" WHERE strpos("{column}"::text, $1) > 0'
            arg = needle
        if await pg.fetchval(query, arg):
            hits.append(f"{table}.{column}")
    return hits


# --- argparse, migrate, dashboard -------------------------------------------------------------


async def test_unknown_command_and_bad_usage_exit_2(cli: Cli) -> None:
    results = await asyncio.gather(
        cli("no-such-command"),
        cli("user"),  # missing action
        cli("credits", "add", "someone@example.com"),  # missing amount
        cli("user", "set", "someone@example.com", "--disabled", "maybe"),
        cli("key", "create", "someone@example.com", "--rpm", "ten"),
        cli("provider-key", "disable", "not-an-id"),
    )
    for r in results:
        assert r.rc == 2, r
        assert r.out == "", r
        assert "usage: meterway" in r.err, r
    assert "invalid choice" in results[0].err


async def test_migrate_creates_a_fresh_schema_then_is_idempotent(
    cli: Cli, cli_env: dict[str, str], database_url: str, pg: asyncpg.Pool
) -> None:
    # The shared test database is migrated already: nothing to do.
    r = await cli.ok("migrate")
    assert r.out.strip() == "schema is up to date", r

    # A database that does not exist yet: migrate creates it, then is a no-op.
    name = f"meterway_cli_{uuid.uuid4().hex[:8]}"
    fresh_url = urlunsplit(urlsplit(database_url)._replace(path=f"/{name}"))
    env = {**cli_env, "DATABASE_URL": fresh_url}
    try:
        first = await cli("migrate", env=env)
        assert first.rc == 0, first
        assert first.out.startswith("applied: "), first
        assert "0001_init.sql" in first.out, first
        second = await cli("migrate", env=env)
        assert second.rc == 0, second
        assert second.out.strip() == "schema is up to date", second

        conn = await asyncpg.connect(fresh_url)
        try:
            tables = {
                r["tablename"]
                for r in await conn.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                )
            }
            versions = await conn.fetch("SELECT version FROM schema_migrations")
            providers = await conn.fetch("SELECT name FROM providers ORDER BY name")
        finally:
            await conn.close()
        assert {
            "users",
            "api_keys",
            "providers",
            "provider_keys",
            "usage_records",
            "ledger",
        } <= tables
        # each migration applied once, not twice
        assert sorted(r["version"] for r in versions) == sorted(set(r["version"] for r in versions))
        assert [r["version"] for r in versions][:1] == [1]
        assert [r["name"] for r in providers] == ["anthropic", "gemini", "openai"]
    finally:
        await pg.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_dashboard_command_serves_the_sign_in_page(cli: Cli) -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; from meterway.cli import main; sys.exit(main())",
        "dashboard",
        "--port",
        str(port),
        env=cli.env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_http(f"http://127.0.0.1:{port}/login")
    finally:
        proc.kill()
        await proc.wait()


# --- users ------------------------------------------------------------------------------------


async def test_user_create(cli: Cli, pg: asyncpg.Pool) -> None:
    email = new_email()
    password = "pw-0123456"  # the dashboard's rule: at least 10 characters
    r = await cli.ok("user", "create", email, "--rate-multiplier", "1.5", "--password", password)
    assert email in r.out
    row = await user_row(pg, email)
    assert row["rate_multiplier"] == Decimal("1.5")
    assert str(row["rate_multiplier"]) == "1.5"  # exact NUMERIC, not a float
    assert row["password_hash"].startswith("$argon2")
    assert password not in row["password_hash"]
    assert PasswordHasher().verify(row["password_hash"], password)
    assert row["is_admin"] is False
    assert row["disabled"] is False
    assert row["balance_usd"] == 0

    admin_email = new_email()
    results = await asyncio.gather(
        cli.fails("user", "create", email),
        cli.fails("user", "create", email.upper()),  # emails are case-insensitive
        cli.fails("user", "create", "not-an-email"),
        cli.fails("user", "create", new_email(), "--rate-multiplier", "abc"),
        cli.fails("user", "create", new_email(), "--rate-multiplier", "-1"),
        cli.ok("user", "create", admin_email, "--admin"),
    )
    assert "--rate-multiplier" in results[3].err
    assert all(r.out == "" for r in results[:-1])
    assert await pg.fetchval("SELECT count(*) FROM users WHERE email = $1", email) == 1
    admin_row = await user_row(pg, admin_email)
    assert admin_row["is_admin"] is True
    assert admin_row["password_hash"] is None
    assert admin_row["rate_multiplier"] == 1


async def test_user_create_refuses_short_passwords(cli: Cli, pg: asyncpg.Pool) -> None:
    emails = [new_email() for _ in range(3)]
    results = await asyncio.gather(
        cli.fails("user", "create", emails[0], "--password", "a"),
        cli.fails("user", "create", emails[1], "--password", "123456789"),  # 9 characters
        cli.fails("user", "create", emails[2], "--password", ""),
    )
    for r in results:
        assert "at least 10 characters" in r.err, r
        assert r.out == "", r
    assert await pg.fetchval("SELECT count(*) FROM users WHERE email = ANY($1)", emails) == 0
    ok = new_email()
    await cli.ok("user", "create", ok, "--password", "1234567890")  # 10: enough
    assert PasswordHasher().verify((await user_row(pg, ok))["password_hash"], "1234567890")


async def test_user_multipliers_and_thresholds_are_plain_decimals(
    cli: Cli, pg: asyncpg.Pool
) -> None:
    refused = ["1e1", "1E1", "0", "0.0", "-1", "1000.000001", "1001", "1.1234567", "NaN",
               "Infinity", "+1", "1_0", "\u0661", ".5", "1.", "0x1", ""]  # fmt: skip
    results = await asyncio.gather(
        *(cli.fails("user", "create", new_email(), "--rate-multiplier", r) for r in refused)
    )
    for r in results:
        assert "--rate-multiplier" in r.err and r.out == "", r
    fine = {"1000": Decimal(1000), "0.000001": Decimal("0.000001"), "2.5": Decimal("2.5")}
    for text, value in fine.items():
        email = new_email()
        await cli.ok("user", "create", email, "--rate-multiplier", text)
        assert (await user_row(pg, email))["rate_multiplier"] == value

    email = new_email()
    await cli.ok("user", "create", email)
    before = await user_row(pg, email)
    results = await asyncio.gather(
        cli.fails("user", "set", email, "--rate-multiplier", "1e2"),
        cli.fails("user", "set", email, "--rate-multiplier", "0"),
        cli.fails("user", "set", email, "--daily-alert-usd", "1e999"),
        cli.fails("user", "set", email, "--daily-alert-usd", "5e-1"),
        cli.fails("user", "set", email, "--low-balance-usd", "-0.5"),
        cli.fails("user", "set", email, "--low-balance-usd", "1000000000"),
        cli.fails("user", "set", email, "--low-balance-usd", "0.0000000000001"),  # 13 digits
    )
    assert all(r.out == "" for r in results)
    assert "--daily-alert-usd" in results[2].err and "--low-balance-usd" in results[4].err
    assert await user_row(pg, email) == before
    await cli.ok(
        "user", "set", email, "--rate-multiplier", "0.123456",
        "--daily-alert-usd", "999999999.999999999999", "--low-balance-usd", "0.000000000001",
    )  # fmt: skip
    row = await user_row(pg, email)
    assert row["rate_multiplier"] == Decimal("0.123456")
    assert row["daily_alert_usd"] == Decimal("999999999.999999999999")
    assert row["low_balance_usd"] == Decimal("0.000000000001")


async def test_user_set(cli: Cli, pg: asyncpg.Pool) -> None:
    email = new_email()
    await cli.ok("user", "create", email)
    await cli.ok(
        "user", "set", email,
        "--rate-multiplier", "2",
        "--daily-alert-usd", "5",
        "--low-balance-usd", "1",
        "--disabled", "true",
    )  # fmt: skip
    row = await user_row(pg, email)
    assert row["rate_multiplier"] == Decimal(2)
    assert row["daily_alert_usd"] == Decimal(5)
    assert row["low_balance_usd"] == Decimal(1)
    assert row["disabled"] is True

    results = await asyncio.gather(
        cli.fails("user", "set", new_email(), "--rate-multiplier", "2"),  # unknown email
        cli.fails("user", "set", email),  # nothing to change
        cli.fails("user", "set", email, "--daily-alert-usd", "lots"),
        cli.fails("user", "set", email, "--low-balance-usd", "-1"),
    )
    assert all(r.out == "" for r in results)
    assert await user_row(pg, email) == row  # failures changed nothing

    # Options given alone change only themselves; the email is case-insensitive.
    await cli.ok("user", "set", email.upper(), "--disabled", "false")
    after = await user_row(pg, email)
    assert after["disabled"] is False
    assert after["rate_multiplier"] == Decimal(2)
    assert after["daily_alert_usd"] == Decimal(5)


# --- credits ----------------------------------------------------------------------------------


async def test_credits_add_exact_ledger_and_redis_view(
    cli: Cli, pg: asyncpg.Pool, redis: Redis
) -> None:
    email = new_email()
    await cli.ok("user", "create", email)
    user_id = (await user_row(pg, email))["id"]

    r = await cli.ok("credits", "add", email, "12.345678901")
    assert "12.345678901" in r.out
    r = await cli.ok("credits", "add", email, "-2.3")
    assert "10.045678901" in r.out

    row = await user_row(pg, email)
    assert row["balance_usd"] == Decimal("10.045678901")
    ledger = await pg.fetch(
        "SELECT kind, amount_usd, balance_after FROM ledger WHERE user_id = $1 ORDER BY id", user_id
    )
    assert [(x["kind"], x["amount_usd"]) for x in ledger] == [
        ("topup", Decimal("12.345678901")),
        ("adjustment", Decimal("-2.3")),
    ]
    assert sum(x["amount_usd"] for x in ledger) == row["balance_usd"]
    assert ledger[-1]["balance_after"] == row["balance_usd"]

    view = await redis.hgetall(redis_keys.balance(user_id))
    assert view[b"units"] == b"10045678901"  # floor(balance * 1e9), an exact integer
    assert int(view[b"ver"]) == row["balance_version"] == 2

    refused = [
        "ten", "NaN", "Infinity", "inf", "sNaN",
        # exponents, however small or large (1e999 once became inf in the hold script)
        "1e999", "1E999", "1e3", "5e-1", "0e0",
        # 13 digits after the point; 1e9 or more in absolute value
        "0.0000000000001", "1000000000", "-1000000000", "1000000000.5", "99999999999999",
        # no sign but a leading minus, no separators, no other digits, no bare points
        "+5", "1_000", "1,5", "1 000", "0x10", "\u0665", ".5", "5.", "",
    ]  # fmt: skip
    few = asyncio.Semaphore(4)  # 26 interpreters at once can outlast TIMEOUT on 2 cores

    async def refusal(*args: str) -> Result:
        async with few:
            return await cli.fails(*args)

    results = await asyncio.gather(
        *(refusal("credits", "add", email, text) for text in refused),
        refusal("credits", "add", new_email(), "5"),  # unknown user
    )
    for r in results[:-1]:
        assert "AMOUNT_USD" in r.err and r.out == "", r
    assert (await user_row(pg, email))["balance_usd"] == Decimal("10.045678901")
    assert await pg.fetchval("SELECT count(*) FROM ledger WHERE user_id = $1", user_id) == 2
    assert (await redis.hget(redis_keys.balance(user_id), "units")) == b"10045678901"

    # 12 digits after the point are kept to the last one, with the rest of the balance
    r = await cli.ok("credits", "add", email, "0.000000000001")
    assert "10.045678901001" in r.out
    assert (await user_row(pg, email))["balance_usd"] == Decimal("10.045678901001")


async def test_credits_keep_the_balance_below_a_billion(
    cli: Cli, pg: asyncpg.Pool, redis: Redis
) -> None:
    """The Redis view holds a balance as integer nano-USD: a change that takes a
    balance to 1e9 USD or beyond (either way) is refused and changes nothing."""
    email = new_email()
    await cli.ok("user", "create", email)
    user_id = (await user_row(pg, email))["id"]
    try:
        await cli.ok("credits", "add", email, "999999999.999999999999")
        refused = await cli.fails("credits", "add", email, "0.000000000001")
        assert "1000000000" in refused.err and refused.out == "", refused
        row = await user_row(pg, email)
        assert row["balance_usd"] == Decimal("999999999.999999999999")
        assert await pg.fetchval("SELECT count(*) FROM ledger WHERE user_id = $1", user_id) == 1
        assert await redis.hget(redis_keys.balance(user_id), "units") == b"999999999999999999"
        assert int(await redis.hget(redis_keys.balance(user_id), "ver")) == 1

        # down to the other end: -999999999.999999999999 is the lowest balance
        await cli.ok("credits", "add", email, "-999999999.999999999999")
        await cli.ok("credits", "add", email, "-999999999.999999999999")
        refused = await cli.fails("credits", "add", email, "-0.000000000001")
        assert "1000000000" in refused.err, refused
        row = await user_row(pg, email)
        assert row["balance_usd"] == Decimal("-999999999.999999999999")
        assert row["balance_version"] == 3
        assert await redis.hget(redis_keys.balance(user_id), "units") == b"-1000000000000000000"
    finally:
        await cli("credits", "add", email, "999999999.999999999999")  # back to zero
    assert (await user_row(pg, email))["balance_usd"] == 0


# --- proxy keys -------------------------------------------------------------------------------


async def test_key_create_list_revoke(cli: Cli, pg: asyncpg.Pool) -> None:
    email = new_email()
    await cli.ok("user", "create", email)
    user_id = (await user_row(pg, email))["id"]

    r = await cli.ok("key", "create", email, "--name", "ci", "--rpm", "10", "--tpm", "1000")
    key = r.out.splitlines()[-1]
    assert key.startswith("mw-"), r
    assert key == key.strip() and " " not in key
    assert len(key) > 20
    assert r.out.count(key) == 1  # shown once, alone on the last line

    row = await pg.fetchrow("SELECT * FROM api_keys WHERE user_id = $1", user_id)
    assert bytes(row["key_hash"]) == hashlib.sha256(key.encode()).digest()
    assert row["prefix"] == key[:10]
    assert (row["name"], row["rpm_limit"], row["tpm_limit"]) == ("ci", 10, 1000)
    assert row["revoked_at"] is None
    assert await columns_containing(pg, key) == []  # only the hash is stored

    second = (await cli.ok("key", "create", email)).out.splitlines()[-1]
    assert second.startswith("mw-") and second != key

    listed, table = await asyncio.gather(
        cli.ok("key", "list", email, "--json"), cli.ok("key", "list", email)
    )
    keys = listed.json()
    assert isinstance(keys, list) and len(keys) == 2
    for k in keys:
        assert {"id", "name", "prefix", "created", "last_used", "revoked"} <= set(k)
        assert k["revoked"] is False
        assert k["last_used"] is None
        datetime.fromisoformat(k["created"])
    first_entry, second_entry = sorted(keys, key=lambda k: k["id"])
    assert first_entry["id"] == row["id"]
    assert (first_entry["name"], first_entry["prefix"]) == ("ci", key[:10])
    assert second_entry["prefix"] == second[:10]
    for out in (listed.out, table.out):
        assert key not in out and second not in out
    assert key[:10] in table.out

    # Revoke one by id and the other by the full key.
    await cli.ok("key", "revoke", str(first_entry["id"]))
    await cli.ok("key", "revoke", second)
    keys = (await cli.ok("key", "list", email, "--json")).json()
    assert [k["revoked"] for k in sorted(keys, key=lambda k: k["id"])] == [True, True]
    revoked_at = await pg.fetch("SELECT revoked_at FROM api_keys WHERE user_id = $1", user_id)
    assert len(revoked_at) == 2 and all(r["revoked_at"] is not None for r in revoked_at)

    results = await asyncio.gather(
        cli.fails("key", "revoke", "999999999"),
        cli.fails("key", "revoke", "mw-" + uuid.uuid4().hex),
        cli.fails("key", "create", new_email()),  # unknown user
        cli.fails("key", "list", new_email()),
        cli.fails("key", "create", email, "--rpm", "0"),
    )
    assert all(r.out == "" for r in results)
    assert await pg.fetchval("SELECT count(*) FROM api_keys WHERE user_id = $1", user_id) == 2


# --- provider keys ----------------------------------------------------------------------------


async def provider_key_ids(pg: asyncpg.Pool) -> set[int]:
    return {r["id"] for r in await pg.fetch("SELECT id FROM provider_keys")}


async def test_provider_key_lifecycle(cli: Cli, cli_env: dict[str, str], pg: asyncpg.Pool) -> None:
    secret = "sk-test-secret-ABCDEF"
    before = await provider_key_ids(pg)
    added = await cli.ok("provider-key", "add", "openai", secret, "--name", "extra")
    new = await provider_key_ids(pg) - before
    assert len(new) == 1
    (key_id,) = new
    try:
        assert secret not in added.out
        row = await pg.fetchrow("SELECT * FROM provider_keys WHERE id = $1", key_id)
        assert (row["provider"], row["name"], row["status"]) == ("openai", "extra", "active")
        prefix = row["prefix"]  # a short, visible start of the secret, never all of it
        assert prefix and secret.startswith(prefix) and len(prefix) <= 10
        secret_enc = bytes(row["secret_enc"])
        assert secret.encode() not in secret_enc
        assert SecretBox(SECRET_KEY).decrypt(secret_enc) == secret
        assert await columns_containing(pg, secret) == []

        async def listed() -> dict:
            r = await cli.ok("provider-key", "list", "openai", "--json")
            assert secret not in r.out, r
            assert all(k["provider"] == "openai" for k in r.json())
            mine = [k for k in r.json() if k["id"] == key_id]
            assert len(mine) == 1, r
            return mine[0]

        both, only_anthropic, table = await asyncio.gather(
            cli.ok("provider-key", "list", "--json"),
            cli.ok("provider-key", "list", "anthropic", "--json"),
            cli.ok("provider-key", "list"),
        )
        for r in (both, only_anthropic, table):
            assert secret not in r.out, r
        assert {k["id"] for k in both.json()} == await provider_key_ids(pg)
        assert all(k["provider"] == "anthropic" for k in only_anthropic.json())
        assert key_id not in {k["id"] for k in only_anthropic.json()}
        assert prefix in table.out and "extra" in table.out
        (entry,) = [k for k in both.json() if k["id"] == key_id]
        assert entry == await listed()
        assert {"id", "provider", "name", "prefix", "status"} <= set(entry)
        assert (entry["provider"], entry["name"], entry["prefix"], entry["status"]) == (
            "openai",
            "extra",
            prefix,
            "active",
        )

        await cli.ok("provider-key", "disable", str(key_id))
        assert (await listed())["status"] == "disabled"
        assert await pg.fetchval("SELECT status FROM provider_keys WHERE id = $1", key_id) == (
            "disabled"
        )
        await cli.ok("provider-key", "enable", str(key_id))
        assert (await listed())["status"] == "active"
        await cli.ok("provider-key", "remove", str(key_id))
        assert await pg.fetchval("SELECT count(*) FROM provider_keys WHERE id = $1", key_id) == 0

        no_secret_env = {k: v for k, v in cli_env.items() if k != "METERWAY_SECRET_KEY"}
        short_secret_env = {**cli_env, "METERWAY_SECRET_KEY": "too-short"}
        results = await asyncio.gather(
            cli.fails("provider-key", "add", "mistral", secret),
            cli.fails("provider-key", "list", "mistral"),
            cli.fails("provider-key", "add", "openai", secret, env=no_secret_env),
            cli.fails("provider-key", "add", "openai", secret, env=short_secret_env),
            cli.fails("provider-key", "disable", str(key_id)),  # removed: unknown id
            cli.fails("provider-key", "remove", str(key_id)),
        )
        for r in results:
            assert secret not in r.out + r.err, r
        assert "METERWAY_SECRET_KEY" in results[2].err
        assert await provider_key_ids(pg) == before
    finally:
        await pg.execute("DELETE FROM provider_keys WHERE id = $1", key_id)


async def test_provider_key_secret_from_stdin_or_the_environment(
    cli: Cli, cli_env: dict[str, str], pg: asyncpg.Pool
) -> None:
    """`-` reads the secret from stdin and `--secret-env VAR` from the environment,
    so it need not be in `ps` or shell history; exactly one source is taken."""
    from_stdin = "sk-stdin-" + uuid.uuid4().hex
    from_env = "sk-env-" + uuid.uuid4().hex
    crlf = "sk-crlf-" + uuid.uuid4().hex
    env = {**cli_env, "MW_TEST_KEY": from_env, "MW_EMPTY_KEY": ""}
    before = await provider_key_ids(pg)
    try:
        r1 = await cli.ok(
            "provider-key", "add", "openai", "-", "--name", "in", stdin=from_stdin.encode() + b"\n"
        )
        r2 = await cli.ok(
            "provider-key",
            "add",
            "anthropic",
            "--secret-env",
            "MW_TEST_KEY",
            "--name",
            "env",
            env=env,
        )
        r3 = await cli.ok("provider-key", "add", "openai", "-", stdin=crlf.encode() + b"\r\n")
        r4 = await cli.ok(
            "provider-key", "add", "openai", "-", stdin=from_stdin.encode()
        )  # no newline
        added = sorted(await provider_key_ids(pg) - before)
        assert len(added) == 4
        box = SecretBox(SECRET_KEY)
        rows = await pg.fetch(
            "SELECT provider, name, secret_enc FROM provider_keys WHERE id = ANY($1) ORDER BY id",
            added,
        )
        stored = [(r["provider"], r["name"], box.decrypt(bytes(r["secret_enc"]))) for r in rows]
        assert stored == [
            ("openai", "in", from_stdin),
            ("anthropic", "env", from_env),
            ("openai", "", crlf),
            ("openai", "", from_stdin),
        ]
        for r, secret in ((r1, from_stdin), (r2, from_env), (r3, crlf), (r4, from_stdin)):
            assert secret not in r.out + r.err, r
        for secret in (from_stdin, from_env, crlf):
            assert await columns_containing(pg, secret) == []

        other = "sk-other-" + uuid.uuid4().hex
        results = await asyncio.gather(
            cli.fails("provider-key", "add", "openai"),  # no source
            cli.fails("provider-key", "add", "openai", other, "--secret-env", "MW_TEST_KEY", env=env),
            cli.fails("provider-key", "add", "openai", "-", "--secret-env", "MW_TEST_KEY", env=env, stdin=other.encode()),
            cli.fails("provider-key", "add", "openai", "-", stdin=b""),  # empty stdin
            cli.fails("provider-key", "add", "openai", "-", stdin=b"\n"),
            cli.fails("provider-key", "add", "openai", "-"),  # stdin is /dev/null
            cli.fails("provider-key", "add", "openai", "--secret-env", "MW_UNSET_KEY", env=env),
            cli.fails("provider-key", "add", "openai", "--secret-env", "MW_EMPTY_KEY", env=env),
            cli.fails("provider-key", "add", "openai", "-", stdin=other.encode() + b"\n\nmore\n"),
            cli.fails("provider-key", "add", "mistral", "-", stdin=other.encode()),
        )  # fmt: skip
        for r in results:
            assert other not in r.out + r.err and from_env not in r.out + r.err, r
        assert "exactly once" in results[0].err and "exactly once" in results[1].err
        assert "stdin" in results[3].err and "MW_UNSET_KEY" in results[6].err
        assert "MW_EMPTY_KEY" in results[7].err
        assert await provider_key_ids(pg) - before == set(added)

        usage = await cli.ok("provider-key", "add", "--help")
        assert "--secret-env VAR" in usage.out and "stdin" in usage.out
        assert "provider-key add openai -" in usage.out
    finally:
        await pg.execute(
            "DELETE FROM provider_keys WHERE id = ANY($1)", [*(await provider_key_ids(pg) - before)]
        )


async def test_provider_key_list_never_shows_a_short_secret(cli: Cli, pg: asyncpg.Pool) -> None:
    secret = "sk-" + uuid.uuid4().hex[:7]  # 10 characters
    before = await provider_key_ids(pg)
    added = await cli.ok("provider-key", "add", "anthropic", secret, "--name", "short")
    (key_id,) = await provider_key_ids(pg) - before
    try:
        listed = await cli.ok("provider-key", "list", "--json")
        assert secret not in added.out
        assert secret not in listed.out
        prefix = await pg.fetchval("SELECT prefix FROM provider_keys WHERE id = $1", key_id)
        assert secret.startswith(prefix) and len(prefix) < len(secret)
    finally:
        await pg.execute("DELETE FROM provider_keys WHERE id = $1", key_id)


# --- providers --------------------------------------------------------------------------------


async def provider_entries(cli: Cli) -> dict[str, dict]:
    rows = (await cli.ok("provider", "list", "--json")).json()
    assert isinstance(rows, list)
    return {r["provider"]: r for r in rows}


async def test_provider_pause_and_resume(cli: Cli, pg: asyncpg.Pool) -> None:
    assert await pg.fetchval("SELECT paused FROM providers WHERE name = 'anthropic'") is False
    openai_paused = await pg.fetchval("SELECT paused FROM providers WHERE name = 'openai'")
    try:
        await cli.ok("provider", "pause", "anthropic")
        paused = await provider_entries(cli)
        assert paused["anthropic"]["status"] == "paused"
        assert {"openai", "anthropic", "gemini"} <= set(paused)
        assert paused["openai"]["status"] == ("paused" if openai_paused else "active")
        assert await pg.fetchval("SELECT paused FROM providers WHERE name = 'anthropic'") is True
    finally:
        resumed = await cli("provider", "resume", "anthropic")
        if resumed.rc != 0:
            await pg.execute("UPDATE providers SET paused = false WHERE name = 'anthropic'")
    assert resumed.rc == 0, resumed
    assert (await provider_entries(cli))["anthropic"]["status"] == "active"
    assert await pg.fetchval("SELECT paused FROM providers WHERE name = 'anthropic'") is False

    await cli.fails("provider", "pause", "mistral")


async def test_provider_set_thresholds(cli: Cli, pg: asyncpg.Pool) -> None:
    await cli.ok("provider", "set", "openai", "--warn-usd", "50", "--stop-usd", "100")
    entries, table = await asyncio.gather(provider_entries(cli), cli.ok("provider", "list"))
    openai = entries["openai"]
    assert (openai["warn_usd"], openai["stop_usd"]) == ("50", "100")
    assert {"provider", "status", "warn_usd", "stop_usd", "spend_today_usd"} <= set(openai)
    assert isinstance(openai["spend_today_usd"], str)
    Decimal(openai["spend_today_usd"])
    assert "openai" in table.out and "anthropic" in table.out

    results = await asyncio.gather(
        cli.fails("provider", "set", "openai"),  # nothing to change
        cli.fails("provider", "set", "openai", "--warn-usd", "fifty"),
        cli.fails("provider", "set", "mistral", "--warn-usd", "1"),
        cli.fails("provider", "set", "openai", "--warn-usd", "1e2"),
        cli.fails("provider", "set", "openai", "--stop-usd", "-1"),
        cli.fails("provider", "set", "openai", "--stop-usd", "1e999"),
        cli.fails("provider", "set", "openai", "--warn-usd", "1", "--stop-usd", "Infinity"),
        cli.fails("provider", "set", "openai", "--stop-usd", "1000000000"),
    )
    assert "--warn-usd" in results[3].err and "--stop-usd" in results[4].err
    row = await pg.fetchrow("SELECT warn_usd, stop_usd FROM providers WHERE name = 'openai'")
    assert (row["warn_usd"], row["stop_usd"]) == (Decimal(50), Decimal(100))


# --- reconcile --------------------------------------------------------------------------------


async def test_reconcile(cli: Cli, pg: asyncpg.Pool, redis: Redis) -> None:
    email = new_email()
    await cli.ok("user", "create", email)
    await cli.ok("credits", "add", email, "7.000000001")
    await cli.ok("credits", "add", email, "-0.5")
    user_id = (await user_row(pg, email))["id"]

    # this user agrees (the shared test database may hold other tests' users
    # whose Redis view those tests changed on purpose: only ours is judged)
    r = await cli("reconcile")
    assert not [line for line in r.out.splitlines() if email in line], r
    assert r.rc != 0 or "agree" in r.out, r

    # Postgres balance off by a dollar: against the ledger and against Redis.
    await pg.execute("UPDATE users SET balance_usd = balance_usd + 1 WHERE id = $1", user_id)
    try:
        r = await cli("reconcile")
    finally:
        await pg.execute("UPDATE users SET balance_usd = balance_usd - 1 WHERE id = $1", user_id)
    assert r.rc != 0, r
    mine = [line for line in r.out.splitlines() if email in line]
    assert mine, r
    assert any("7.500000001" in line and "6.500000001" in line for line in mine), r
    err = r.err.splitlines()
    assert len(err) == 1 and err[0].startswith("meterway: "), r

    # The Redis view off by one unit while Postgres is right.
    key = redis_keys.balance(user_id)
    units = await redis.hget(key, "units")
    assert units == b"6500000001"
    await redis.hincrby(key, "units", 1)
    try:
        r = await cli("reconcile")
    finally:
        await redis.hincrby(key, "units", -1)
    assert r.rc != 0, r
    assert any(email in line and "6500000002" in line for line in r.out.splitlines()), r

    r = await cli("reconcile")  # restored: consistent again for the tests that follow
    assert not [line for line in r.out.splitlines() if email in line], r
    assert r.rc != 0 or "agree" in r.out, r
