"""API key -> client, read from PostgreSQL's api_keys (read-only), cached briefly."""

from __future__ import annotations

import time

import msgspec

from contracts.api import ApiError
from contracts.auth import bearer_token, hash_api_key
from query_service.journal import JournalReader


class Identity(msgspec.Struct, frozen=True):
    client_id: str
    kind: str  # trader | admin

    @property
    def admin(self) -> bool:
        return self.kind == "admin"


class Authenticator:
    """Caches hits for `ttl` seconds and misses for a few: a revoked key stops working on
    this replica within `ttl`; unknown keys do not hammer PostgreSQL."""

    def __init__(self, journal: JournalReader, enabled: bool, ttl: float = 30.0, negative_ttl: float = 2.0):
        self.journal = journal
        self.enabled = enabled
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._cache: dict[bytes, tuple[float, Identity | None]] = {}

    async def identify(self, key: str | None) -> Identity | None:
        if not key:
            return None
        h = hash_api_key(key)
        now = time.monotonic()
        hit = self._cache.get(h)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            row = await self.journal._pool().fetchrow(
                "SELECT client_id, kind FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", h
            )
        except Exception:
            raise ApiError(503, "unavailable", "cannot check the api key right now") from None
        ident = Identity(row[0], row[1]) if row else None
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[h] = (now + (self.ttl if ident else self.negative_ttl), ident)
        return ident

    async def from_header(self, authorization: str | None) -> Identity | None:
        return await self.identify(bearer_token(authorization))

    async def require_client(self, authorization: str | None, client_id: str | None) -> str:
        """The client whose data may be read: 401 without a valid key, 403 for another
        client's data (admins may read anyone's). With auth disabled the parameter rules."""
        if not self.enabled:
            if not client_id:
                raise ApiError(400, "missing_field", "client_id is required", "client_id")
            return client_id
        key = bearer_token(authorization)
        if key is None:
            raise ApiError(401, "unauthorized", "an api key is required (Authorization: Bearer <key>)")
        ident = await self.identify(key)
        if ident is None:
            raise ApiError(401, "unauthorized", "invalid or revoked api key")
        if not client_id:
            return ident.client_id
        if client_id != ident.client_id and not ident.admin:
            raise ApiError(403, "forbidden", "this key may only read its own client's data", "client_id")
        return client_id
