"""Projection-lag benchmark: `python -m bench.query --rate 5000 --seconds 20 --reset`.

Plays the write side at a fixed event rate: the matching simulator makes realistic events
stamped with the wall clock, each 5 ms tick is written to the journal (COPY, like the
sequencer's batch) and produced to the topic keyed by instrument (like the relay). A
running query replica projects them; this tool listens to the NATS feed and measures,
per event, feed arrival time - event ts (= projection lag + one NATS hop).

DESTRUCTIVE with --reset: deletes the journal rows of the instruments and the views under
the Redis prefix. Only for benchmark stacks.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import msgspec
import nats
import redis.asyncio as aioredis

from contracts.env import nats_login_kwargs
from contracts.instruments import load_instruments
from contracts.topics import FEED_SUBJECT_PREFIX
from query_service.feed import decode_feed
from query_service.redis_keys import Keys
from query_service.settings import QuerySettings
from tests.support.order_flow import OrderFlow
from tests.support.query import JournalSeeder, Publisher, wipe


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


async def run(rate: int, seconds: float, reset: bool, settings: QuerySettings, with_journal: bool = True) -> dict:
    symbols = load_instruments(settings.instruments_file).symbols
    async with JournalSeeder(settings.pg_dsn) as journal:
        existing = await journal.conn.fetchval(
            "SELECT count(*) FROM events WHERE instrument = ANY($1::text[])", symbols
        )
        if existing and not reset:
            raise SystemExit(f"the journal has {existing} events for {symbols}: pass --reset (destructive)")
        if reset:
            await journal.clear(symbols)
            await wipe(settings.redis_url, settings.redis_prefix)
            await asyncio.sleep(2 * settings.watchdog_interval_s + 0.5)  # let the replica see empty views

        ts_of: dict[str, dict[int, int]] = {s: {} for s in symbols}
        lags: list[float] = []
        windows: dict[int, list[float]] = {}  # 10 s window of the send time -> lags
        t_start = time.time_ns()
        batches = 0
        nc = await nats.connect(settings.nats_url, **nats_login_kwargs(settings.nats_login))  # the query user: it reads the feed
        done = asyncio.Event()

        async def on_feed(msg):
            nonlocal batches
            now = time.time_ns()
            m = decode_feed(msg.data)
            batches += 1
            known = ts_of.get(m.instrument)
            if known is None:
                return
            for seq in range(m.prev_seq + 1, m.seq + 1):
                ts = known.pop(seq, None)
                if ts is not None:
                    lags.append((now - ts) / 1e9)
                    windows.setdefault((ts - t_start) // 10**10, []).append((now - ts) / 1e9)
            if finished and all(not ts_of[s] for s in symbols):
                done.set()

        finished = False
        await nc.subscribe(FEED_SUBJECT_PREFIX + ".*", cb=on_feed)
        # The flow is generated up front (the simulator is not what is measured); each
        # event is stamped with the wall clock when it is written, like the sequencer does.
        sims = {s: OrderFlow(instrument=s, seed=n + 1) for n, s in enumerate(symbols)}
        mids = {"BTC-USD": 7_000_000, "ETH-USD": 350_000, "SOL-USD": 150_000}
        for s, sim in sims.items():
            sim.mid = mids.get(s, 100_000)
        flow = []
        n = 0
        while len(flow) < rate * seconds:
            flow += sims[symbols[n % len(symbols)]].random_command()
            n += 1
        produced = 0
        async with Publisher(settings) as pub:
            start = time.monotonic()
            while (elapsed := time.monotonic() - start) < seconds and produced < len(flow):
                target = min(len(flow), int(rate * elapsed))
                if target > produced:
                    now = time.time_ns()
                    events = [msgspec.structs.replace(e, ts=now) for e in flow[produced:target]]
                    for e in events:
                        ts_of[e.instrument][e.seq] = now
                    if with_journal:
                        await journal.append(events)
                    await pub.publish(events)
                    produced = target
                await asyncio.sleep(0.005)
            finished = True
            try:
                await asyncio.wait_for(done.wait(), 30)
            except asyncio.TimeoutError:
                pass
            wall = time.monotonic() - start
        await nc.close()
        r = aioredis.Redis.from_url(settings.redis_url)
        seqs = {s: int(await r.get(Keys(settings.redis_prefix).seq(s)) or 0) for s in symbols}
        await r.aclose()
        missing = sum(len(v) for v in ts_of.values())
        return {
            "events": produced,
            "seconds": round(wall, 2),
            "rate": round(produced / seconds),
            "feed_batches": batches,
            "events_per_batch": round(produced / max(1, batches), 1),
            "lag_ms": {p: round(pct(lags, p) * 1000, 2) for p in (50, 90, 99, 99.9)},
            "lag_max_ms": round(max(lags) * 1000, 2) if lags else None,
            "lag_p99_ms_per_10s": [round(pct(windows[k], 99) * 1000, 1) for k in sorted(windows)],
            "unmeasured": missing,
            "views_seq": seqs,
            "last_seq_sent": {s: max((e.seq for e in flow[:produced] if e.instrument == s), default=0) for s in symbols},
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=int, default=5000, help="events per second (all instruments)")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--reset", action="store_true", help="delete the instruments' journal rows and views first")
    ap.add_argument("--no-journal", action="store_true", help="only produce to the topic (no journal COPY)")
    args = ap.parse_args()
    result = asyncio.run(run(args.rate, args.seconds, args.reset, QuerySettings.from_env(), not args.no_journal))
    for k, v in result.items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
