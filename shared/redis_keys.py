"""Every Redis key name Meterway uses, in one place.

Redis Cluster: every Lua script touches keys of one slot. A user's keys
(balance view, holds, hold expiries, key counters, rate windows) and the usage
stream their enqueue appends to share one hash tag: the tag of the user's
*shard*, one of `USAGE_SHARDS` (user id modulo 16). So the enqueue script, which
turns the hold into a pending charge and appends the event, runs in one slot,
and the workers read 16 streams (`usage_stream(shard)`) instead of one. The
shard tags are chosen so that their slots spread evenly over the slot range
(shard k's slot lies in [k * 1024, (k + 1) * 1024)): masters that own
contiguous slot ranges, as `redis-cli --cluster create` assigns them, get
equal numbers of shards. A single Redis uses the same names.

The tags and the shard of a user are part of the stored layout: never change them.
"""

from __future__ import annotations

from functools import lru_cache

PREFIX = "mw"
INVALIDATE_CHANNEL = f"{PREFIX}:invalidate"
USAGE_SHARD_TAGS = (
    "q0.2", "q1.1", "q2.12", "q3.11", "q4.42", "q5.41", "q6.62", "q7.61",
    "q8.12", "q9.11", "q10.1", "q11.2", "q12.61", "q13.62", "q14.23", "q15.20",
)  # fmt: skip
USAGE_SHARDS = len(USAGE_SHARD_TAGS)
USAGE_STREAM = f"{PREFIX}:usage"
"""The one usage stream of the layout before shards: nothing appends to it any
more; workers still drain it (an upgrade leaves no event behind)."""
USAGE_DEAD_LETTERS = f"{PREFIX}:usage:dead"
"""Stream of usage events no worker could settle (unknown model or user), for the operator."""
ARQ_QUEUE = f"{PREFIX}:arq"
"""arq's queue for the worker's own periodic jobs."""


def shard_of(user_id: int) -> int:
    return user_id % USAGE_SHARDS


def usage_stream(shard: int) -> str:
    """Stream of usage events from proxies to workers (consumer group `settlers`),
    of the users of one shard."""
    return f"{PREFIX}:{{{USAGE_SHARD_TAGS[shard]}}}:usage"


USAGE_STREAMS = tuple(usage_stream(shard) for shard in range(USAGE_SHARDS))
"""Every stream a worker reads: the shards, then the stream of the old layout."""
ALL_USAGE_STREAMS = (*USAGE_STREAMS, USAGE_STREAM)


def user_usage_stream(user_id: int) -> str:
    return USAGE_STREAMS[user_id % USAGE_SHARDS]


# A user's key names are built once per process (per user, for the most recent
# users): the hold and the enqueue of every request take five of them.
_per_user = lru_cache(maxsize=16_384)


@_per_user
def _user(user_id: int) -> str:
    return f"{PREFIX}:{{{USAGE_SHARD_TAGS[user_id % USAGE_SHARDS]}}}:u:{user_id}"


@_per_user
def balance(user_id: int) -> str:
    """Hash: `units` (settled balance in nano-USD), `ver` (Postgres version), `held`."""
    return f"{_user(user_id)}:bal"


@_per_user
def holds(user_id: int) -> str:
    """Hash: request id -> held units."""
    return f"{_user(user_id)}:holds"


@_per_user
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


@_per_user
def hold_keys(user_id: int) -> str:
    """Hash: request id -> `<api key id>:<period id>`, for requests of API keys
    with a budget (whoever releases the request moves the key's counters)."""
    return f"{_user(user_id)}:holdkey"


@_per_user
def user_keys(user_id: int) -> tuple[str, ...]:
    """The keys every balance script takes, in this order."""
    return (balance(user_id), holds(user_id), hold_expiry(user_id), hold_keys(user_id))


COOLING_PATTERN = f"{PREFIX}:cooling:*"


def cooling(provider_key_id: int) -> str:
    """String with a TTL: this provider key is cooling down after an upstream 429."""
    return f"{PREFIX}:cooling:{provider_key_id}"


HOLD_EXPIRY_PATTERN = f"{PREFIX}:{{q*}}:u:*:holdexp"


def user_id_of(key: str | bytes) -> int:
    """The user id inside a per-user key name (also of the layout before shards,
    `mw:{u:<id>}:...`)."""
    text = key.decode() if isinstance(key, bytes) else key
    if "}:u:" in text:
        return int(text.split("}:u:", 1)[1].split(":", 1)[0])
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
    """Sorted set of a user's failed (and in-flight) code redemptions in the last hour
    (its script touches it alone: it keeps the user's own tag)."""
    return f"{PREFIX}:{{u:{user_id}}}:redeem"
