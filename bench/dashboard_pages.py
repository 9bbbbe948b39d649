"""How fast the dashboard's pages are with 100,000 usage records (issue 16).

    python -m bench.dashboard_pages [--rows 100000] [--repeat 15] [--redis URL] [--pg URL]

Creates a throwaway database `meterway_dashbench_<hex>` (dropped at the end),
migrates it and seeds one user with `--rows` settled usage records over the
last 60 days (10 API keys, 8 models, each record with its ledger charge, so the
books add up), a few other users, alerts and audit rows. It serves the dashboard
in this process on a free port, signs in as that user and as an operator, and
times every page: the median and the slowest of `--repeat` loads after one
warm-up, from the request to the last body byte, over real HTTP. It also counts
the SQL statements each page runs (no page may run one per row).

Never asserts a timing (it is not part of pytest); it prints a Markdown table.
Redis: only session keys of the dashboard are written (db 9 unless --redis).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import statistics
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import aiohttp
import asyncpg
from aiohttp import web
from argon2 import PasswordHasher

from dashboard.app import create_app
from shared.config import Settings
from shared.db.migrate import migrate

MODELS = ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "claude-sonnet-4-5",
          "claude-haiku-4-5", "o3", "gpt-5"]  # fmt: skip
HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
PASSWORD = "bench-password-1"


async def seed(dsn: str, rows: int) -> dict:
    conn = await asyncpg.connect(dsn)
    try:
        pw = HASHER.hash(PASSWORD)
        user_id = await conn.fetchval(
            "INSERT INTO users (email, password_hash) VALUES ('heavy@bench.local', $1)"
            " RETURNING id",
            pw,
        )
        admin_id = await conn.fetchval(
            "INSERT INTO users (email, password_hash, is_admin) VALUES"
            " ('operator@bench.local', $1, true) RETURNING id",
            pw,
        )
        await conn.executemany(
            "INSERT INTO users (email, balance_usd) VALUES ($1, 5)",
            [(f"user{i}@bench.local",) for i in range(300)],
        )
        keys = [
            await conn.fetchval(
                "INSERT INTO api_keys (user_id, name, prefix, key_hash, rpm_limit)"
                " VALUES ($1, $2, $3, $4, 600) RETURNING id",
                user_id,
                f"key {i}",
                f"mw-bench{i:02d}",
                secrets.token_bytes(32),
            )
            for i in range(10)
        ]
        rng = random.Random(16)
        now = datetime.now(UTC)
        balance = Decimal(1_000_000)
        usage, ledger = [], [(user_id, "topup", balance, balance, None, now - timedelta(days=61))]
        stamps = sorted(now - timedelta(seconds=rng.uniform(0, 60 * 86400)) for _ in range(rows))
        for i, at in enumerate(stamps):
            rid = f"req_bench_{i:07d}"
            cost = Decimal(rng.randint(1, 5_000_000)) / Decimal(10**9)
            balance -= cost
            inp, out = rng.randint(10, 20_000), rng.randint(1, 4_000)
            usage.append((rid, user_id, rng.choice(keys), "openai", rng.choice(MODELS),
                          "chat/completions", False, inp, out, 0, 0, cost, i % 97 == 0, at,
                          at + timedelta(milliseconds=200)))  # fmt: skip
            settled = at + timedelta(milliseconds=200)
            ledger.append((user_id, "charge", -cost, balance, rid, settled))
        await conn.copy_records_to_table("usage_records", records=usage, columns=[
            "request_id", "user_id", "api_key_id", "provider", "model", "endpoint", "stream",
            "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
            "cost_usd", "estimated", "created_at", "settled_at"])  # fmt: skip
        await conn.copy_records_to_table("ledger", records=ledger, columns=[
            "user_id", "kind", "amount_usd", "balance_after", "request_id",
            "created_at"])  # fmt: skip
        await conn.execute(
            "UPDATE users SET balance_usd = $2, balance_version = $3 WHERE id = $1",
            user_id, balance, rows + 1,
        )  # fmt: skip
        await conn.executemany(
            "INSERT INTO audit_log (actor, action, subject, after) VALUES ($1, 'user.set', $2,"
            ' \'{"rate_multiplier": "1"}\'::jsonb)',
            [("operator@bench.local", f"user:user{i}@bench.local") for i in range(2000)],
        )
        await conn.executemany(
            "INSERT INTO alerts (rule, subject, day, message, recipients) VALUES"
            " ('user_low_balance', $1, $2, 'Balance below 1 USD', '{}')",
            [(f"user:{user_id}", (now - timedelta(days=d)).date()) for d in range(500)],
        )
        await conn.execute("VACUUM ANALYZE")  # as autovacuum leaves a settled table
        return {"user_id": user_id, "admin_id": admin_id, "key_id": keys[3],
                "request_id": usage[rows // 2][0], "email": "heavy@bench.local"}  # fmt: skip
    finally:
        await conn.close()


class Client:
    def __init__(self, base: str) -> None:
        self.base = base
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def sign_in(self, email: str) -> None:
        async with self.http.get(self.base + "/login") as resp:
            text = await resp.text()
        csrf = text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        async with self.http.post(self.base + "/login", allow_redirects=False,
                                  data={"csrf": csrf, "email": email, "password": PASSWORD}
                                  ) as resp:  # fmt: skip
            assert resp.status == 303, f"sign-in of {email}: {resp.status}"

    async def time(self, path: str) -> tuple[float, int]:
        start = time.perf_counter()
        async with self.http.get(self.base + path, allow_redirects=False) as resp:
            await resp.read()
            status = resp.status
        return (time.perf_counter() - start) * 1000, status


def count_statements() -> list[int]:
    """Counts every asyncpg statement of this process (the dashboard runs here)."""
    counter = [0]
    for name in ("fetch", "fetchrow", "fetchval", "execute"):
        original = getattr(asyncpg.Connection, name)

        def counted(self, *args, _original=original, **kwargs):
            counter[0] += 1
            return _original(self, *args, **kwargs)

        setattr(asyncpg.Connection, name, counted)
    return counter


async def run(args: argparse.Namespace) -> None:
    name = f"meterway_dashbench_{secrets.token_hex(4)}"
    base_dsn = args.pg.rsplit("/", 1)[0]
    dsn = f"{base_dsn}/{name}"
    await migrate(dsn)
    runner = None
    try:
        t0 = time.perf_counter()
        facts = await seed(dsn, args.rows)
        print(f"seeded {args.rows:,} usage records in {time.perf_counter() - t0:.1f} s")
        settings = Settings(database_url=dsn, redis_url=args.redis)
        runner = web.AppRunner(create_app(settings), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{port}"
        user, admin = Client(base), Client(base)
        await user.sign_in(facts["email"])
        await admin.sign_in("operator@bench.local")
        day = (datetime.now(UTC) - timedelta(days=3)).date().isoformat()
        uid, rid, kid = facts["user_id"], facts["request_id"], facts["key_id"]
        pages = [
            (user, "/usage"), (user, "/usage?page=2000"), (user, "/usage?model=gpt-4o"),
            (user, f"/usage?key={kid}"), (user, f"/usage?from={day}&to={day}"),
            (user, "/keys"), (user, "/billing"), (user, "/prices"), (user, "/settings"),
            (user, f"/usage/requests/{rid}"),
            (admin, "/admin/users"), (admin, f"/admin/users/{uid}"),
            (admin, f"/admin/users/{uid}/billing"), (admin, "/admin/usage"),
            (admin, "/admin/usage?user=heavy"), (admin, f"/admin/usage?key={kid}&model=o3"),
            (admin, f"/admin/usage?request_id={rid}"), (admin, f"/admin/requests/{rid}"),
            (admin, "/admin/providers"), (admin, "/admin/provider-keys"),
            (admin, "/admin/alerts"), (admin, "/admin/audit"), (admin, "/admin/catalog"),
            (admin, "/admin/codes"), (admin, "/admin/system"),
        ]  # fmt: skip
        counter = count_statements()
        lines = ["| page | as | median ms | max ms | SQL statements | status |",
                 "|---|---|---:|---:|---:|---:|"]  # fmt: skip
        for client, path in pages:
            await client.time(path)  # warm-up
            counter[0] = 0
            _, status = await client.time(path)
            statements = counter[0]
            times = [(await client.time(path))[0] for _ in range(args.repeat)]
            shown = path.replace(rid, "<id>").replace(f"/{uid}", "/<user>")
            who = "user" if client is user else "operator"
            lines.append(f"| `{shown}` | {who} | {statistics.median(times):.1f} |"
                         f" {max(times):.1f} | {statements} | {status} |")  # fmt: skip
        print(f"\n{args.rows:,} usage records of one user; {args.repeat} loads per page\n")
        print("\n".join(lines))
        await user.http.close()
        await admin.http.close()
    finally:
        if runner is not None:
            await runner.cleanup()
        if args.keep:
            print(f"kept database {dsn}")
        else:
            admin_conn = await asyncpg.connect(f"{base_dsn}/postgres")
            try:
                await admin_conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await admin_conn.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/9")
    p.add_argument("--keep", action="store_true", help="keep the database (its name is printed)")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
