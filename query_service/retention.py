"""Retention of the Redis views (issue 18): closed orders and fills leave Redis after a window.

Redis holds every open order, and closed orders and fills for EXCHANGE_QUERY_RETENTION_S
(default 24 h); older history is served from PostgreSQL (the orders table, through the
read-only pool), with the same paging (views.orders merges both below the horizon).

How closed orders are found without scanning: when an order closes, the projector adds it
to its instrument's sorted set `{p}{I}:closed`, scored by the closing event's time (seconds),
member "client\ncreated_ts(19)|order_id" - everything needed to remove it from the client's
order indexes of that instrument. The sweeper (every replica runs one; the script is
idempotent and atomic, so two at once only share the work) removes up to BATCH of the oldest
entries per call: the order record, its client index entry and the closed entry itself.
Every key a script touches is the instrument's (one hash tag, one slot: redis_keys.py), so the
scripts run unchanged on a Redis Cluster.

Fills: members of a client's fill sets start with the fill's ts (19 digits), so everything
older than the cutoff is one ZREMRANGEBYLEX per set; the clients of each instrument are in
`{p}{I}:clients`.

Neither touches `{I}:seq`, the key the projector WATCHes: a sweep never aborts a batch, and
a closed order is never referenced by a later event, so a batch never reads a record the
sweeper is removing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from query_service.redis_keys import Keys

log = logging.getLogger("query_service.retention")

BATCH = 1000  # closed orders per script call (one call holds Redis for ~1 ms)
MAX_CALLS = 200  # per sweep: bounded, the next sweep continues

# KEYS[1] = the instrument's closed index, KEYS[2] = its orders hash; ARGV = cutoff (s), batch,
# the instrument's key base "{p}{I}:" (the keys built from it have the same hash tag).
SWEEP_ORDERS = """
local entries = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local base = ARGV[3]
for _, e in ipairs(entries) do
    local client, member = string.match(e, '^(.-)\\n(.*)$')
    if member then
        local oid = string.match(member, '^[^|]*|(.*)$')
        redis.call('ZREM', base .. 'co:' .. client .. ':closed', member)
        if oid then redis.call('HDEL', KEYS[2], oid) end
    end
    redis.call('ZREM', KEYS[1], e)
end
return #entries
"""

# KEYS[1] = the instrument's clients set; ARGV = the instrument's key base, exclusive lex bound.
SWEEP_FILLS = """
local base = ARGV[1]
local removed = 0
for _, c in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    removed = removed + redis.call('ZREMRANGEBYLEX', base .. 'cf:' .. c, '-', ARGV[2])
end
return removed
"""


def closed_entry(client: str, member: str) -> str:
    return f"{client}\n{member}"


class Retention:
    def __init__(self, redis, keys: Keys, symbols: list[str], retention_s: float, interval_s: float, metrics=None):
        self.redis = redis
        self.keys = keys
        self.symbols = symbols
        self.retention_s = retention_s
        self.interval_s = interval_s
        self.metrics = metrics
        self._task: asyncio.Task | None = None
        self._orders = redis.register_script(SWEEP_ORDERS)
        self._fills = redis.register_script(SWEEP_FILLS)

    def start(self) -> None:
        if self.retention_s > 0 and self.interval_s > 0:
            self._task = asyncio.create_task(self._loop(), name="retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # stopping: errors were logged in the loop
                await self._task

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("retention sweep failed: %r", exc)

    async def sweep(self, now_s: float | None = None) -> tuple[int, int]:
        """Remove what closed (orders) or happened (fills) before now - retention.
        Returns (orders removed, fills removed)."""
        cutoff = (time.time() if now_s is None else now_s) - self.retention_s
        orders = 0
        k = self.keys
        for inst in self.symbols:
            for _ in range(MAX_CALLS):
                n = int(await self._orders(keys=[k.closed(inst), k.orders(inst)],
                                           args=[repr(cutoff), BATCH, k.base(inst)]))
                orders += n
                if n < BATCH:
                    break
        bound = b"(" + f"{int(cutoff * 1e9):019d}".encode()
        fills = 0
        for inst in self.symbols:
            fills += int(await self._fills(keys=[k.clients(inst)], args=[k.base(inst), bound]))
        if orders or fills:
            log.info("retention: %d closed orders and %d fill entries left Redis (older than %.0f s)",
                     orders, fills, self.retention_s)
        return orders, fills
