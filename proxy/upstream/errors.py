"""What can go wrong talking to a provider, as the relay needs to tell it apart."""

from __future__ import annotations


class UpstreamError(Exception):
    """The provider could not be reached, or the exchange broke."""


class ConnectFailed(UpstreamError):
    """No connection could be opened (refused, DNS, TLS handshake)."""


class ConnectTimeout(ConnectFailed, TimeoutError):
    """Opening the connection took longer than the connect timeout."""


class ReadTimeout(UpstreamError, TimeoutError):
    """The provider sent nothing for longer than the read timeout."""


class ConnectionBroken(UpstreamError):
    """The connection closed, or spoke broken HTTP, before the answer was complete."""

    def __init__(self, message: str, *, before_response: bool = False) -> None:
        super().__init__(message)
        # nothing of an answer had arrived: a reused idle connection the
        # provider had just closed, safe to try once more on a fresh one
        self.before_response = before_response
