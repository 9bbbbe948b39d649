"""The relay's HTTP client for providers (see `client`)."""

from proxy.upstream.client import Target, UpstreamClient, parse_target
from proxy.upstream.connection import UpstreamResponse
from proxy.upstream.errors import (
    ConnectFailed,
    ConnectionBroken,
    ConnectTimeout,
    ReadTimeout,
    UpstreamError,
)

__all__ = [
    "ConnectFailed",
    "ConnectTimeout",
    "ConnectionBroken",
    "ReadTimeout",
    "Target",
    "UpstreamClient",
    "UpstreamError",
    "UpstreamResponse",
    "parse_target",
]
