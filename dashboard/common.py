"""What every dashboard handler shares: state, the session middleware, rendering,
the sign-in and operator guards, and small form helpers."""

from __future__ import annotations

import functools
import hmac
import re
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NoReturn

import aiohttp_jinja2
import asyncpg
import structlog
from aiohttp import web
from markupsafe import Markup
from redis.asyncio import Redis

from dashboard.sessions import (
    ANON_TTL,
    COOKIE,
    Invites,
    Session,
    SessionStore,
    Throttle,
    sign,
    unsign,
)
from shared import invalidation, money, public_urls
from shared.balance_view import BalanceView
from shared.config import Settings
from shared.db import dashboard as dashboard_queries
from shared.db import users
from shared.money import usd_str

log = structlog.get_logger("meterway.dashboard")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class State:
    settings: Settings
    pg: asyncpg.Pool
    redis: Redis
    sessions: SessionStore
    throttle: Throttle
    invites: Invites
    view: BalanceView
    cookie_key: bytes

    def __post_init__(self) -> None:
        # The absolute session lifetime comes from the settings (DASHBOARD_SESSION_MAX_HOURS).
        if isinstance(self.sessions, SessionStore):
            self.sessions.max_age = self.settings.dashboard_session_max_hours * 3600

    async def notify(self, *messages: str) -> None:
        """Tell running proxies to drop cached state, as the CLI does."""
        try:
            await invalidation.publish(self.redis, *messages)
        except Exception as exc:
            log.warning("invalidation_not_sent", error=str(exc))


STATE = web.AppKey("state", State)
# Machine endpoints authenticated by their own signature: no session, no CSRF token.
SESSIONLESS_PATHS = frozenset({"/webhooks/stripe"})
SESSION_KEY = web.RequestKey("mw_session", Session)
USER_KEY = web.RequestKey("mw_user", users.User)
PAUSED_KEY = web.RequestKey("mw_paused", list)


def state(request: web.Request) -> State:
    return request.app[STATE]


def is_https(request: web.Request) -> bool:
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def set_session_cookie(request: web.Request, response: web.StreamResponse, s: Session) -> None:
    # A signed-in cookie lasts no longer than its session may (from sign-in).
    max_age = ANON_TTL if s.user_id is None else max(1, int(state(request).sessions.remaining(s)))
    response.set_cookie(
        COOKIE,
        sign(s.token, state(request).cookie_key),
        httponly=True,
        samesite="Lax",
        secure=is_https(request),
        path="/",
        max_age=max_age,
    )


@web.middleware
async def session_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Loads (or starts) the session and its user, checks CSRF on every POST."""
    if request.path.startswith("/static/") or request.path in SESSIONLESS_PATHS:
        return await handler(request)
    st = state(request)
    session = await st.sessions.load(unsign(request.cookies.get(COOKIE, ""), st.cookie_key))
    fresh = session is None
    if session is None:
        session = await st.sessions.create(None)
    user = None
    if session.user_id is not None:
        user = await users.by_id(st.pg, session.user_id)
        if user is None or user.disabled:
            if user is not None:  # disabled elsewhere (the CLI): end all of them now
                await st.sessions.delete_all_for_user(user.id)
            await st.sessions.delete(session)
            session, user, fresh = await st.sessions.create(None), None, True
    request[SESSION_KEY] = session
    request[USER_KEY] = user
    if user is not None and request.method == "GET":  # the banner while a provider is paused
        try:
            request[PAUSED_KEY] = await dashboard_queries.paused_for(
                st.pg, user.id, everyone=user.is_admin
            )
        except Exception:
            request[PAUSED_KEY] = []
    if request.method == "POST":
        try:
            form = await request.post()
        except web.HTTPException:
            raise  # e.g. 413, a body over client_max_size
        except Exception:  # undecodable bytes, an unknown charset, broken multipart
            response = render(request, "error.html", {"title": "Bad form", "message":
                "The form could not be read. Reload the page and try again."},
                status=400)  # fmt: skip
            if fresh:
                set_session_cookie(request, response, session)
            return response
        sent = field(form, "csrf")
        if fresh or not hmac.compare_digest(sent.encode(), session.csrf.encode()):
            response = render(request, "error.html", {"title": "Form expired", "message":
                "The form was stale or did not come from this site. Reload and try again."},
                status=403)  # fmt: skip
            set_session_cookie(request, response, request[SESSION_KEY])
            return response
    else:
        await st.sessions.touch(session)
    try:
        response = await handler(request)
    except web.HTTPRedirection as exc:
        # a plain response, so that a changed session can set its cookie on it
        response = web.Response(status=exc.status, headers={"Location": exc.location or "/"})
    current: Session = request[SESSION_KEY]
    if fresh or current is not session:
        set_session_cookie(request, response, current)
    return response


@web.middleware
async def headers_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPNotFound:
        response = render(request, "error.html", {"title": "Not found",
                          "message": "There is nothing here."}, status=404)  # fmt: skip
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self';"
        " frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    )
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if not request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def render(
    request: web.Request, template: str, context: dict[str, Any], status: int = 200
) -> web.Response:
    session: Session | None = request.get(SESSION_KEY)
    base = {"user": request.get(USER_KEY), "csrf": session.csrf if session else "",
            "path": request.path, "money": money_html,
            "cost": lambda v: money_html(v, cost=True), "tokens": tokens, "price": price_html,
            "exact": usd_str, "paused_providers": request.get(PAUSED_KEY, []),
            "docs_url": docs_url(request)}  # fmt: skip
    merged = {**base, **context}
    flash = merged.get("flash")
    if isinstance(flash, str) and flash.startswith(ERROR_FLASH):  # a refusal, not news
        merged["flash"], merged["error"] = None, merged.get("error") or flash[len(ERROR_FLASH) :]
    elif isinstance(flash, str) and flash.startswith("\x1e"):  # a sign-in page's prefill
        merged["flash"] = flash.partition("\x1f")[2] or None
    return aiohttp_jinja2.render_template(template, request, merged, status=status)


def docs_url(request: web.Request) -> str:
    """The proxy's developer docs: `PUBLIC_PROXY_URL` when set (the proxy on
    another host), else this host on the proxy's port (shared.public_urls)."""
    scheme = "https" if is_https(request) else "http"
    return public_urls.proxy_url(state(request).settings, scheme, request.host) + "/docs"


def current_user(request: web.Request) -> users.User:
    user = request.get(USER_KEY)
    assert user is not None
    return user


def login_required(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        if request.get(USER_KEY) is None:
            raise web.HTTPSeeOther("/login")
        return await handler(request)

    return wrapper


def admin_required(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        user = request.get(USER_KEY)
        if user is None:
            raise web.HTTPSeeOther("/login")
        if not user.is_admin:
            return render(request, "error.html", {"title": "Forbidden",
                          "message": "This page is for operators."}, status=403)  # fmt: skip
        return await handler(request)

    return wrapper


ERROR_FLASH = "\x1eerror:"  # a flash that reports a refusal: shown in the error style


async def flash_redirect(
    request: web.Request, location: str, message: str, *, error: bool = False
) -> NoReturn:
    text = ERROR_FLASH + message if error else message
    await state(request).sessions.set_flash(request[SESSION_KEY], text)
    raise web.HTTPSeeOther(location)


async def take_flash(request: web.Request) -> str | None:
    return await state(request).sessions.pop_flash(request[SESSION_KEY])


class FormError(ValueError):
    """A form value that does not parse; its message is shown to the user."""


def parse_amount(text: str, what: str, *, allow_blank: bool = False, negative: bool = True
                 ) -> Decimal | None:  # fmt: skip
    """An amount typed into a form, by the one parser of shared.money (plain
    decimals only); blank is None where allowed (an optional threshold)."""
    if allow_blank and not text.strip():
        return None
    if not text.strip():
        raise FormError(f"{what} is required")
    try:
        return money.parse_amount(text, what, negative=negative)
    except money.AmountError as exc:
        raise FormError(str(exc)) from exc


def parse_multiplier(text: str, what: str) -> Decimal:
    try:
        return money.parse_multiplier(text, what)
    except money.AmountError as exc:
        raise FormError(str(exc)) from exc


def field(form: Any, name: str, max_len: int = 100_000) -> str:
    """A form field as text: '' when missing or a file upload; undecodable
    characters (lone surrogates) become U+FFFD; cut at max_len."""
    value = form.get(name, "")
    if not isinstance(value, str):
        return ""
    return safe_text(value[:max_len])


def safe_text(value: str) -> str:
    """Text that encodes as UTF-8 (for Postgres, Redis and the response)."""
    return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def has_control(value: str) -> bool:
    """Control characters (NUL included, which Postgres refuses in text)."""
    return any(unicodedata.category(c) in ("Cc", "Cs") for c in value)


def query_text(request: web.Request, name: str, max_len: int = 200) -> str:
    """A query parameter as searchable text: control characters dropped, cut at max_len."""
    value = safe_text(request.query.get(name, ""))
    return "".join(c for c in value if unicodedata.category(c) not in ("Cc", "Cs"))[:max_len]


_ID = re.compile(r"[0-9]{1,18}")


def int_param(request: web.Request, name: str) -> int:
    """An id in the path: ASCII digits that fit a BIGINT, else a 404."""
    text = request.match_info.get(name, "")
    if not _ID.fullmatch(text):
        raise web.HTTPNotFound()
    return int(text)


# --- operator actions: who did it, and a confirmation before destructive ones ----------------

CONFIRM_FIELDS = frozenset({"csrf", "confirm", "reason", "confirming"})


def actor(request: web.Request) -> str:
    """The audit log's actor for a dashboard action: the operator's email."""
    return current_user(request).email


def confirmed(
    request: web.Request, form: Any, *, title: str, message: str, button: str, back: str,
    reason_required: bool = True,
) -> tuple[str, None] | tuple[None, web.Response]:  # fmt: skip
    """A destructive action runs only with the box ticked and a reason given
    (recorded in the audit log). Otherwise nothing happens: the answer is a
    page that says what would happen, with the box and the reason to fill in;
    it posts the same form again. Works without JavaScript."""
    reason = field(form, "reason", 501).strip()
    ticked = field(form, "confirm", 10) == "yes"
    if (
        ticked
        and (reason or not reason_required)
        and len(reason) <= 500
        and not has_control(reason)
    ):
        return reason, None
    attempted = "confirming" in form  # sent from the confirmation page itself
    error = None
    if attempted:
        if not ticked:
            error = "Tick the box to confirm."
        elif not reason:
            error = "Give a reason: it is recorded in the audit log."
        else:
            error = "The reason must be at most 500 characters, no control characters."
    keep = [(k, field(form, k, 10_000)) for k in form if k not in CONFIRM_FIELDS]
    response = render(request, "confirm.html", {
        "title": title, "message": message, "button": button, "back": back,
        "action": request.path, "keep": keep, "reason": reason, "error": error,
        "reason_required": reason_required,
    }, status=400 if attempted else 200)  # fmt: skip
    return None, response


def page_number(request: web.Request, name: str = "page") -> int:
    """`?page=N` (1-based); anything else is page 1."""
    text = request.query.get(name, "")
    return int(text) if _PAGE.fullmatch(text) and int(text) > 0 else 1


_PAGE = re.compile(r"[0-9]{1,6}")


# --- one money format for every template ----------------------------------------------------


def money_text(value: Decimal | None, *, cost: bool = False) -> str:
    """The one display rule of shared.money (dashboard, /docs, CLI text, mails):
    balances and amounts of a cent or more with 2 decimals, thousands separated;
    a cost under a dollar and any amount under a cent with 4 significant digits
    ($0.00000735, $0.01881, $0.3008). The exact value is in the title (see
    `money_html`) and in every CSV and JSON."""
    return money.usd_display(value, cost=cost)


def money_html(value: Decimal | None, cost: bool = False) -> Markup:
    """`money_text` in a span whose title is the exact value (`12.3456 USD`)."""
    if value is None:
        return Markup("-")
    exact = usd_str(Decimal(value))
    return Markup('<span class="money" title="{} USD" data-usd="{}">{}</span>').format(
        exact, exact, money_text(value, cost=cost)
    )


def tokens(value: int | None) -> str:
    return money.tokens_display(value)


def price_html(value: Decimal | None) -> Markup:
    """A unit price (USD per million tokens): exact, at least 2 decimals ($2.50, $0.075)."""
    if value is None:
        return Markup("-")
    exact = usd_str(Decimal(value))
    return Markup('<span class="money" title="{} USD" data-usd="{}">{}</span>').format(
        exact, exact, money.price_display(value)
    )
