"""API key format and hashing, shared by both services (pure: no I/O).

Keys are random, shown once at creation, and stored only as sha256(key): a stolen table
does not give working keys. Lookups hash the presented key and compare by primary key.
"""

import hashlib
import secrets

KEY_PREFIX = "exk_"


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def bearer_token(authorization: str | None) -> str | None:
    """The key from an `Authorization: Bearer <key>` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
