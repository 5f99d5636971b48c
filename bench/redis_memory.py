"""Redis memory per open order and per retained closed order (issue 18), measured on the real
projector writing the real views into the test profile's Redis:

    make bench BENCH_ARGS=...   or   python -m ops.stack with-servers --profile test -- python -m bench.redis_memory

N GTC limit orders from C clients rest in the book (spread over L price levels): used_memory
grows by "per open order". Then every one of them is cancelled: it stays in Redis as a retained
closed order (record, the client's closed index, the retention index) while the book
levels and open indexes are gone: used_memory relative to the empty views is "per retained
closed order". A retention sweep then removes them all (what is left is the per-client residue).
Views under their own key prefix; the prefix is deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid

import redis.asyncio as aioredis

from contracts.enums import CancelReason, OrderType, Side, StpMode, TimeInForce
from contracts.messages import OrderAccepted, OrderCancelled
from query_service.app import Services
from query_service.projector import Projector
from query_service.settings import QuerySettings
from tests.support.query import instruments_file, wipe


async def used(r) -> int:
    await asyncio.sleep(0.05)
    return int((await r.info("memory"))["used_memory"])


async def run(n: int, clients: int, levels: int) -> dict:
    inst = "MEM-USD"
    base = QuerySettings.from_env()
    settings = base.replace(redis_prefix=f"mem{uuid.uuid4().hex[:6]}:", instruments_file=instruments_file([inst]),
                            retention_s=1.0)
    s = Services(settings)
    p = Projector(settings, s.instruments, s.projector_redis, s.bus, s.journal, s.metrics)
    r = aioredis.Redis.from_url(settings.redis_url)
    ts0 = time.time_ns() - 10 * 1_000_000_000
    seq = 0
    try:
        empty = await used(r)
        events = []
        for k in range(n):
            seq += 1
            events.append(OrderAccepted(
                instrument=inst, seq=seq, ts=ts0 + seq, order_id=str(uuid.UUID(int=k + 1)),
                client_id=f"client-{k % clients:04d}", side=Side.BUY if k % 2 else Side.SELL,
                order_type=OrderType.LIMIT, price=(10_000 - k % levels) if k % 2 else (10_001 + k % levels),
                quantity=100_000_000, tif=TimeInForce.GTC, post_only=False, stp=StpMode.CANCEL_NEWEST))
        for i in range(0, len(events), 1000):
            await p.apply(inst, events[i:i + 1000])
        opened = await used(r)
        events = []
        for k in range(n):
            seq += 1
            events.append(OrderCancelled(instrument=inst, seq=seq, ts=ts0 + seq, order_id=str(uuid.UUID(int=k + 1)),
                                         client_id=f"client-{k % clients:04d}", reason=CancelReason.USER,
                                         cancelled_quantity=100_000_000, filled_quantity=0))
        for i in range(0, len(events), 1000):
            await p.apply(inst, events[i:i + 1000])
        closed = await used(r)
        removed, _ = await s.retention.sweep(now_s=time.time() + 10)
        swept = await used(r)
        return {
            "orders": n, "clients": clients, "levels": levels,
            "used_memory_empty": empty,
            "bytes_per_open_order": round((opened - empty) / n, 1),
            "bytes_per_retained_closed_order": round((closed - empty) / n, 1),
            "bytes_after_sweep_per_order": round((swept - empty) / n, 1),
            "swept_orders": removed,
        }
    finally:
        await wipe(settings.redis_url, settings.redis_prefix)
        await r.aclose()
        await s.redis.aclose()
        await s.projector_redis.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", type=int, default=100_000)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--levels", type=int, default=200)
    a = ap.parse_args()
    print(json.dumps(asyncio.run(run(a.orders, a.clients, a.levels)), indent=1))


if __name__ == "__main__":
    main()
