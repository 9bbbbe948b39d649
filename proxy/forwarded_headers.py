"""The client headers that go upstream, and the provider's own (contract
sections 5 and 10): hop-by-hop headers, the ones `Connection` names, the
client's credentials and the provider's fixed headers are never passed on."""

from __future__ import annotations

import functools

from aiohttp import web
from multidict import CIMultiDictProxy

from proxy.keypool import UpstreamKey
from proxy.upstream.client import header_fields
from shared.provider_config import HOP_BY_HOP_HEADERS, ProviderSpec

# Client headers never sent upstream (auth, hop-by-hop, recomputed ones). The
# headers that the client's `Connection` names are hop-by-hop too (RFC 9110 7.6.1).
_DROP_REQUEST_HEADERS = HOP_BY_HOP_HEADERS | {
    "host",
    "authorization",
    "x-api-key",
    "x-goog-api-key",
    "content-length",
    # the body goes upstream as it was read; never claim an encoding for it
    "content-encoding",
    "cookie",
    "expect",  # the body is sent whole at once; a 100 Continue would be noise
    "accept-encoding",
    "content-type",
    # these scope a request to an OpenAI account: the provider key's, not the client's
    "openai-organization",
    "openai-project",
}


def upstream_headers(
    request: web.Request, key: UpstreamKey, spec: ProviderSpec | None = None
) -> list[tuple[str, str]]:
    """The client's headers minus what never goes upstream, then the provider's
    fixed headers (which replace the client's of that name) and the key's auth."""
    received = request.headers
    drop = _dropped(received, spec)
    headers = [(name, value) for name, value in received.items() if name.lower() not in drop]
    if spec is not None and spec.kind == "gemini":  # field masks, method overrides, projects
        headers = [(n, v) for n, v in headers if not _shapes_google_answer(n.lower())]
    headers.append(("Content-Type", "application/json"))
    if spec is not None and spec.headers:
        headers.extend(spec.headers)
    headers.append(key.auth)
    return headers


def upstream_header_block(request: web.Request, key: UpstreamKey, spec: ProviderSpec) -> str:
    """`upstream_headers` as the request's header lines (`Name: value\r\n` each),
    made in one pass: the hot path. Checked as one block: its only line breaks
    end its lines (aiohttp's parser lets no colon into a client's header name;
    configured names are checked when they are configured)."""
    if spec.kind == "gemini":
        return header_fields(upstream_headers(request, key, spec))
    received = request.headers
    drop = _dropped(received, spec)
    lines = [f"{name}: {value}\r\n" for name, value in received.items() if name.lower() not in drop]
    lines.append(_CONTENT_TYPE_LINE)
    lines.extend(f"{name}: {value}\r\n" for name, value in spec.headers)
    name, value = key.auth
    lines.append(f"{name}: {value}\r\n")
    block = "".join(lines)
    if block.count("\n") != len(lines) or block.count("\r") != len(lines):
        return header_fields(upstream_headers(request, key, spec))  # raises, naming it
    return block


_CONTENT_TYPE_LINE = "Content-Type: application/json\r\n"


def _dropped(received: CIMultiDictProxy[str], spec: ProviderSpec | None) -> frozenset[str]:
    """The names not to forward: the usual ones, those the client's `Connection`
    names, and those the provider sets itself."""
    replaced = spec.replaced if spec is not None else frozenset()
    connection = received.getall("connection", None)
    if connection:  # SDKs send `Connection: keep-alive`: one cached lookup
        return _drop_with(connection[0] if len(connection) == 1 else ",".join(connection), replaced)
    if replaced:
        return _drop_with("", replaced)
    return _DROP_REQUEST_HEADERS


def _shapes_google_answer(name: str) -> bool:
    """`X-Goog-FieldMask` could drop `usageMetadata`, `X-HTTP-Method-Override`
    change the call; only the client library's own tag passes."""
    return (name.startswith("x-goog-") and name != "x-goog-api-client") or name in (
        "x-http-method-override",
        "x-server-timeout",
    )


@functools.lru_cache(maxsize=256)
def _drop_with(connection: str, replaced: frozenset[str] = frozenset()) -> frozenset[str]:
    """The headers not to forward when the client's `Connection` says
    `connection`: the usual ones, every name it lists (any case), and the ones
    the provider sets itself (`replaced`)."""
    named = (name.strip().lower() for name in connection.split(","))
    return _DROP_REQUEST_HEADERS.union(replaced, (name for name in named if name))
