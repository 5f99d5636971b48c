"""API-key authentication and per-key rate limits for the write side."""

from __future__ import annotations

import time
from dataclasses import dataclass

from command_service.journal import JournalWriter
from contracts.api import ApiError
from contracts.auth import bearer_token, hash_api_key
from contracts.ratelimit import TokenBuckets, rate_limit_fields  # noqa: F401 (re-exported for ws)

SCOPES = ("read", "trade", "admin")
"""Key scopes: read (own orders, fills, positions), trade (read + place/cancel/amend), admin."""


def scope_of_kind(kind: str) -> str:
    """api_keys.kind -> scope ('trader' is the pre-scope name of 'trade')."""
    return "trade" if kind == "trader" else kind if kind in SCOPES else "read"


@dataclass(frozen=True, slots=True)
class Principal:
    client_id: str | None  # None: auth disabled, the body's client_id is trusted
    is_admin: bool
    rate_key: str
    scope: str = "trade"

    def may_act_for(self, client_id: str) -> bool:
        return self.is_admin or self.client_id is None or self.client_id == client_id

    def require_trade(self) -> None:
        if self.scope == "read":
            raise ApiError(403, "insufficient_scope", "this API key may only read; a trade key is required")


OPEN = Principal(client_id=None, is_admin=True, rate_key="open", scope="admin")


class Authenticator:
    """Bearer key -> Principal. Keys are looked up by hash; results are cached briefly so
    the hot path does not hit PostgreSQL per request (a revoked key stops working within
    `ttl` seconds)."""

    def __init__(self, journal: JournalWriter, enabled: bool, ttl: float = 30.0):
        self.journal = journal
        self.enabled = enabled
        self.ttl = ttl
        self._cache: dict[bytes, tuple[float, Principal | None]] = {}

    async def authenticate(self, authorization: str | None) -> Principal:
        if not self.enabled:
            return OPEN
        key = bearer_token(authorization)
        if key is None:
            raise ApiError(401, "unauthorized", "missing API key: send Authorization: Bearer <key>")
        return await self.principal_for_key(key)

    async def principal_for_key(self, key: str) -> Principal:
        if not self.enabled:
            return OPEN
        h = hash_api_key(key)
        now = time.monotonic()
        hit = self._cache.get(h)
        if hit is None or hit[0] < now:
            row = await self.journal.find_api_key(h)
            principal = (Principal(row["client_id"], row["kind"] == "admin", h.hex()[:16], scope_of_kind(row["kind"]))
                         if row else None)
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[h] = (now + (self.ttl if principal else 2.0), principal)
        else:
            principal = hit[1]
        if principal is None:
            raise ApiError(401, "unauthorized", "unknown or revoked API key")
        return principal


class RateLimiter:
    """Token bucket per key (contracts.ratelimit): `rate` tokens/s, up to `burst`; rate 0 =
    unlimited. `check` charges one token and returns the RateLimit headers (None when off),
    or raises 429 carrying them and Retry-After."""

    def __init__(self, rate: float, burst: int, name: str = "default"):
        self._buckets = TokenBuckets(rate, burst, name)
        self.rate = rate
        self.burst = self._buckets.burst

    def check(self, key: str) -> dict | None:
        ok, headers, _ = self._buckets.take(key)
        if not ok:
            raise ApiError(429, "rate_limited", f"rate limit of {self.rate:g}/s exceeded", None, headers)
        return headers
