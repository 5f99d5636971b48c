"""API keys, shared by both services: format, hashing, the principal a key stands for, and
the cached key -> principal lookup (pure: the database lookup is passed in).

Keys are random, shown once at creation, and stored only as sha256(key): a stolen table
does not give working keys. Lookups hash the presented key and compare by primary key.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from contracts.api import ApiError

KEY_PREFIX = "exk_"

SCOPES = ("read", "trade", "admin")
"""Key scopes: read (own orders, fills, positions), trade (read + place/cancel/amend), admin."""


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


def scope_of_kind(kind: str) -> str:
    """api_keys.kind -> scope ('trader' is the pre-scope name of 'trade')."""
    return "trade" if kind == "trader" else kind if kind in SCOPES else "read"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts for. client_id None: auth disabled, the request's client_id is trusted."""

    client_id: str | None
    is_admin: bool
    rate_key: str
    scope: str = "trade"

    def may_act_for(self, client_id: str) -> bool:
        return self.is_admin or self.client_id is None or self.client_id == client_id

    def require_trade(self) -> None:
        if self.scope == "read":
            raise ApiError(403, "insufficient_scope", "this API key may only read; a trade key is required")


SESSION_RECHECK_S = 5.0
"""How often an open WebSocket session (`/ws`, `/stream`) asks the Authenticator about its key
again. With the key cache's ttl (30 s by default) every session of a revoked key is closed
within ttl + SESSION_RECHECK_S (35 s); new requests are refused within the ttl."""

REVOKED_CLOSE_CODE = 4401
"""WebSocket close code of a session whose key was revoked (as for a refused `/ws` upgrade)."""

OPEN = Principal(client_id=None, is_admin=True, rate_key="open", scope="admin")
"""The principal of every request when auth is disabled."""

KeyLookup = Callable[[bytes], Awaitable[tuple[str, str] | None]]
"""key hash -> (client_id, kind) of a live (not revoked) key, or None."""


class Authenticator:
    """Key -> Principal, looked up by hash and cached so hot paths do not hit PostgreSQL per
    request: hits for `ttl` seconds (a revoked key stops working within `ttl`), misses for
    `negative_ttl` (unknown keys do not hammer PostgreSQL). Errors of the lookup propagate."""

    MAX_ENTRIES = 100_000

    def __init__(self, lookup: KeyLookup, enabled: bool, ttl: float = 30.0, negative_ttl: float = 2.0):
        self._lookup = lookup
        self.enabled = enabled
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._cache: dict[bytes, tuple[float, Principal | None]] = {}

    async def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an `Authorization` header: 401 without a valid key."""
        if not self.enabled:
            return OPEN
        key = bearer_token(authorization)
        if key is None:
            raise ApiError(401, "unauthorized", "missing API key: send Authorization: Bearer <key>")
        return await self.principal_for_key(key)

    async def principal_for_key(self, key: str) -> Principal:
        if not self.enabled:
            return OPEN
        principal = await self.identify(key)
        if principal is None:
            raise ApiError(401, "unauthorized", "unknown or revoked API key")
        return principal

    async def require_client(self, authorization: str | None, client_id: str | None) -> str:
        """The client whose data may be read: 401 without a valid key, 403 for another
        client's data (admins may read anyone's). With auth disabled the parameter rules."""
        if not self.enabled:
            if not client_id:
                raise ApiError(400, "missing_field", "client_id is required", "client_id")
            return client_id
        principal = await self.authenticate(authorization)
        if not client_id:
            return principal.client_id or ""
        if not principal.may_act_for(client_id):
            raise ApiError(403, "forbidden", "this key may only read its own client's data", "client_id")
        return client_id

    def known(self, authorization: str | None) -> Principal | None:
        """The cached principal of a valid key, without a lookup (None otherwise)."""
        key = bearer_token(authorization) if self.enabled else None
        if not key:
            return None
        hit = self._cache.get(hash_api_key(key))
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    async def revoked(self, key: str) -> bool:
        """True when the key is now unknown or revoked. A lookup that fails (database
        unreachable) is not a revocation: open sessions keep working through an outage."""
        if not self.enabled:
            return False
        try:
            return await self.identify(key) is None
        except ApiError:
            return False

    async def identify(self, key: str | None) -> Principal | None:
        """The principal of a key, None for an unknown or revoked one (or no key)."""
        if not key:
            return None
        h = hash_api_key(key)
        now = time.monotonic()
        hit = self._cache.get(h)
        if hit is not None and hit[0] > now:
            return hit[1]
        row = await self._lookup(h)
        principal = Principal(row[0], row[1] == "admin", h.hex()[:16], scope_of_kind(row[1])) if row else None
        if len(self._cache) >= self.MAX_ENTRIES:
            # Bounded: a flood of distinct unknown keys must not grow memory; a clear costs one
            # lookup per live key afterwards.
            self._cache.clear()
        self._cache[h] = (now + (self.ttl if principal else self.negative_ttl), principal)
        return principal
