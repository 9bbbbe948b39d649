"""Server-side sessions, sign-in throttling and invite links, all in Redis.

The cookie carries a 256-bit random token; Redis keys use its SHA-256, so a
copy of Redis holds no usable cookie. Visitors get an anonymous session (for
the CSRF token of the sign-in form); signing in replaces it with a new one.

A signed-in session ends at the latest `max_age` seconds after sign-in
(DASHBOARD_SESSION_MAX_HOURS), however much it is used: the sign-in time is
stored in the session and checked on every load, and the Redis key expires
then too. Each session also records its user's *generation*; signing a user
out everywhere bumps the generation first, so every older session is refused
even if the per-user set of sessions (kept to delete them) has lost one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from redis.asyncio import Redis

from shared import redis_keys

COOKIE = "mw_session"
DEFAULT_MAX_AGE = 12 * 3600  # seconds from sign-in; settings.dashboard_session_max_hours
IDLE_TTL = 12 * 3600  # a signed-in session unused this long ends sooner
ANON_TTL = 3600
THROTTLE_LIMIT = 5
THROTTLE_WINDOW = 15 * 60
INVITE_TTL = 72 * 3600
MAX_TOKEN = 100


def sign(token: str, key: bytes) -> str:
    """The cookie value: the token and an HMAC of it with a key derived from
    METERWAY_SECRET_KEY, so a cookie made up elsewhere is refused unread."""
    mac = hmac.new(key, token.encode(), hashlib.sha256).hexdigest()[:32]
    return f"{token}.{mac}"


def unsign(value: str, key: bytes) -> str:
    """The token of a signed cookie value, or '' when the signature is wrong."""
    if not value.isascii() or len(value) > 2 * MAX_TOKEN:  # undecodable or absurd cookie bytes
        return ""
    token, _, mac = value.rpartition(".")
    expected = hmac.new(key, token.encode(), hashlib.sha256).hexdigest()[:32]
    return token if token and hmac.compare_digest(mac, expected) else ""


def _digest(token: str) -> str:
    # surrogates (from undecodable bytes) must not raise here: they hash as replaced
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def _session_key(token: str) -> str:
    return redis_keys.dashboard_session(_digest(token))


def _user_sessions_key(user_id: int) -> str:
    return redis_keys.dashboard_user_sessions(user_id)


def _generation_key(user_id: int) -> str:
    return redis_keys.dashboard_user_generation(user_id)


_SET_FLASH = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'flash', ARGV[1]) end
return 0
"""


@dataclass(slots=True)
class Session:
    token: str
    csrf: str
    user_id: int | None
    flash: str | None = None
    born: float | None = None  # epoch seconds of the sign-in (signed-in sessions)


class SessionStore:
    def __init__(self, redis: Redis, max_age: float = DEFAULT_MAX_AGE) -> None:
        self.redis = redis
        self.max_age = max_age
        self._set_flash = redis.register_script(_SET_FLASH)

    def remaining(self, session: Session, now: float | None = None) -> float:
        """Seconds this signed-in session may still live (0 when it is over)."""
        if session.born is None:
            return 0.0
        return max(0.0, session.born + self.max_age - (time.time() if now is None else now))

    async def generation(self, user_id: int) -> int:
        """The user's current generation; read it *before* checking a password, so
        that a sign-out-everywhere racing with the sign-in still ends the new session."""
        value = await self.redis.get(_generation_key(user_id))
        return int(value or 0)

    async def create(self, user_id: int | None, *, generation: int | None = None) -> Session:
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        key = _session_key(token)
        if user_id is None:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hset(key, mapping={"csrf": csrf, "uid": ""})
            pipe.expire(key, ANON_TTL)
            await pipe.execute()
            return Session(token, csrf, None)
        if generation is None:
            generation = await self.generation(user_id)
        born = time.time()
        lifetime_ms = max(1, int(self.max_age * 1000))
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(key, mapping={"csrf": csrf, "uid": str(user_id), "born": repr(born),
                                "gen": str(generation)})  # fmt: skip
        pipe.pexpire(key, min(IDLE_TTL * 1000, lifetime_ms))
        # The set outlives every member: this session is the newest, so its end is the latest.
        pipe.sadd(_user_sessions_key(user_id), _digest(token))
        pipe.pexpire(_user_sessions_key(user_id), lifetime_ms)
        await pipe.execute()
        return Session(token, csrf, user_id, born=born)

    async def load(self, token: str) -> Session | None:
        if not token or len(token) > MAX_TOKEN:
            return None
        key = _session_key(token)
        data = await self.redis.hgetall(key)
        if not data or b"csrf" not in data:
            return None
        uid_text = data.get(b"uid", b"").decode()
        flash = data.get(b"flash")
        session = Session(token, data[b"csrf"].decode(), None, flash.decode() if flash else None)
        if not uid_text:
            return session
        try:
            user_id = int(uid_text)
            born = float(data.get(b"born", b"").decode())
            generation = int(data.get(b"gen", b"").decode())
        except ValueError:  # a session from before sign-in times were kept: ended
            await self.redis.delete(key)
            return None
        session.user_id, session.born = user_id, born
        if self.remaining(session) <= 0 or generation != await self.generation(user_id):
            await self.delete(session)
            return None
        return session

    async def touch(self, session: Session) -> None:
        """Renew the idle timeout, never beyond the session's absolute end."""
        if session.user_id is not None:
            ms = int(min(IDLE_TTL, self.remaining(session)) * 1000)
            await self.redis.pexpire(_session_key(session.token), max(1, ms))

    async def delete(self, session: Session) -> None:
        await self.redis.delete(_session_key(session.token))
        if session.user_id is not None:
            await self.redis.srem(_user_sessions_key(session.user_id), _digest(session.token))

    async def delete_all_for_user(self, user_id: int) -> None:
        """Sign a user out everywhere (asked for, password changed, account disabled).

        The generation goes up first: from then on no session of this user made
        before is accepted; deleting the keys listed in the set is tidying up."""
        await self.redis.incr(_generation_key(user_id))
        digests = await self.redis.smembers(_user_sessions_key(user_id))
        pipe = self.redis.pipeline(transaction=False)
        for d in digests:  # one key per command: works on a Redis Cluster too
            pipe.delete(redis_keys.dashboard_session(d.decode()))
        pipe.delete(_user_sessions_key(user_id))
        await pipe.execute()

    async def set_flash(self, session: Session, message: str) -> None:
        # only on a session that still exists (never a TTL-less key for an ended one)
        await self._set_flash(keys=[_session_key(session.token)], args=[message[:500]])

    async def pop_flash(self, session: Session) -> str | None:
        if session.flash is None:
            return None
        await self.redis.hdel(_session_key(session.token), "flash")
        flash, session.flash = session.flash, None
        return flash


# Count first, verify after: INCR is atomic, so however many attempts arrive at
# once, only the first THROTTLE_LIMIT of a window get as far as the password check.
_ATTEMPT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 or redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return n
"""
# A success takes back its own attempt (never more: wrong ones stay counted).
_TAKE_BACK = """
if redis.call('EXISTS', KEYS[1]) == 1 and tonumber(redis.call('GET', KEYS[1])) > 0 then
  return redis.call('DECR', KEYS[1])
end
return 0
"""


class Throttle:
    """At most THROTTLE_LIMIT sign-in attempts with a wrong password per email and
    client address per window, even when they arrive all at once.

    Every attempt is counted *before* its password is verified; once the count
    is over the limit, attempts are refused unverified (the right password
    too) until the window, counted from the first attempt, has passed."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._attempt = redis.register_script(_ATTEMPT)
        self._take_back = redis.register_script(_TAKE_BACK)

    @staticmethod
    def _key(email: str, ip: str) -> str:
        return redis_keys.dashboard_failures(_digest(email.strip().lower() + "|" + ip))

    async def attempt(self, email: str, ip: str) -> bool:
        """Count one attempt; False when it is over the limit (refuse it unverified)."""
        count = await self._attempt(keys=[self._key(email, ip)], args=[THROTTLE_WINDOW * 1000])
        return int(count) <= THROTTLE_LIMIT

    async def succeeded(self, email: str, ip: str) -> None:
        await self._take_back(keys=[self._key(email, ip)])


class Invites:
    """One-time links that let a user set their password."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    @staticmethod
    def _key(token: str) -> str:
        return redis_keys.dashboard_invite(_digest(token))

    async def create(self, user_id: int) -> str:
        token = secrets.token_urlsafe(32)
        await self.redis.set(self._key(token), str(user_id), ex=INVITE_TTL)
        return token

    async def peek(self, token: str) -> int | None:
        if not token or len(token) > MAX_TOKEN:
            return None
        value = await self.redis.get(self._key(token))
        return int(value) if value else None

    async def consume(self, token: str) -> int | None:
        if not token or len(token) > MAX_TOKEN:
            return None
        value = await self.redis.getdel(self._key(token))
        return int(value) if value else None
