"""The upstream key pool: which provider key serves the next request.

The proxy keeps a snapshot of provider state (paused or not) and the active,
decrypted provider keys in process. It is reloaded from Postgres when an
invalidation message arrives and every `refresh_seconds` as a safety net.
Keys are taken round-robin. A key cools down for the time the provider asked
after a rate-limit 429, and is disabled in Postgres after a 401/403 that its
probe confirmed (`proxy.key_health`, which the pool keeps the probes' memory in).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

from proxy.key_health import KeyHealth, rules_for
from shared.config import Settings
from shared.db import providers as db_providers
from shared.db.users import Conn
from shared.keys import SecretBox
from shared.provider_config import ProviderSpec, list_provider_specs


@dataclass(frozen=True, slots=True)
class UpstreamKey:
    id: int
    provider: str
    secret: str = field(repr=False)
    prefix: str = ""
    # the header that carries the secret upstream, made once per key, not per request
    auth: tuple[str, str] = field(default=("", ""), repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.auth[0]:
            object.__setattr__(self, "auth", rules_for(self.provider).auth(self.secret))


class NoActiveKey(Exception):
    """No usable key: all disabled/removed (`cooling` False) or all cooling down."""

    def __init__(self, cooling_for: float | None = None) -> None:
        super().__init__("no active key")
        self.cooling_for = cooling_for


class KeyPool:
    def __init__(self, box: SecretBox | None, settings: Settings) -> None:
        self._box = box
        self._settings = settings
        self._specs: dict[str, ProviderSpec] = {}
        self._keys: dict[str, list[UpstreamKey]] = {}
        self._paused: dict[str, bool] = {}
        self._cooling_until: dict[int, float] = {}
        self._turn = itertools.count()
        self.loaded_at = 0.0
        self.health = KeyHealth()

    async def load(self, conn: Conn) -> None:
        """Replace the snapshot with what Postgres says now: the providers served
        (a removed one is gone, with its keys), their pause state and keys."""
        specs = {spec.name: spec for spec in await list_provider_specs(conn, self._settings)}
        rows = await db_providers.list_providers(conn)
        keys: dict[str, list[UpstreamKey]] = {}
        for row in await db_providers.list_keys(conn):
            spec = specs.get(row.provider)
            if row.status != "active" or self._box is None or spec is None:
                continue
            secret = self._box.decrypt(row.secret_enc)
            keys.setdefault(row.provider, []).append(
                UpstreamKey(row.id, row.provider, secret, row.prefix, spec.auth(secret))
            )
        self._paused = {row.name: row.paused for row in rows}
        self._specs = specs
        self._keys = keys
        self.loaded_at = time.monotonic()

    def spec(self, provider: str) -> ProviderSpec | None:
        """The provider served under this name, or None (its paths are 404)."""
        return self._specs.get(provider)

    def kind_of(self, provider: str) -> str:
        """The kind whose error format a path of this provider answers in."""
        spec = self._specs.get(provider)
        return spec.kind if spec is not None else "openai"

    def is_paused(self, provider: str) -> bool:
        return self._paused.get(provider, False)

    def has_keys(self, provider: str) -> bool:
        return bool(self._keys.get(provider))

    def choose(self, provider: str, exclude: frozenset[int] = frozenset()) -> UpstreamKey:
        """The next active key not in `exclude` and not cooling down."""
        keys = self._keys.get(provider)
        if keys and not exclude and not self._cooling_until:  # the usual case
            return keys[next(self._turn) % len(keys)]
        candidates = [k for k in keys or () if k.id not in exclude]
        if not candidates:
            raise NoActiveKey()
        now = time.monotonic()
        self._cooling_until = {k: t for k, t in self._cooling_until.items() if t > now}
        start = next(self._turn)
        for offset in range(len(candidates)):
            key = candidates[(start + offset) % len(candidates)]
            if self._cooling_until.get(key.id, 0.0) <= now:
                return key
        soonest = min(self._cooling_until.get(k.id, now) for k in candidates)
        raise NoActiveKey(cooling_for=max(soonest - now, 0.0))

    def cool_down(self, key_id: int, seconds: float) -> None:
        now = time.monotonic()
        self._cooling_until = {k: t for k, t in self._cooling_until.items() if t > now}
        self._cooling_until[key_id] = now + seconds

    def drop(self, key_id: int) -> bool:
        """Stop using a key at once (it was disabled after a confirmed 401/403).
        False when it was not in use (already dropped by another request)."""
        if not any(k.id == key_id for keys in self._keys.values() for k in keys):
            return False
        self._keys = {
            provider: [k for k in keys if k.id != key_id] for provider, keys in self._keys.items()
        }
        self.health.forget(key_id)
        return True

    def status_of(self, key_id: int) -> str:
        until = self._cooling_until.get(key_id)
        return "cooling" if until and until > time.monotonic() else "active"
