"""Every Redis key name Meterway uses, in one place.

Per-user keys share the hash tag `{u:<id>}` so that a user's balance view,
holds and hold expiries live in one cluster slot and one Lua script can touch
them all.
"""

from __future__ import annotations

PREFIX = "mw"
INVALIDATE_CHANNEL = f"{PREFIX}:invalidate"
USAGE_STREAM = f"{PREFIX}:usage"
"""Stream of usage events from proxies to workers (consumer group `settlers`)."""
USAGE_DEAD_LETTERS = f"{PREFIX}:usage:dead"
"""Stream of usage events no worker could settle (unknown model or user), for the operator."""
ARQ_QUEUE = f"{PREFIX}:arq"
"""arq's queue for the worker's own periodic jobs."""


def _user(user_id: int) -> str:
    return f"{PREFIX}:{{u:{user_id}}}"


def balance(user_id: int) -> str:
    """Hash: `units` (settled balance in nano-USD), `ver` (Postgres version), `held`."""
    return f"{_user(user_id)}:bal"


def holds(user_id: int) -> str:
    """Hash: request id -> held units."""
    return f"{_user(user_id)}:holds"


def hold_expiry(user_id: int) -> str:
    """Sorted set: request id -> expiry time in epoch milliseconds."""
    return f"{_user(user_id)}:holdexp"


def rate_window(user_id: int, api_key_id: int, minute: int) -> str:
    """Hash: requests (`n`) and tokens (`t`) of one API key in one minute."""
    return f"{_user(user_id)}:rate:{api_key_id}:{minute}"


def response_tokens(user_id: int, response_id: str) -> str:
    """String: input + output tokens of a response Meterway served and billed
    exactly, which a later request may continue (`previous_response_id`)."""
    return f"{_user(user_id)}:resp:{response_id}"


def hold_keys(user_id: int) -> str:
    """Hash: request id -> `<api key id>:<period id>`, for requests of API keys
    with a budget (whoever releases the request moves the key's counters)."""
    return f"{_user(user_id)}:holdkey"


def user_keys(user_id: int) -> list[str]:
    """The keys every balance script takes, in this order."""
    return [balance(user_id), holds(user_id), hold_expiry(user_id), hold_keys(user_id)]


COOLING_PATTERN = f"{PREFIX}:cooling:*"


def cooling(provider_key_id: int) -> str:
    """String with a TTL: this provider key is cooling down after an upstream 429."""
    return f"{PREFIX}:cooling:{provider_key_id}"


HOLD_EXPIRY_PATTERN = f"{PREFIX}:{{u:*}}:holdexp"


def user_id_of(key: str | bytes) -> int:
    """The user id inside a per-user key name."""
    text = key.decode() if isinstance(key, bytes) else key
    return int(text.split("{u:", 1)[1].split("}", 1)[0])


def daily_counter(day_iso: str, kind: str, name: str | int) -> str:
    """Hash of one UTC day's `spend` (pico-USD) and `requests` for a user, provider,
    model or key (`kind`); providers also keep `resumed_at_spend` and `pauses`."""
    return f"{PREFIX}:day:{day_iso}:{kind}:{name}"


def alert_gate(day_iso: str, rule: str, subject: str, occurrence: int) -> str:
    """String set once (NX) when an alert fires: one alert per rule, subject and day."""
    return f"{PREFIX}:alert:{day_iso}:{rule}:{subject}:{occurrence}"


def dashboard_session(token_digest: str) -> str:
    """Hash of one dashboard session (`csrf`, `uid`, `flash`), by the cookie's SHA-256."""
    return f"{PREFIX}:dash:sess:{token_digest}"


def dashboard_user_sessions(user_id: int) -> str:
    """Set of the session digests of one user, to sign them all out."""
    return f"{PREFIX}:dash:usess:{user_id}"


def dashboard_user_generation(user_id: int) -> str:
    """Integer bumped when a user is signed out everywhere: a session made under an
    older generation is refused on load, whether or not the session set still lists it."""
    return f"{PREFIX}:dash:ugen:{user_id}"


def dashboard_failures(email_and_ip_digest: str) -> str:
    """Counter of sign-in attempts for one email and address in the throttling window
    (counted before the password is verified; a success takes its own count back)."""
    return f"{PREFIX}:dash:fail:{email_and_ip_digest}"


def dashboard_invite(token_digest: str) -> str:
    """One-time invite link: the user id it lets set a password."""
    return f"{PREFIX}:dash:invite:{token_digest}"


def dashboard_form_once(nonce: str) -> str:
    """Set once per submitted key-creation form, so a reload creates no second key."""
    return f"{PREFIX}:dash:once:{nonce}"


def redeem_tries(user_id: int) -> str:
    """Sorted set of a user's failed (and in-flight) code redemptions in the last hour."""
    return f"{_user(user_id)}:redeem"
