"""Providers as configuration (contract section 5): what a provider is, its
checks, and its rows in Postgres.

A provider is a named upstream of one kind (`openai`, `anthropic`, `gemini`).
The built-ins carry their base URL in settings; an added provider stores its
own. `UPSTREAM_<NAME>_BASE_URL` overrides the base URL of any of them. Proxies
read `list_provider_specs` and reload it when `invalidation.PROVIDERS_MESSAGE`
arrives (and every few seconds as a safety net).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

import orjson
import structlog

from shared.config import Settings
from shared.db.users import Conn

log = structlog.get_logger("meterway.providers")

Kind = Literal["openai", "anthropic", "gemini"]
KINDS: tuple[Kind, ...] = ("openai", "anthropic", "gemini")
BUILTINS: tuple[str, ...] = ("openai", "anthropic", "gemini")
# the header that carries the provider secret upstream, by kind
DEFAULT_AUTH_HEADER: dict[str, str] = {
    "openai": "Authorization",
    "anthropic": "x-api-key",
    "gemini": "x-goog-api-key",
}
RESERVED_NAMES = frozenset({"account"})
_NAME = re.compile(r"[a-z][a-z0-9-]{1,31}")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}")  # an HTTP header name
# hop-by-hop headers (RFC 9110 7.6.1): never forwarded, never configured
HOP_BY_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "http2-settings",
    }
)
# never fixed by configuration: hop-by-hop, or what the proxy itself decides
FORBIDDEN_HEADERS = HOP_BY_HOP_HEADERS | {"host", "content-length", "content-encoding"}
_MAX_HEADERS = 20
_MAX_HEADER_VALUE = 2048


class ProviderConfigError(ValueError):
    """A provider name, URL or header that cannot be configured, or a name clash."""


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    name: str
    kind: Kind
    base_url: str  # effective: the override, the stored one, or the setting
    auth_header: str
    headers: tuple[tuple[str, str], ...] = ()
    builtin: bool = False
    # lower-cased names a client may not set upstream: the auth header, the fixed ones
    replaced: frozenset[str] = field(default=frozenset(), compare=False)

    def __post_init__(self) -> None:
        names = {self.auth_header.lower(), *(name.lower() for name, _ in self.headers)}
        object.__setattr__(self, "replaced", frozenset(names))

    def auth(self, secret: str) -> tuple[str, str]:
        """The header that carries a provider secret upstream."""
        if self.auth_header.lower() == "authorization":
            return ("Authorization", f"Bearer {secret}")
        return (self.auth_header, secret)


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name) or name in RESERVED_NAMES:
        raise ProviderConfigError(
            f"invalid provider name {name!r}: 2-32 of a-z, 0-9 and '-', starting with a letter"
            " (not 'account')"
        )
    return name


def check_kind(kind: str) -> Kind:
    if kind not in KINDS:
        raise ProviderConfigError(f"unknown kind {kind!r}: use one of {', '.join(KINDS)}")
    return kind  # type: ignore[return-value]


def check_base_url(url: str) -> str:
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProviderConfigError(f"invalid base URL {url!r}: use http(s)://host[:port][/path]")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ProviderConfigError(
            "the base URL may not carry a query, a fragment or credentials:"
            " put the secret in a provider key, fixed values in --header"
        )
    return url.rstrip("/")


def check_auth_header(name: str | None, kind: Kind) -> str:
    if name is None or not name.strip():
        return DEFAULT_AUTH_HEADER[kind]
    name = name.strip()
    if not _TOKEN.fullmatch(name) or name.lower() in FORBIDDEN_HEADERS:
        raise ProviderConfigError(f"invalid auth header {name!r}")
    return name


def parse_header(text: str, auth_header: str) -> tuple[str, str]:
    """`Name: value`, split at the first colon and trimmed."""
    name, colon, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not colon or not _TOKEN.fullmatch(name):
        raise ProviderConfigError(f"invalid header {text!r}: use 'Name: value'")
    if name.lower() in FORBIDDEN_HEADERS:
        raise ProviderConfigError(f"header {name!r} is hop-by-hop or set by the proxy itself")
    if name.lower() == auth_header.lower():
        raise ProviderConfigError(
            f"header {name!r} is the auth header: the provider key's secret goes there"
        )
    if len(value) > _MAX_HEADER_VALUE or any(not ch.isprintable() for ch in value):
        raise ProviderConfigError(f"invalid value for header {name!r}")
    return name, value


def check_headers(lines: list[str], auth_header: str) -> tuple[tuple[str, str], ...]:
    headers = [parse_header(line, auth_header) for line in lines if line.strip()]
    if len(headers) > _MAX_HEADERS:
        raise ProviderConfigError(f"at most {_MAX_HEADERS} fixed headers")
    names = [name.lower() for name, _ in headers]
    if len(set(names)) != len(names):
        raise ProviderConfigError("a fixed header is given twice")
    return tuple(headers)


def override_var(name: str) -> str:
    return f"UPSTREAM_{name.upper().replace('-', '_')}_BASE_URL"


def effective_base_url(
    name: str, stored: str | None, settings: Settings, environ: Mapping[str, str] | None = None
) -> str:
    """`UPSTREAM_<NAME>_BASE_URL`, else the stored URL, else the built-in's setting."""
    override = (os.environ if environ is None else environ).get(override_var(name), "").strip()
    if override:
        return override.rstrip("/")
    builtin = {
        "openai": settings.upstream_openai_base_url,
        "anthropic": settings.upstream_anthropic_base_url,
        "gemini": settings.upstream_gemini_base_url,
    }
    if name in builtin and not stored:
        return builtin[name].rstrip("/")
    return (stored or "").rstrip("/")


_COLUMNS = "name, kind, base_url, auth_header, headers, builtin"


def _spec(row: Mapping, settings: Settings) -> ProviderSpec | None:
    """The row as a spec; None (and logged) when its header names are not what
    `provider add` accepts, as a row edited by hand could be: a request to it
    could then carry a broken header line."""
    raw_headers = row["headers"]
    pairs = orjson.loads(raw_headers) if isinstance(raw_headers, str | bytes) else raw_headers
    kind = row["kind"]
    spec = ProviderSpec(
        name=row["name"],
        kind=kind,
        base_url=effective_base_url(row["name"], row["base_url"], settings),
        auth_header=row["auth_header"] or DEFAULT_AUTH_HEADER[kind],
        headers=tuple((str(n), str(v)) for n, v in pairs or ()),
        builtin=row["builtin"],
    )
    names = [spec.auth_header, *(name for name, _ in spec.headers)]
    values = [value for _, value in spec.headers]
    if not all(_TOKEN.fullmatch(n) for n in names) or any("\r" in v or "\n" in v for v in values):
        log.error("provider_not_served_bad_headers", provider=spec.name)
        return None
    return spec


async def list_provider_specs(conn: Conn, settings: Settings) -> list[ProviderSpec]:
    """Every provider that is served (not removed), built-ins first."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM providers WHERE removed_at IS NULL ORDER BY builtin DESC, name"
    )
    return [spec for row in rows if (spec := _spec(row, settings)) is not None]


async def get_provider_spec(conn: Conn, name: str, settings: Settings) -> ProviderSpec | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM providers WHERE name = $1 AND removed_at IS NULL", name
    )
    return None if row is None else _spec(row, settings)


async def add_provider(
    conn: Conn,
    name: str,
    kind: str,
    base_url: str,
    auth_header: str | None,
    headers: list[str],
) -> ProviderSpec:
    """Register a provider (or bring back a removed one with this configuration).
    The caller publishes `invalidation.PROVIDERS_MESSAGE` and writes the audit row."""
    name = check_name(name)
    kind = check_kind(kind)
    url = check_base_url(base_url)
    auth = check_auth_header(auth_header, kind)
    fixed = check_headers(headers, auth)
    if name in BUILTINS:
        raise ProviderConfigError(f"provider {name!r} is built in")
    earlier = await conn.fetchrow(
        "SELECT kind, base_url, auth_header FROM providers WHERE name = $1 FOR UPDATE", name
    )
    row = await conn.fetchrow(
        "INSERT INTO providers (name, kind, base_url, auth_header, headers)"
        " VALUES ($1, $2, $3, $4, $5::jsonb)"
        " ON CONFLICT (name) DO UPDATE SET kind = EXCLUDED.kind, base_url = EXCLUDED.base_url,"
        " auth_header = EXCLUDED.auth_header, headers = EXCLUDED.headers, removed_at = NULL,"
        " updated_at = now()"
        " WHERE providers.removed_at IS NOT NULL"
        f" RETURNING {_COLUMNS}",
        name,
        kind,
        url,
        None if auth == DEFAULT_AUTH_HEADER[kind] else auth,
        orjson.dumps([list(pair) for pair in fixed]).decode(),
    )
    if row is None:
        raise ProviderConfigError(f"provider {name!r} already exists")
    stored_auth = None if auth == DEFAULT_AUTH_HEADER[kind] else auth
    if earlier is not None and (earlier["kind"], earlier["base_url"], earlier["auth_header"]) != (
        kind,
        url,
        stored_auth,
    ):  # brought back elsewhere: its old secrets must not go to the new place unasked
        await conn.execute(
            "UPDATE provider_keys SET status = 'disabled', updated_at = now(),"
            " status_reason = 'provider added again with another kind, URL or auth header'"
            " WHERE provider = $1 AND status = 'active'",
            name,
        )
    return ProviderSpec(name, kind, url, auth, fixed)


async def remove_provider(conn: Conn, name: str) -> None:
    """Stop routing a provider; its keys, thresholds and usage records stay."""
    if name in BUILTINS:
        raise ProviderConfigError(f"provider {name!r} is built in and cannot be removed")
    result = await conn.execute(
        "UPDATE providers SET removed_at = now(), updated_at = now()"
        " WHERE name = $1 AND removed_at IS NULL",
        name,
    )
    if not result.endswith(" 1"):
        raise ProviderConfigError(f"no provider {name!r}")


async def served_names(conn: Conn) -> list[str]:
    return [r["name"] for r in await conn.fetch(
        "SELECT name FROM providers WHERE removed_at IS NULL ORDER BY builtin DESC, name"
    )]  # fmt: skip
