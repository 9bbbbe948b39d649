"""Fixtures and helpers shared by the dashboard tests (imported by test_dashboard*.py).

The dashboard runs in-process on a free port against the session's test
database and Redis; `Browser` is an aiohttp client with its own cookie jar.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from argon2 import PasswordHasher
from yarl import URL

from dashboard.app import create_app
from shared.config import Settings
from shared.db import users
from tests.util import free_port

# Cheap parameters keep the tests fast; the dashboard verifies any argon2 hash
# and re-hashes it with its own parameters at the next sign-in.
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture(scope="session")
async def dashboard_url(settings: Settings, pg: asyncpg.Pool) -> AsyncIterator[str]:
    port = free_port()
    runner = web.AppRunner(create_app(settings), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@dataclass
class User:
    id: int
    email: str
    password: str


async def make_user(pg: asyncpg.Pool, *, admin: bool = False, credit: str = "0") -> User:
    email = f"dash-{secrets.token_hex(5)}@example.com"
    password = "pw-" + secrets.token_hex(8)
    row = await users.create(pg, email, is_admin=admin, password_hash=FAST_HASHER.hash(password))
    if Decimal(credit):
        async with pg.acquire() as conn, conn.transaction():
            await users.change_balance(conn, row.id, Decimal(credit), kind="topup")
    return User(row.id, email, password)


class Browser:
    """A dashboard visitor: keeps cookies and the last CSRF token it saw."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True), auto_decompress=True
        )
        self.csrf = ""

    async def close(self) -> None:
        await self.http.close()

    @property
    def session_id(self) -> str | None:
        cookie = self.http.cookie_jar.filter_cookies(URL(self.base)).get("mw_session")
        return cookie.value if cookie else None

    async def get(self, path: str, **kw) -> tuple[int, str, aiohttp.ClientResponse]:
        async with self.http.get(self.base + path, allow_redirects=False, **kw) as resp:
            text = await resp.text()
        self._remember(text)
        return resp.status, text, resp

    async def post(
        self, path: str, data: dict | None = None, *, csrf: str | None = None, **kw
    ) -> tuple[int, str, aiohttp.ClientResponse]:
        if not self.csrf:
            await self.get("/login")
        form = dict(data or {})
        form["csrf"] = self.csrf if csrf is None else csrf
        if csrf == "":
            form.pop("csrf")
        async with self.http.post(self.base + path, data=form, allow_redirects=False, **kw) as resp:
            text = await resp.text()
        self._remember(text)
        return resp.status, text, resp

    def _remember(self, text: str) -> None:
        found = CSRF_RE.search(text)
        if found:
            self.csrf = found.group(1)

    async def login(self, user: User, password: str | None = None) -> int:
        await self.get("/login")
        status, _, _ = await self.post(
            "/login", {"email": user.email, "password": password or user.password}
        )
        if status == 303:
            await self.get("/usage")  # picks up the new session's CSRF token
        return status


@pytest.fixture
async def browser(dashboard_url: str) -> AsyncIterator[Browser]:
    b = Browser(dashboard_url)
    yield b
    await b.close()


@pytest.fixture
async def other_browser(dashboard_url: str) -> AsyncIterator[Browser]:
    b = Browser(dashboard_url)
    yield b
    await b.close()


async def add_usage(
    pg: asyncpg.Pool,
    user_id: int,
    *,
    model: str = "gpt-4o",
    cost: str = "0.00125",
    created_at: datetime | None = None,
    estimated: bool = False,
    api_key_id: int | None = None,
) -> str:
    """A settled usage record written the way the worker writes it: with its
    ledger charge and balance change, so the books still reconcile."""
    request_id = "req_" + secrets.token_hex(8)
    async with pg.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO usage_records (request_id, user_id, provider, model, endpoint, stream,"
            " input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd,"
            " estimated, created_at, api_key_id) VALUES ($1, $2, 'openai', $3,"
            " 'chat/completions', false, 12, 30, 0, 0, $4, $5, $6, $7)",
            request_id,
            user_id,
            model,
            Decimal(cost),
            estimated,
            created_at or datetime.now(UTC),
            api_key_id,
        )
        await users.change_balance(
            conn, user_id, -Decimal(cost), kind="charge", request_id=request_id
        )
    return request_id
