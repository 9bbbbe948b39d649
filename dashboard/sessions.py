"""Server-side sessions, login throttling and invite links, all in Redis with TTLs.

The cookie carries a 256-bit random token; Redis keys use its SHA-256, so a
copy of Redis holds no usable cookie. Visitors get an anonymous session (for
the CSRF token of the sign-in form); signing in replaces it with a new one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from redis.asyncio import Redis

from shared import redis_keys

COOKIE = "mw_session"
SESSION_TTL = 12 * 3600
ANON_TTL = 3600
THROTTLE_LIMIT = 5
THROTTLE_WINDOW = 15 * 60
INVITE_TTL = 72 * 3600


def sign(token: str, key: bytes) -> str:
    """The cookie value: the token and an HMAC of it with a key derived from
    METERWAY_SECRET_KEY, so a cookie made up elsewhere is refused unread."""
    mac = hmac.new(key, token.encode(), hashlib.sha256).hexdigest()[:32]
    return f"{token}.{mac}"


def unsign(value: str, key: bytes) -> str:
    """The token of a signed cookie value, or '' when the signature is wrong."""
    token, _, mac = value.rpartition(".")
    expected = hmac.new(key, token.encode(), hashlib.sha256).hexdigest()[:32]
    return token if token and hmac.compare_digest(mac, expected) else ""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _session_key(token: str) -> str:
    return redis_keys.dashboard_session(_digest(token))


def _user_sessions_key(user_id: int) -> str:
    return redis_keys.dashboard_user_sessions(user_id)


@dataclass(slots=True)
class Session:
    token: str
    csrf: str
    user_id: int | None
    flash: str | None = None


class SessionStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def create(self, user_id: int | None) -> Session:
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        ttl = SESSION_TTL if user_id is not None else ANON_TTL
        key = _session_key(token)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, mapping={"csrf": csrf, "uid": "" if user_id is None else str(user_id)})
        pipe.expire(key, ttl)
        if user_id is not None:
            pipe.sadd(_user_sessions_key(user_id), _digest(token))
            pipe.expire(_user_sessions_key(user_id), SESSION_TTL)
        await pipe.execute()
        return Session(token, csrf, user_id)

    async def load(self, token: str) -> Session | None:
        if not token or len(token) > 100:
            return None
        data = await self.redis.hgetall(_session_key(token))
        if not data or b"csrf" not in data:
            return None
        uid = data.get(b"uid", b"").decode()
        flash = data.get(b"flash")
        return Session(
            token, data[b"csrf"].decode(), int(uid) if uid else None,
            flash.decode() if flash else None,
        )  # fmt: skip

    async def touch(self, session: Session) -> None:
        if session.user_id is not None:
            await self.redis.expire(_session_key(session.token), SESSION_TTL)

    async def delete(self, session: Session) -> None:
        await self.redis.delete(_session_key(session.token))
        if session.user_id is not None:
            await self.redis.srem(_user_sessions_key(session.user_id), _digest(session.token))

    async def delete_all_for_user(self, user_id: int) -> None:
        """Sign a user out everywhere (password changed, account disabled)."""
        digests = await self.redis.smembers(_user_sessions_key(user_id))
        keys = [redis_keys.dashboard_session(d.decode()) for d in digests]
        await self.redis.delete(_user_sessions_key(user_id), *keys)

    async def set_flash(self, session: Session, message: str) -> None:
        await self.redis.hset(_session_key(session.token), "flash", message)

    async def pop_flash(self, session: Session) -> str | None:
        if session.flash is None:
            return None
        await self.redis.hdel(_session_key(session.token), "flash")
        flash, session.flash = session.flash, None
        return flash


class Throttle:
    """At most THROTTLE_LIMIT failed sign-ins per email and client address per window."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    @staticmethod
    def _key(email: str, ip: str) -> str:
        return redis_keys.dashboard_failures(_digest(email.strip().lower() + "|" + ip))

    async def blocked(self, email: str, ip: str) -> bool:
        count = await self.redis.get(self._key(email, ip))
        return int(count or 0) >= THROTTLE_LIMIT

    async def failed(self, email: str, ip: str) -> None:
        key = self._key(email, ip)
        if await self.redis.incr(key) == 1:
            await self.redis.expire(key, THROTTLE_WINDOW)

    async def reset(self, email: str, ip: str) -> None:
        await self.redis.delete(self._key(email, ip))


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
        value = await self.redis.get(self._key(token))
        return int(value) if value else None

    async def consume(self, token: str) -> int | None:
        value = await self.redis.getdel(self._key(token))
        return int(value) if value else None
