"""Stripe top-ups (contract section 7): the "Add credit" form, which creates a
Checkout Session through the official `stripe` library and redirects to it; the
success and cancel pages; and `POST /webhooks/stripe`, which verifies
`Stripe-Signature` with the library and credits or debits once per Stripe id.

The webhook is exempt from the session and CSRF middleware (Stripe signs it).
Neither the secret key nor the webhook secret is ever logged or shown.
"""

from __future__ import annotations

import asyncio
import json
import re
from decimal import Decimal
from urllib.parse import urlsplit

import stripe
from aiohttp import web

from dashboard.common import (
    FormError,
    current_user,
    field,
    is_https,
    log,
    login_required,
    parse_amount,
    render,
    safe_text,
    state,
)
from shared.config import Settings
from shared.db import payments, users
from shared.money import usd_str

WEBHOOK_PATH = "/webhooks/stripe"
TOLERANCE_SECONDS = 300
_SESSION_ID = re.compile(r"cs_[A-Za-z0-9_]{1,200}")


def stripe_enabled(settings: Settings) -> bool:
    return bool(settings.stripe_secret_key and settings.stripe_webhook_secret)


def _client(settings: Settings) -> stripe.StripeClient:
    assert settings.stripe_secret_key is not None
    return stripe.StripeClient(
        settings.stripe_secret_key.get_secret_value(),
        base_addresses={"api": settings.stripe_api_base.rstrip("/")},
        max_network_retries=1,
    )


def checkout_origins(settings: Settings) -> str:
    """Where the Add credit form may lead: the form's answer redirects to Stripe's
    hosted page, and browsers check a redirected form against `form-action`."""
    parts = urlsplit(settings.stripe_api_base)
    api = f"{parts.scheme}://{parts.netloc}"
    return "https://checkout.stripe.com" + ("" if api == "https://api.stripe.com" else f" {api}")


def _page(request: web.Request, *, error: str | None = None, amount: str = "",
          status: int = 200) -> web.Response:  # fmt: skip
    s = state(request).settings
    response = render(request, "billing_add_credit.html", {
        "title": "Add credit", "enabled": stripe_enabled(s), "error": error, "amount": amount,
        "min_usd": s.topup_min_usd, "max_usd": s.topup_max_usd,
    }, status=status)  # fmt: skip
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self';"
        f" frame-ancestors 'none'; form-action 'self' {checkout_origins(s)}; base-uri 'none'"
    )
    return response


@login_required
async def add_credit_page(request: web.Request) -> web.StreamResponse:
    return _page(request)


def parse_topup(text: str, settings: Settings) -> Decimal:
    """A plain decimal with at most cents, within the inclusive bounds."""
    amount = parse_amount(text, "Amount", negative=False)
    assert amount is not None
    if amount != amount.quantize(Decimal("0.01")):
        raise FormError("Amount must be in whole cents (at most 2 digits after the point)")
    low, high = settings.topup_min_usd, settings.topup_max_usd
    if not low <= amount <= high:
        raise FormError(f"Amount must be from {usd_str(low)} to {usd_str(high)} USD")
    return amount


def _origin(request: web.Request) -> str:
    scheme = "https" if is_https(request) else request.scheme
    return f"{scheme}://{safe_text(request.host)}"


@login_required
async def add_credit(request: web.Request) -> web.StreamResponse:
    st = state(request)
    if not stripe_enabled(st.settings):
        return _page(request, error="Card payments are not set up here.", status=404)
    user = current_user(request)
    form = await request.post()
    text = field(form, "amount_usd", 40)
    try:
        amount = parse_topup(text, st.settings)
    except FormError as exc:
        return _page(request, error=str(exc), amount=text, status=400)
    cents = int(amount * 100)
    origin = _origin(request)
    params = {
        "mode": "payment",
        "client_reference_id": str(user.id),
        "line_items": [{"quantity": 1, "price_data": {
            "currency": "usd", "unit_amount": cents,
            "product_data": {"name": "Meterway credit"}}}],
        "metadata": {"user_id": str(user.id)},
        "success_url": f"{origin}/billing/add-credit/success?session_id={{CHECKOUT_SESSION_ID}}",
        "cancel_url": f"{origin}/billing/add-credit/cancel",
    }  # fmt: skip
    client = _client(st.settings)
    try:
        session = await asyncio.to_thread(client.v1.checkout.sessions.create, params)
    except stripe.StripeError as exc:
        log.warning("stripe_checkout_failed", user_id=user.id, error=type(exc).__name__)
        return _page(request, error="The payment could not be started; try again later.",
                     amount=text, status=502)  # fmt: skip
    log.info("stripe_checkout_created", user_id=user.id, session_id=session.id, cents=cents)
    raise web.HTTPSeeOther(session.url)


@login_required
async def add_credit_success(request: web.Request) -> web.StreamResponse:
    user = current_user(request)
    sid = request.query.get("session_id", "")
    credited = None
    if _SESSION_ID.fullmatch(sid):
        credited = await payments.session_credit(state(request).pg, sid, user.id)
    balance = (await users.balance(state(request).pg, user.id) or (Decimal(0), 0))[0]
    return render(request, "billing_success.html", {
        "title": "Payment received", "credited": credited, "balance": balance,
        "waiting": credited is None,
    })  # fmt: skip


@login_required
async def add_credit_cancel(request: web.Request) -> web.StreamResponse:
    return render(request, "billing_cancel.html", {"title": "Payment cancelled"})


# --- the webhook -------------------------------------------------------------------------


def _answer(status: int, message: str) -> web.Response:
    return web.json_response({"received": status == 200, "message": message}, status=status)


async def stripe_webhook(request: web.Request) -> web.StreamResponse:
    st = state(request)
    if not stripe_enabled(st.settings):
        return _answer(404, "Stripe is not configured")
    assert st.settings.stripe_webhook_secret is not None
    payload = await request.read()
    try:
        text = payload.decode("utf-8")
        stripe.Webhook.construct_event(
            text,
            request.headers.get("Stripe-Signature"),
            st.settings.stripe_webhook_secret.get_secret_value(),
            tolerance=TOLERANCE_SECONDS,
        )
        evt = json.loads(text, parse_float=Decimal)
        kind, obj = evt["type"], evt["data"]["object"]
        if not isinstance(kind, str) or not isinstance(obj, dict):
            raise ValueError("malformed event")
    except (stripe.SignatureVerificationError, ValueError, KeyError, TypeError) as exc:
        log.warning("stripe_webhook_refused", error=type(exc).__name__)
        return _answer(400, "Invalid payload or signature")
    event_id = evt.get("id") if isinstance(evt.get("id"), str) else None
    if kind == "checkout.session.completed":
        return await _session_completed(request, obj, event_id)
    if kind == "charge.refunded":
        return await _charge_refunded(request, obj, event_id)
    log.info("stripe_event_ignored", event_id=event_id, type=kind[:100])
    return _answer(200, "ignored")


async def _publish(request: web.Request, user_id: int, changed: tuple[Decimal, int]) -> None:
    try:
        await state(request).view.publish(user_id, *changed)
    except Exception as exc:  # the proxy rebuilds a missing or old view from Postgres
        log.warning("balance_view_not_updated", error=str(exc))


async def _session_completed(request: web.Request, obj: dict, event_id: str | None):
    st = state(request)
    sid, ref, total = obj.get("id"), obj.get("client_reference_id"), obj.get("amount_total")
    if obj.get("payment_status") != "paid":
        log.info("stripe_session_unpaid", session_id=str(sid)[:200], event_id=event_id)
        return _answer(200, "not paid: nothing credited")
    if not (isinstance(sid, str) and isinstance(ref, str) and ref.isascii() and ref.isdigit()
            and len(ref) <= 18 and isinstance(total, int) and not isinstance(total, bool)
            and total > 0 and str(obj.get("currency", "usd")).lower() == "usd"):  # fmt: skip
        log.warning("stripe_session_unusable", session_id=str(sid)[:200], event_id=event_id)
        return _answer(200, "not a Meterway top-up: nothing credited")
    user_id = int(ref)
    if await users.by_id(st.pg, user_id) is None:
        log.warning("stripe_session_unknown_user", session_id=sid, user_id=user_id)
        return _answer(200, "unknown user: nothing credited")
    intent = obj.get("payment_intent")
    amount = payments.cents_to_usd(total)
    async with st.pg.acquire() as conn:
        changed = await payments.credit_session(
            conn, session_id=sid, user_id=user_id, amount_usd=amount, event_id=event_id,
            payment_intent=intent if isinstance(intent, str) else None,
        )  # fmt: skip
    if changed is None:
        log.info("stripe_session_replayed", session_id=sid, event_id=event_id)
        return _answer(200, "already credited")
    await _publish(request, user_id, changed)
    log.info("stripe_session_credited", session_id=sid, user_id=user_id, amount_usd=str(amount))
    return _answer(200, "credited")


async def _refunds_of(request: web.Request, charge: dict) -> list[dict]:
    listed = charge.get("refunds")
    if isinstance(listed, dict) and isinstance(listed.get("data"), list):
        if not listed.get("has_more"):
            return [r for r in listed["data"] if isinstance(r, dict)]
    client = _client(state(request).settings)

    def fetch() -> list[dict]:
        page = client.v1.refunds.list({"charge": charge["id"], "limit": 100})
        return [r.to_dict() for r in page.auto_paging_iter()]

    return await asyncio.to_thread(fetch)


async def _charge_refunded(request: web.Request, charge: dict, event_id: str | None):
    st = state(request)
    charge_id, intent = charge.get("id"), charge.get("payment_intent")
    if not isinstance(charge_id, str) or not isinstance(intent, str):
        return _answer(200, "no payment intent: nothing debited")
    payment = await payments.payment_of_intent(st.pg, intent)
    if payment is None:
        log.warning("stripe_refund_unknown_payment", charge_id=charge_id, event_id=event_id)
        return _answer(200, "no credited session has this payment: nothing debited")
    try:
        found = await _refunds_of(request, charge)
    except stripe.StripeError as exc:  # Stripe retries the webhook later
        log.warning("stripe_refunds_not_listed", charge_id=charge_id, error=type(exc).__name__)
        return _answer(502, "could not list the refunds")
    refunds = []
    for r in found:
        amount = r.get("amount")
        if (isinstance(r.get("id"), str) and isinstance(amount, int) and amount > 0
                and r.get("status", "succeeded") in ("succeeded", "pending")):  # fmt: skip
            refunds.append((r["id"], payments.cents_to_usd(amount)))
    async with st.pg.acquire() as conn:
        changed = await payments.debit_refunds(
            conn, session_id=payment["session_id"], user_id=payment["user_id"],
            charge_id=charge_id, refunds=refunds, event_id=event_id,
        )  # fmt: skip
    if changed is None:
        return _answer(200, "no new refund")
    await _publish(request, payment["user_id"], changed)
    log.info("stripe_refunds_debited", charge_id=charge_id, user_id=payment["user_id"])
    return _answer(200, "debited")
