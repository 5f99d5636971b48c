"""API-key authentication and per-key rate limits for the write side."""

from __future__ import annotations

from command_service.journal import JournalWriter
from contracts.api import ApiError
from contracts.auth import Authenticator, bearer_token
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


class AddressLimiter:
    """Failed authentications per client address (issue 20): every request with an unknown key
    costs a PostgreSQL lookup (the negative cache only helps when the same key repeats), so an
    address whose bucket of failures is empty is answered 429 before any lookup - unless its key
    is one the cache already knows as valid (a good client behind the same address is not
    locked out by a bad one). Keys that authenticate are limited per key, not here."""

    def __init__(self, rate: float, burst: int, trusted_proxies: tuple[str, ...] = ()):
        self._buckets = TokenBuckets(rate, burst, "unauthenticated")
        self.rate = rate
        self.trusted = frozenset(trusted_proxies)

    def address(self, peer: str, real_ip: str | None) -> str:
        return real_ip.strip() if real_ip and peer in self.trusted else peer

    def exhausted(self, address: str) -> bool:
        return self._buckets.exhausted(address)

    def refuse(self, address: str) -> ApiError:
        _, headers, _ = self._buckets.take(address)
        return ApiError(429, "rate_limited", f"too many failed authentications from this address "
                        f"(limit {self.rate:g}/s)", None, headers)

    def failed(self, address: str) -> None:
        self._buckets.take(address)


async def authenticate_guarded(st, authorization: str | None, client_host: str):
    """st.auth.authenticate behind the per-address limit of failed authentications
    (command_service.auth.AddressLimiter): 429 before any lookup when the address used it up."""
    guard = st.unauth
    if guard.exhausted(client_host) and st.auth.known(authorization) is None:
        raise guard.refuse(client_host)
    try:
        return await st.auth.authenticate(authorization)
    except ApiError as exc:
        if exc.status == 401 and bearer_token(authorization) is not None:
            guard.failed(client_host)  # a key was looked up and failed: that is what costs
        raise
