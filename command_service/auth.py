"""API-key authentication and per-key rate limits for the write side."""

from __future__ import annotations

from command_service.journal import JournalWriter
from contracts.api import ApiError
from contracts.auth import Authenticator
from contracts.ratelimit import TokenBuckets


def authenticator(journal: JournalWriter, enabled: bool, ttl: float = 30.0) -> Authenticator:
    """contracts.auth.Authenticator on the writer's pool."""

    async def lookup(key_hash: bytes) -> tuple[str, str] | None:
        row = await journal.find_api_key(key_hash)
        return (row["client_id"], row["kind"]) if row else None

    return Authenticator(lookup, enabled, ttl)


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
