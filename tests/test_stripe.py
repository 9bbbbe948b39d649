"""Stripe top-ups (contract section 7) against the Stripe simulator: Checkout from
the dashboard through the official library, and signed webhooks that credit each
paid session once and debit each refund once; bad, stale, replayed or unpaid
events change nothing."""

# ruff: noqa: F811  (the fixtures imported from test_dashboard_helpers are parameters here)

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal

import aiohttp
import pytest
import stripe
from aiohttp import web
from pydantic import SecretStr

from dashboard.app import create_app
from shared import redis_keys
from shared.config import Settings
from simulator.stripe_api import StripeSim, event
from simulator.stripe_api import start as start_stripe
from tests.test_dashboard_helpers import Browser, make_user
from tests.util import free_port

SK = "sk_test_" + secrets.token_hex(12)
WHSEC = "whsec_" + secrets.token_hex(16)


@dataclass
class Pay:
    sim: StripeSim
    sim_url: str
    url: str  # the dashboard


@pytest.fixture(scope="session")
async def pay(settings: Settings, pg) -> AsyncIterator[Pay]:
    sim = StripeSim(secret_key=SK, webhook_secret=WHSEC)
    sim_port, port = free_port(), free_port()
    sim_runner = await start_stripe("127.0.0.1", sim_port, sim)
    configured = settings.model_copy(update={
        "stripe_secret_key": SecretStr(SK), "stripe_webhook_secret": SecretStr(WHSEC),
        "stripe_api_base": f"http://127.0.0.1:{sim_port}",
    })  # fmt: skip
    runner = web.AppRunner(create_app(configured), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    sim.webhook_url = url + "/webhooks/stripe"
    yield Pay(sim, f"http://127.0.0.1:{sim_port}", url)
    await runner.cleanup()
    await sim_runner.cleanup()


@pytest.fixture
async def visitor(pay: Pay) -> AsyncIterator[Browser]:
    b = Browser(pay.url)
    yield b
    await b.close()


async def send(pay: Pay, evt: dict | str, *, header: str | None = "sign", ts: int | None = None):
    payload = evt if isinstance(evt, str) else json.dumps(evt)
    headers = {"Content-Type": "application/json"}
    if header == "sign":
        headers["Stripe-Signature"] = stripe.WebhookSignature.generate_signature_header(
            payload, WHSEC, ts
        )
    elif header is not None:
        headers["Stripe-Signature"] = header
    async with aiohttp.ClientSession() as http:
        async with http.post(
            pay.url + "/webhooks/stripe", data=payload.encode(), headers=headers
        ) as resp:
            return resp.status


def session_event(user_id: int, cents: int, *, paid: bool = True, sid: str | None = None):
    return event("checkout.session.completed", {
        "id": sid or "cs_test_" + secrets.token_hex(8), "object": "checkout.session",
        "mode": "payment", "amount_total": cents, "currency": "usd",
        "client_reference_id": str(user_id), "payment_status": "paid" if paid else "unpaid",
        "payment_intent": "pi_" + secrets.token_hex(8), "status": "complete",
    })  # fmt: skip


async def balance(pg, user_id: int) -> Decimal:
    return await pg.fetchval("SELECT balance_usd FROM users WHERE id = $1", user_id)


async def test_checkout_from_the_dashboard_reaches_stripe_and_the_webhook_credits_once(
    pg, pay: Pay, visitor: Browser, capfd
):
    user = await make_user(pg)
    assert await visitor.login(user) == 303
    status, text, _ = await visitor.get("/billing/add-credit")
    assert status == 200 and 'name="amount_usd"' in text and SK not in text
    status, _, resp = await visitor.post("/billing/add-credit", {"amount_usd": "12.34"})
    assert status == 303
    location = resp.headers["Location"]
    assert location.startswith(pay.sim_url + "/checkout/cs_test_")
    params = pay.sim.created[-1]
    assert params["mode"] == "payment" and params["client_reference_id"] == str(user.id)
    assert params["line_items[0][price_data][unit_amount]"] == "1234"
    assert params["line_items[0][price_data][currency]"] == "usd"
    sid = location.rsplit("/", 1)[1]

    status, text, _ = await visitor.get(f"/billing/add-credit/success?session_id={sid}")
    assert status == 200 and 'http-equiv="refresh"' in text and 'id="waiting"' in text

    async with aiohttp.ClientSession() as http:  # the customer pays on "Stripe"
        async with http.post(f"{location}/pay", allow_redirects=False) as paid:
            assert paid.status == 303
            assert paid.headers["Location"].endswith(
                f"/billing/add-credit/success?session_id={sid}"
            )
    assert pay.sim.deliveries[-1][1] == 200
    assert await balance(pg, user.id) == Decimal("12.34")
    status, text, _ = await visitor.get(f"/billing/add-credit/success?session_id={sid}")
    assert 'id="credited"' in text and "12.34" in text and 'http-equiv="refresh"' not in text

    # the same event again (Stripe retries), and a new event for the same session
    first = pay.sim.deliveries[-1][0]
    assert await send(pay, first) == 200
    again = dict(first, id="evt_" + secrets.token_hex(8))
    assert await send(pay, again) == 200
    assert await balance(pg, user.id) == Decimal("12.34")
    rows = await pg.fetch(
        "SELECT kind, amount_usd, external_id FROM ledger WHERE user_id = $1", user.id
    )
    assert [(r["kind"], r["amount_usd"], r["external_id"]) for r in rows] == [
        ("topup", Decimal("12.34"), f"stripe_session:{sid}")
    ]
    status, _, resp = await visitor.get("/billing/add-credit/cancel")
    assert status == 200
    out, err = capfd.readouterr()
    assert SK not in out + err and WHSEC not in out + err


@pytest.mark.parametrize(
    ("amount", "ok"),
    [("5", True), ("1000", True), ("5.01", True), ("999.99", True), ("4.99", False),
     ("1000.01", False), ("5.001", False), ("1e1", False), ("-5", False), ("", False),
     ("abc", False), ("10,00", False)],
)  # fmt: skip
async def test_add_credit_bounds_are_inclusive_and_cents_allowed(
    pg, pay: Pay, visitor: Browser, amount: str, ok: bool
):
    user = await make_user(pg)
    assert await visitor.login(user) == 303
    before = len(pay.sim.created)
    status, text, _ = await visitor.post("/billing/add-credit", {"amount_usd": amount})
    if ok:
        assert status == 303
        cents = int(Decimal(amount) * 100)
        assert pay.sim.created[-1]["line_items[0][price_data][unit_amount]"] == str(cents)
    else:
        assert status == 400 and 'class="error"' in text
        assert len(pay.sim.created) == before


async def test_bad_signatures_change_nothing(pg, pay: Pay):
    user = await make_user(pg)
    evt = session_event(user.id, 2000)
    payload = json.dumps(evt)
    assert await send(pay, evt, header=None) == 400
    assert await send(pay, evt, header="t=1,v1=deadbeef") == 400
    assert await send(pay, evt, header="garbage") == 400
    # tampered: signed, then the amount changed
    header = stripe.WebhookSignature.generate_signature_header(payload, WHSEC)
    tampered = payload.replace('"amount_total": 2000', '"amount_total": 200000')
    assert tampered != payload
    assert await send(pay, tampered, header=header) == 400
    # signed with another secret
    other = stripe.WebhookSignature.generate_signature_header(payload, "whsec_other")
    assert await send(pay, payload, header=other) == 400
    # stale: signed 301 s ago (tolerance 300 s)
    assert await send(pay, evt, ts=int(time.time()) - 301) == 400
    assert await balance(pg, user.id) == 0
    assert await send(pay, "not json", ts=None) == 400
    # a fresh, correct signature goes through
    assert await send(pay, evt, ts=int(time.time()) - 200) == 200
    assert await balance(pg, user.id) == Decimal(20)


async def test_unpaid_sessions_unknown_users_and_other_events_change_nothing(pg, pay: Pay):
    user = await make_user(pg)
    assert await send(pay, session_event(user.id, 1500, paid=False)) == 200
    assert await send(pay, event("payment_intent.succeeded", {"id": "pi_x", "amount": 99})) == 200
    assert await send(pay, event("customer.created", {"id": "cus_1"})) == 200
    assert await send(pay, session_event(10**12, 1500)) == 200  # no such user
    odd = session_event(user.id, 1500)
    odd["data"]["object"]["client_reference_id"] = "not-a-user"
    assert await send(pay, odd) == 200
    assert await balance(pg, user.id) == 0


async def test_each_refund_debits_once_from_the_event_or_the_refunds_list(pg, redis, pay: Pay):
    user = await make_user(pg)
    async with aiohttp.ClientSession() as http:
        # a session paid through the simulator (so that it knows the charge)
        sid = "cs_test_" + secrets.token_hex(8)
        pay.sim.sessions[sid] = {
            "id": sid, "object": "checkout.session", "mode": "payment", "amount_total": 5000,
            "currency": "usd", "client_reference_id": str(user.id), "payment_status": "unpaid",
            "status": "open", "payment_intent": None, "success_url": "x", "cancel_url": "y",
        }  # fmt: skip
        await pay.sim.complete(sid)
        assert await balance(pg, user.id) == Decimal(50)

        async def refund(amount: int, embed: bool) -> dict:
            async with http.post(
                pay.sim_url + "/_sim/refund",
                json={"session_id": sid, "amount": amount, "embed": embed},
            ) as resp:
                return await resp.json()

        first = await refund(1250, True)  # refunds in the event
        assert pay.sim.deliveries[-1][1] == 200
        assert await balance(pg, user.id) == Decimal("37.50")
        assert await send(pay, first) == 200  # replay
        assert await send(pay, dict(first, id="evt_" + secrets.token_hex(6))) == 200
        assert await balance(pg, user.id) == Decimal("37.50")

        await refund(700, False)  # no refunds in the event: listed through GET /v1/refunds
        assert pay.sim.deliveries[-1][1] == 200
        assert await balance(pg, user.id) == Decimal("30.50")
    rows = await pg.fetch(
        "SELECT kind, amount_usd, external_id FROM ledger WHERE user_id = $1 ORDER BY id", user.id
    )
    kinds = [(r["kind"], r["amount_usd"]) for r in rows]
    assert kinds == [("topup", Decimal(50)), ("refund", Decimal("-12.50")),
                     ("refund", Decimal("-7.00"))]  # fmt: skip
    assert all(r["external_id"].startswith("stripe_refund:re_") for r in rows[1:])
    # the Redis view follows
    view = await redis.hget(redis_keys.balance(user.id), "units")
    if view is not None:
        assert int(view) == 30_500_000_000


async def test_without_stripe_settings_there_is_no_card_payment(pg, browser):
    user = await make_user(pg)
    assert await browser.login(user) == 303
    status, text, _ = await browser.get("/billing/add-credit")
    assert status == 200 and "not set up" in text
    status, _, _ = await browser.post("/billing/add-credit", {"amount_usd": "10"})
    assert status == 404
    async with aiohttp.ClientSession() as http:
        async with http.post(browser.base + "/webhooks/stripe", data=b"{}") as resp:
            assert resp.status == 404


from tests.test_dashboard_helpers import browser, dashboard_url  # noqa: E402, F401


async def test_meterway_dev_offers_add_credit_against_the_stripe_simulator(database_url):
    import asyncio
    import contextlib
    import os
    from urllib.parse import urlsplit, urlunsplit

    import asyncpg

    from tests.stack import RedisServer
    from tests.test_dev import run_dev, stop

    redis_server = RedisServer()  # its own Redis: its worker must not share the tests' queue
    await redis_server.start()
    name = f"meterway_dev_{secrets.token_hex(4)}"
    dev_db = urlunsplit(urlsplit(database_url)._replace(path=f"/{name}"))
    dash_port = free_port()
    names = {n.upper() for n in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in names}
    env.update(DATABASE_URL=dev_db, REDIS_URL=redis_server.url, PROXY_PORT=str(free_port()),
               DASHBOARD_PORT=str(dash_port),
               METERWAY_SECRET_KEY="dev-test-secret-key-0123456789-abcdefgh")  # fmt: skip
    proc, output = await run_dev(env)
    visitor = Browser(f"http://127.0.0.1:{dash_port}")
    try:
        line = b""
        while not line.strip():
            line = await asyncio.wait_for(proc.stdout.readline(), 10)
        assert b"/billing/add-credit" in line and b"Stripe simulator" in line
        assert b"whsec_" not in line + output.encode()
        from tests.test_dashboard_helpers import User

        assert await visitor.login(User(0, "dev@meterway.local", "meterway-dev")) == 303
        status, _, resp = await visitor.post("/billing/add-credit", {"amount_usd": "7.50"})
        assert status == 303, resp
        async with aiohttp.ClientSession() as http:
            async with http.post(resp.headers["Location"] + "/pay", allow_redirects=False) as r:
                assert r.status == 303
            status, text, _ = await visitor.get(
                urlsplit(r.headers["Location"]).path + "?" + urlsplit(r.headers["Location"]).query
            )
        assert status == 200 and 'id="credited"' in text and "7.5" in text
    finally:
        await visitor.close()
        await stop(proc)
        await redis_server.stop()
        admin = await asyncpg.connect(database_url)
        with contextlib.suppress(Exception):
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
