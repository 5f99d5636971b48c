"""API-key authentication and per-key rate limits for the write side."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from command_service.journal import JournalWriter
from contracts.api import ApiError
from contracts.auth import bearer_token, hash_api_key


@dataclass(frozen=True, slots=True)
class Principal:
    client_id: str | None  # None: auth disabled, the body's client_id is trusted
    is_admin: bool
    rate_key: str

    def may_act_for(self, client_id: str) -> bool:
        return self.is_admin or self.client_id is None or self.client_id == client_id


OPEN = Principal(client_id=None, is_admin=True, rate_key="open")


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
            principal = Principal(row["client_id"], row["kind"] == "admin", h.hex()[:16]) if row else None
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[h] = (now + (self.ttl if principal else 2.0), principal)
        else:
            principal = hit[1]
        if principal is None:
            raise ApiError(401, "unauthorized", "unknown or revoked API key")
        return principal


class RateLimiter:
    """Token bucket per key: `rate` tokens/s, up to `burst`. rate 0 = unlimited."""

    def __init__(self, rate: float, burst: int):
        self.rate = rate
        self.burst = max(burst, 1)
        self._buckets: dict[str, list[float]] = {}

    def check(self, key: str) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) > 100_000:
                self._buckets.clear()
            b = self._buckets[key] = [float(self.burst), now]
        tokens = min(self.burst, b[0] + (now - b[1]) * self.rate)
        b[1] = now
        if tokens < 1.0:
            b[0] = tokens
            retry = max(1, math.ceil((1.0 - tokens) / self.rate))
            raise ApiError(429, "rate_limited", f"rate limit of {self.rate:g}/s exceeded", None,
                            {"Retry-After": str(retry)})
        b[0] = tokens - 1.0
