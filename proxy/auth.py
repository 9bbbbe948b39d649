"""Proxy key -> key owner, cached in process, revocation-aware.

A cold lookup reads Postgres once; after that the answer is served from memory
until an invalidation message (`key:<hash>`, `user:<id>`) drops it, or it ages
out after `ttl` seconds as a safety net for a missed message. Unknown keys are
cached briefly too, so that a flood of bad keys does not reach Postgres.
"""

from __future__ import annotations

import time

import asyncpg
from aiohttp import web

from shared.db import api_keys
from shared.db.api_keys import KeyOwner
from shared.keys import hash_proxy_key

# Far above any proxy key: longer ones are refused without hashing or a Postgres read.
_MAX_KEY_CHARS = 256


def presented_key(
    request: web.Request, *, allow_x_api_key: bool, allow_google: bool = False
) -> str | None:
    """The proxy key the client sent: `Authorization: Bearer`, `x-api-key`
    (Anthropic's header), or Google's `x-goog-api-key` header or `key` parameter."""
    header = request.headers.get("Authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    if allow_x_api_key:
        value = request.headers.get("x-api-key", "").strip()
        if value:
            return value
    if allow_google:
        value = (
            request.headers.get("x-goog-api-key", "").strip()
            or request.query.get("key", "").strip()
        )
        if value:
            return value
    return None


# provider kind -> the places its clients put a key, beyond `Authorization: Bearer`
KEY_PLACES: dict[str, dict[str, bool]] = {
    "openai": {"allow_x_api_key": False},
    "anthropic": {"allow_x_api_key": True},
    "gemini": {"allow_x_api_key": False, "allow_google": True},
}


class KeyCache:
    def __init__(self, pool: asyncpg.Pool, *, ttl: float = 60.0, negative_ttl: float = 5.0):
        self._pool = pool
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._entries: dict[bytes, tuple[KeyOwner | None, float]] = {}
        self._generation = 0

    async def lookup(self, key: str) -> KeyOwner | None:
        """The usable owner of `key`, or None when unknown, revoked or disabled."""
        if len(key) > _MAX_KEY_CHARS or not key.isascii():
            return None  # never a proxy key (header bytes beyond ASCII arrive as surrogates)
        key_hash = hash_proxy_key(key)
        entry = self._entries.get(key_hash)
        if entry is not None and entry[1] > time.monotonic():
            return entry[0]
        generation = self._generation
        owner = await api_keys.owner_by_hash(self._pool, key_hash)
        if owner is not None and not owner.usable:
            owner = None
        if generation == self._generation:  # no invalidation raced with the read
            ttl = self._ttl if owner is not None else self._negative_ttl
            if len(self._entries) > 100_000:
                self._entries.clear()
            self._entries[key_hash] = (owner, time.monotonic() + ttl)
        return owner

    def invalidate(self, message: str) -> None:
        """Apply one invalidation message; anything not understood clears all."""
        self._generation += 1
        kind, _, value = message.partition(":")
        if kind == "key":
            self._entries.pop(bytes.fromhex(value), None)
        elif kind == "user":
            user_id = int(value)
            self._entries = {
                h: e for h, e in self._entries.items() if e[0] is None or e[0].user_id != user_id
            }
        elif kind not in ("providers", "cool"):
            self._entries.clear()

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()
