"""Token buckets and the IETF httpapi RateLimit fields (draft-ietf-httpapi-ratelimit-headers),
shared by the command service (per key) and the query replicas (reads, per key else per
client address). No I/O; time from time.monotonic.

RateLimit-Policy: `"<name>";q=<burst>;w=<seconds to refill a whole burst>`
RateLimit:        `"<name>";r=<requests left now>;t=<seconds until the bucket is full again>`
A WebSocket answer carries the same figures as `rate_limit: {limit, remaining, reset}`.
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Callable


class TokenBuckets:
    """One bucket per key: `rate` tokens/s up to `burst`; rate <= 0 turns the limit off.

    Bounded by the keys active within one refill time, not by every key ever seen: a bucket that
    has refilled to `burst` is the same as no bucket (a new key starts full), so such buckets are
    swept out whenever the table has doubled since the last sweep (amortised O(1) per new key).
    Keys per WebSocket connection and per client address would otherwise pile up to `max_keys`
    (~200 B each). `max_keys` stays the last resort against a flood of distinct keys that are all
    mid-refill: beyond max_keys / 2 after a sweep the oldest are dropped (those keys start full again)."""

    SWEEP_MIN = 1024  # no sweep below this many buckets

    def __init__(self, rate: float, burst: int, name: str = "default", max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = max(int(burst), 1)
        self.name = name
        self.max_keys = max_keys
        self.clock = clock
        self.policy = f'"{name}";q={self.burst};w={max(1, math.ceil(self.burst / rate))}' if rate > 0 else ""
        self._buckets: dict[str, list[float]] = {}
        self._sweep_at = self.SWEEP_MIN

    def __len__(self) -> int:
        return len(self._buckets)

    def _sweep(self, now: float) -> None:
        burst, rate = self.burst, self.rate
        self._buckets = {k: b for k, b in self._buckets.items() if b[0] + (now - b[1]) * rate < burst}
        keep = self.max_keys // 2
        if len(self._buckets) > keep:  # every sweep at least halves the table: amortised O(1)
            self._buckets = dict(itertools.islice(self._buckets.items(), len(self._buckets) - keep, None))
        self._sweep_at = min(max(self.SWEEP_MIN, 2 * len(self._buckets)), self.max_keys)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str) -> tuple[bool, dict[str, str] | None, int]:
        """Charge one token: (allowed, RateLimit headers or None when off, Retry-After s)."""
        if self.rate <= 0:
            return True, None, 0
        now = self.clock()
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= self._sweep_at:
                self._sweep(now)
            b = self._buckets[key] = [float(self.burst), now]
        tokens = min(self.burst, b[0] + (now - b[1]) * self.rate)
        b[1] = now
        if tokens < 1.0:
            b[0] = tokens
            headers = self.headers(tokens)
            retry = max(1, math.ceil((1.0 - tokens) / self.rate))
            headers["Retry-After"] = str(retry)
            return False, headers, retry
        tokens -= 1.0
        b[0] = tokens
        return True, self.headers(tokens), 0

    def exhausted(self, key: str) -> bool:
        """Would `take` refuse now? (Nothing is charged.)"""
        if self.rate <= 0:
            return False
        b = self._buckets.get(key)
        return b is not None and b[0] + (time.monotonic() - b[1]) * self.rate < 1.0

    def headers(self, tokens: float) -> dict[str, str]:
        reset = math.ceil((self.burst - tokens) / self.rate)
        return {"RateLimit-Policy": self.policy, "RateLimit": f'"{self.name}";r={int(tokens)};t={reset}'}


def rate_limit_fields(headers: dict[str, str] | None) -> dict[str, int] | None:
    """The RateLimit header figures as a JSON object for WebSocket answers."""
    if not headers:
        return None
    _, r, t = headers["RateLimit"].split(";")
    q = headers["RateLimit-Policy"].split(";")[1]
    return {"limit": int(q[2:]), "remaining": int(r[2:]), "reset": int(t[2:])}
