"""Which adapter serves a path under `/v1/{provider}/`, by the provider's kind
(contract section 5), and where upstream it goes.

Kind openai and anthropic: `/v1/{NAME}/{endpoint}` goes to
`{base_url}/{endpoint}` (anthropic's `v1/` prefix dropped). Kind gemini:
`{v}/models/{model}:{method}` goes to `{base_url}/{v}/models/{model}:{method}`
with the client's query minus `key`. Anything else is not a route: 404.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from aiohttp import web
from multidict import MultiMapping

from proxy.errors import ProxyError
from proxy.providers import ADAPTERS, GEMINI_JSON_STREAM, Adapter
from proxy.upstream import Target, parse_target
from shared.provider_config import ProviderSpec


@dataclass(frozen=True, slots=True)
class Call:
    """One request to a provider path: who serves it, how, and where upstream."""

    provider: ProviderSpec
    adapter: Adapter
    target: Target
    model: str | None = None  # from the path (Gemini), else from the body


# kind -> path under /v1/{NAME}/ -> (adapter, path under the base URL)
_POSTS: dict[str, dict[str, tuple[Adapter, str]]] = {
    "openai": {
        endpoint: (ADAPTERS[("openai", endpoint)], endpoint)
        for endpoint in ("chat/completions", "responses", "embeddings", "completions")
    },
    "anthropic": {
        path: (ADAPTERS[("anthropic", endpoint)], endpoint)
        for endpoint in ("messages", "messages/count_tokens")
        for path in (endpoint, f"v1/{endpoint}")
    },
}
_GEMINI_CALL = re.compile(
    r"(?P<v>v1|v1beta)/models/(?P<model>[^/:]+):"
    r"(?P<method>generateContent|streamGenerateContent|countTokens)"
)
_GEMINI_MODELS = re.compile(r"(?P<v>v1|v1beta)/models(?:/(?P<model>[^/:]+))?")
# kind -> the GET paths that list the catalog's models
_LISTS: dict[str, frozenset[str]] = {
    "openai": frozenset({"models"}),
    "anthropic": frozenset({"models", "v1/models"}),
}


@lru_cache(maxsize=4096)
def target(base_url: str, path: str) -> Target:
    return parse_target(f"{base_url}/{path}")


def resolve(spec: ProviderSpec, tail: str, request: web.Request) -> Call | None:
    """The call a POST to `/v1/{spec.name}/{tail}` makes, or None (404). Only
    kind gemini reads the query."""
    if spec.kind == "gemini":
        return _gemini_call(spec, tail, request.query)
    return _fixed_call(spec, tail)


def _fixed_call(spec: ProviderSpec, tail: str) -> Call | None:
    """Kinds openai and anthropic: the call depends on the path alone."""
    found = _POSTS[spec.kind].get(tail)
    return None if found is None else _call_of(spec, found)


@lru_cache(maxsize=1024)
def _call_of(spec: ProviderSpec, found: tuple[Adapter, str]) -> Call:
    """Made once per provider configuration and metered path (never for a miss,
    so unknown paths cannot push these out)."""
    adapter, path = found
    return Call(spec, adapter, target(spec.base_url, path))


def exact_paths(kind: str) -> list[str]:
    """The metered paths under `/v1/{NAME}/` of a provider of kind openai or
    anthropic (a path pattern for gemini: none)."""
    return list(_POSTS.get(kind, ()))


def _gemini_call(spec: ProviderSpec, tail: str, query: MultiMapping[str]) -> Call | None:
    match = _GEMINI_CALL.fullmatch(tail)
    if match is None:
        return None
    method = match["method"]
    sse = _check_gemini_query(query, method)
    if method == "streamGenerateContent" and not sse:
        adapter = GEMINI_JSON_STREAM
    else:
        adapter = ADAPTERS[("gemini", method)]
    path = tail + ("?alt=sse" if sse else "")
    return Call(spec, adapter, target(spec.base_url, path), match["model"])


def _check_gemini_query(query: MultiMapping[str], method: str) -> bool:
    """Whether the client asked for SSE. Only `key` (the proxy key, never sent on)
    and `alt=sse` on a stream are taken: Google's system parameters (`fields`,
    `$alt`, `callback`, `prettyPrint`...) could strip `usageMetadata` or change the
    answer's format, so the proxy could not bill it; they are refused."""
    sse = False
    for name, value in query.items():
        if name == "key":
            continue
        if name == "alt" and value == "sse" and method == "streamGenerateContent" and not sse:
            sse = True
            continue
        raise ProxyError(
            400, f"Query parameter {name!r} is not supported here", code="unsupported_parameter"
        )
    return sse


@dataclass(frozen=True, slots=True)
class Listing:
    """A GET answered from the catalog: every model, or one (Gemini)."""

    model: str | None = None
    one: bool = False


def listing(spec: ProviderSpec, tail: str) -> Listing | None:
    if spec.kind == "gemini":
        match = _GEMINI_MODELS.fullmatch(tail)
        if match is None:
            return None
        return Listing(match["model"], one=match["model"] is not None)
    return Listing() if tail in _LISTS[spec.kind] else None
