"""`/public/...`: the files of proxy/static/ (the docs' images), nothing else.

A path is served only when every segment is a plain name (letters, digits,
`.`, `_`, `-`, not starting with a dot), the file resolves inside
proxy/static/ and its suffix is one of a few known types; anything else is a
404, however it is encoded (`..`, `%2e%2e`, `%2f`, backslashes, dotfiles).
"""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

STATIC_ROOT = (Path(__file__).resolve().parent / "static").resolve()
PUBLIC_PREFIX = "/public"
CACHE_CONTROL = "public, max-age=3600"

_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
_MAX_DEPTH = 6
_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".ico": "image/x-icon",
    ".css": "text/css",
    ".txt": "text/plain",
}


def resolve(relative: str, root: Path = STATIC_ROOT) -> Path | None:
    """The file `relative` (as decoded from the URL) names under `root`, or None."""
    parts = relative.split("/")
    if not 0 < len(parts) <= _MAX_DEPTH:
        return None
    if not all(_SEGMENT.fullmatch(part) and ".." not in part for part in parts):
        return None
    path = root.joinpath(*parts)
    if path.suffix.lower() not in _TYPES:
        return None
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not resolved.is_relative_to(root) or not resolved.is_file():
        return None
    return resolved


async def public_file(request: web.Request) -> web.StreamResponse:
    """GET/HEAD `/public/{path}`: the file with its type and cache headers."""
    path = resolve(request.match_info.get("path", ""))
    if path is None:
        raise web.HTTPNotFound(text="not found")
    headers = {
        "Content-Type": _TYPES[path.suffix.lower()],
        "Cache-Control": CACHE_CONTROL,
        "X-Content-Type-Options": "nosniff",
    }
    return web.FileResponse(path, headers=headers)
