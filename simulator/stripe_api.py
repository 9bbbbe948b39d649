"""A small Stripe API simulator for tests and `meterway dev` (no network needed).

Serves what Meterway's dashboard calls through the official `stripe` library:
`POST /v1/checkout/sessions`, `GET /v1/checkout/sessions/{id}` and
`GET /v1/refunds?charge=...`; plus a stand-in for Stripe's hosted checkout page
(`GET /checkout/{id}` with Pay and Cancel buttons). Paying sends a signed
`checkout.session.completed` webhook to `webhook_url` (Stripe's signature scheme:
HMAC-SHA256 of "{timestamp}.{payload}", header `Stripe-Signature: t=...,v1=...`)
and redirects to the session's success URL. `POST /_sim/refund` refunds a paid
session and sends `charge.refunded`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import json
import secrets
import time
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

SIM_KEY: web.AppKey[StripeSim] = web.AppKey("stripe_sim")


def sign(payload: str, secret: str, timestamp: int | None = None) -> str:
    """The `Stripe-Signature` header Stripe sends for `payload`."""
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={ts},v1={mac}"


def event(kind: str, obj: dict) -> dict:
    return {"id": "evt_" + secrets.token_hex(12), "object": "event", "type": kind,
            "api_version": "2024-06-20", "created": int(time.time()), "livemode": False,
            "data": {"object": obj}}  # fmt: skip


def _stripe_error(status: int, message: str, param: str | None = None) -> web.Response:
    return web.json_response(
        {"error": {"type": "invalid_request_error", "message": message, "param": param}},
        status=status,
    )


@dataclass
class StripeSim:
    secret_key: str | None = None
    webhook_secret: str | None = None
    webhook_url: str | None = None
    sessions: dict[str, dict] = field(default_factory=dict)
    refunds: dict[str, list[dict]] = field(default_factory=dict)  # charge id -> refunds
    created: list[dict] = field(default_factory=list)  # form params of each session create
    deliveries: list[tuple[dict, int]] = field(default_factory=list)  # (event, status)
    # Seconds between "Pay" and its webhook (Stripe's are asynchronous); 0: before the redirect.
    webhook_delay: float = 0.0
    _pending: set[asyncio.Task] = field(default_factory=set)

    # --- the API ------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        if self.secret_key is None:
            return True
        return request.headers.get("Authorization", "") == f"Bearer {self.secret_key}"

    async def create_session(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _stripe_error(401, "Invalid API Key provided")
        form = await request.post()
        params = {k: v for k, v in form.items() if isinstance(v, str)}
        self.created.append(params)
        if params.get("mode") != "payment":
            return _stripe_error(400, "mode must be payment here", "mode")
        for name in ("success_url", "cancel_url"):
            if not params.get(name):
                return _stripe_error(400, f"Missing required param: {name}.", name)
        total, i = 0, 0
        while f"line_items[{i}][price_data][unit_amount]" in params:
            prefix = f"line_items[{i}]"
            try:
                unit = int(params[f"{prefix}[price_data][unit_amount]"])
                quantity = int(params.get(f"{prefix}[quantity]", "1"))
            except ValueError:
                return _stripe_error(400, "Invalid integer", f"{prefix}[price_data][unit_amount]")
            total += unit * quantity
            i += 1
        if total <= 0:
            return _stripe_error(400, "line_items with a positive amount are required")
        sid = "cs_test_" + secrets.token_hex(16)
        base = f"{request.scheme}://{request.host}"
        session = {
            "id": sid, "object": "checkout.session", "mode": "payment",
            "amount_total": total, "amount_subtotal": total,
            "currency": params.get("line_items[0][price_data][currency]", "usd"),
            "client_reference_id": params.get("client_reference_id"),
            "metadata": {k[9:-1]: v for k, v in params.items() if k.startswith("metadata[")},
            "payment_status": "unpaid", "status": "open", "payment_intent": None,
            "success_url": params["success_url"], "cancel_url": params["cancel_url"],
            "url": f"{base}/checkout/{sid}", "livemode": False, "created": int(time.time()),
        }  # fmt: skip
        self.sessions[sid] = session
        return web.json_response(session)

    async def get_session(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _stripe_error(401, "Invalid API Key provided")
        session = self.sessions.get(request.match_info["sid"])
        if session is None:
            return _stripe_error(404, "No such checkout.session")
        return web.json_response(session)

    async def list_refunds(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _stripe_error(401, "Invalid API Key provided")
        data = self.refunds.get(request.query.get("charge", ""), [])
        return web.json_response(
            {"object": "list", "data": data, "has_more": False, "url": "/v1/refunds"}
        )

    # --- the hosted checkout page and the webhooks ----------------------------------------

    async def checkout_page(self, request: web.Request) -> web.Response:
        session = self.sessions.get(request.match_info["sid"])
        if session is None:
            raise web.HTTPNotFound()
        amount = f"{session['amount_total'] // 100}.{session['amount_total'] % 100:02d}"
        sid = html.escape(session["id"])
        page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>Stripe Checkout (simulator)</title></head><body>
<h1>Stripe Checkout (simulator)</h1>
<p>Pay <strong id="amount">${amount}</strong> {html.escape(session["currency"].upper())}
 for Meterway credit.</p>
<form method="post" action="/checkout/{sid}/pay"><button type="submit">Pay</button></form>
<form method="post" action="/checkout/{sid}/cancel"><button type="submit">Cancel</button></form>
</body></html>"""
        return web.Response(text=page, content_type="text/html")

    async def pay(self, request: web.Request) -> web.StreamResponse:
        session = self.sessions.get(request.match_info["sid"])
        if session is None:
            raise web.HTTPNotFound()
        if self.webhook_delay > 0:
            task = asyncio.create_task(self._complete_later(session["id"]))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        else:
            await self.complete(session["id"])
        raise web.HTTPSeeOther(
            session["success_url"].replace("{CHECKOUT_SESSION_ID}", session["id"])
        )

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        session = self.sessions.get(request.match_info["sid"])
        if session is None:
            raise web.HTTPNotFound()
        session["status"] = "expired"
        raise web.HTTPSeeOther(session["cancel_url"])

    async def _complete_later(self, sid: str) -> None:
        await asyncio.sleep(self.webhook_delay)
        await self.complete(sid)

    async def complete(self, sid: str) -> dict:
        """Mark the session paid and send `checkout.session.completed`."""
        session = self.sessions[sid]
        if session["payment_status"] != "paid":
            session.update(payment_status="paid", status="complete",
                           payment_intent="pi_" + secrets.token_hex(12),
                           charge="ch_" + secrets.token_hex(12))  # fmt: skip
        evt = event(
            "checkout.session.completed", {k: v for k, v in session.items() if k != "charge"}
        )
        await self.deliver(evt)
        return evt

    async def refund(self, sid: str, amount: int | None = None, *, embed: bool = True) -> dict:
        """Refund (part of) a paid session; sends `charge.refunded`. With `embed`
        False the event carries no `refunds` (as newer API versions), so the
        receiver must list them through `GET /v1/refunds?charge=`."""
        session = self.sessions[sid]
        charge_id = session["charge"]
        refund = {"id": "re_" + secrets.token_hex(12), "object": "refund",
                  "amount": amount or session["amount_total"], "charge": charge_id,
                  "currency": session["currency"], "payment_intent": session["payment_intent"],
                  "status": "succeeded", "created": int(time.time())}  # fmt: skip
        refunds = self.refunds.setdefault(charge_id, [])
        refunds.insert(0, refund)
        charge = {
            "id": charge_id, "object": "charge", "amount": session["amount_total"],
            "amount_refunded": sum(r["amount"] for r in refunds), "refunded": True,
            "currency": session["currency"], "payment_intent": session["payment_intent"],
        }  # fmt: skip
        if embed:
            charge["refunds"] = {"object": "list", "data": list(refunds), "has_more": False}
        evt = event("charge.refunded", charge)
        await self.deliver(evt)
        return evt

    async def deliver(self, evt: dict) -> int:
        if not (self.webhook_url and self.webhook_secret):
            return 0
        payload = json.dumps(evt)
        async with aiohttp.ClientSession() as http:
            async with http.post(
                self.webhook_url, data=payload.encode(),
                headers={"Content-Type": "application/json",
                         "Stripe-Signature": sign(payload, self.webhook_secret)},
            ) as resp:  # fmt: skip
                status = resp.status
        self.deliveries.append((evt, status))
        return status

    async def sim_refund(self, request: web.Request) -> web.Response:
        body = await request.json()
        evt = await self.refund(
            body["session_id"], body.get("amount"), embed=body.get("embed", True)
        )
        return web.json_response(evt)


def create_app(sim: StripeSim) -> web.Application:
    app = web.Application()
    app[SIM_KEY] = sim
    r = app.router
    r.add_post("/v1/checkout/sessions", sim.create_session)
    r.add_get("/v1/checkout/sessions/{sid}", sim.get_session)
    r.add_get("/v1/refunds", sim.list_refunds)
    r.add_get("/checkout/{sid}", sim.checkout_page)
    r.add_post("/checkout/{sid}/pay", sim.pay)
    r.add_post("/checkout/{sid}/cancel", sim.cancel)
    r.add_post("/_sim/refund", sim.sim_refund)
    return app


async def start(host: str, port: int, sim: StripeSim) -> web.AppRunner:
    runner = web.AppRunner(create_app(sim), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
