"""Proxy-key generation and hashing; provider-key encryption at rest."""

from __future__ import annotations

import base64
import hashlib
import secrets

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PROXY_KEY_PREFIX = "mw-"
VISIBLE_PREFIX_LEN = 10


def new_proxy_key() -> str:
    """A fresh proxy key: `mw-` and 40 url-safe random characters (240 bits)."""
    return PROXY_KEY_PREFIX + secrets.token_urlsafe(30)


def hash_proxy_key(key: str) -> bytes:
    """Proxy keys are high-entropy random strings: one SHA-256 is the right hash."""
    return hashlib.sha256(key.encode()).digest()


def visible_prefix(secret: str) -> str:
    """The part of a key that may be shown and logged: at most a third of it."""
    return secret[: min(VISIBLE_PREFIX_LEN, len(secret) // 3)]


def derive_key(secret_key: str, purpose: str) -> bytes:
    """A 32-byte key for one purpose, derived from METERWAY_SECRET_KEY."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode())
    return hkdf.derive(secret_key.encode())


class SecretBox:
    """Encrypts provider keys at rest (Fernet: AES-128-CBC + HMAC-SHA256)."""

    def __init__(self, secret_key: str) -> None:
        key = derive_key(secret_key, "meterway provider-key encryption v1")
        self._fernet = Fernet(base64.urlsafe_b64encode(key))

    def encrypt(self, plaintext: str) -> bytes:
        return self._fernet.encrypt(plaintext.encode())

    def decrypt(self, token: bytes) -> str:
        try:
            return self._fernet.decrypt(bytes(token)).decode()
        except InvalidToken as exc:
            raise ValueError(
                "cannot decrypt a provider key: METERWAY_SECRET_KEY differs from the one "
                "it was stored with"
            ) from exc
