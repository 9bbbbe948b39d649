"""Small shared test helpers with no fixtures."""

from __future__ import annotations

import socket

SECRET_KEY = "test-secret-key-that-is-long-enough-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
