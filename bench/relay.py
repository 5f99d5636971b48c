"""Relay benchmark: how fast `python -m relay` drains the journal to Kafka.

    python -m bench.relay [--events 200000] [--instruments 3] [--rate 10000 --seconds 10]

Runs against the PostgreSQL and broker in EXCHANGE_PG_DSN / EXCHANGE_KAFKA_BOOTSTRAP, but in
its OWN database (<db>_bench_relay, created, migrated and dropped here) and its own topic
(deleted at the end), so a running stack's journal, relay and views are never touched.

1. drain: COPY N journal rows (realistic event JSON), start the relay process, time until
   every cursor reached the head (events/s), then read the topic back and check that every
   instrument's stream is exactly 1..n (duplicates counted).
2. live: with the relay running, commit events at a fixed rate in small transactions with
   pg_notify (as the sequencers do) and sample the relay lag from PostgreSQL.
Writes the "Relay" section of docs/BENCHMARKS.md (other sections are left as they are).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench import doc as benchdoc
from bench.doc import machine_line
from contracts.enums import OrderType, Side, StpMode, TimeInForce
from contracts.messages import OrderAccepted, TradeExecuted, decode_event, encode_event
from db.migrate import migrate
from ops.stack import ServiceProcess, free_port
from relay.lag import relay_lag

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "BENCHMARKS.md"
SYMBOLS = ["BTC-USD", "ETH-USD", "SOL-USD", "XRP-USD", "ADA-USD", "DOT-USD", "LTC-USD", "BCH-USD"]


def say(msg: str) -> None:
    print(f"[bench_relay] {msg}", flush=True)


def with_database(dsn: str, db: str) -> str:
    u = urlsplit(dsn)
    return urlunsplit((u.scheme, u.netloc, "/" + db, u.query, u.fragment))


def event(instrument: str, seq: int, ts: int):
    # Two of three events are order acceptances, one a trade: sizes as in real traffic.
    if seq % 3:
        return OrderAccepted(
            instrument=instrument, seq=seq, ts=ts, order_id=f"o-{instrument}-{seq:09d}",
            client_id=f"client-{seq % 64}", side=Side.BUY if seq % 2 else Side.SELL,
            order_type=OrderType.LIMIT, price=7_000_000 + seq % 500, quantity=1 + seq % 1000,
            tif=TimeInForce.GTC, post_only=False, stp=StpMode.CANCEL_NEWEST,
        )
    return TradeExecuted(
        instrument=instrument, seq=seq, ts=ts, trade_id=f"t-{instrument}-{seq:09d}",
        price=7_000_000 + seq % 500, quantity=1 + seq % 100, taker_side=Side.BUY,
        maker_order_id=f"o-{instrument}-{seq - 1:09d}", maker_client_id=f"client-{(seq - 1) % 64}",
        taker_order_id=f"o-{instrument}-{seq - 2:09d}", taker_client_id=f"client-{(seq - 2) % 64}",
        maker_remaining=seq % 7, taker_remaining=0,
    )


def rows_for(instrument: str, start: int, count: int):
    ts = time.time_ns()
    for seq in range(start, start + count):
        e = event(instrument, seq, ts + seq)
        yield (instrument, seq, type(e).__struct_config__.tag, e.ts, encode_event(e))


def relay_process(dsn: str, bootstrap: str, topic: str, env: dict, log_path: Path) -> ServiceProcess:
    return ServiceProcess("relay", free_port(), port_var="EXCHANGE_RELAY_METRICS_PORT", log_path=log_path, env={
        "EXCHANGE_PG_DSN": dsn,
        "EXCHANGE_KAFKA_BOOTSTRAP": bootstrap,
        "EXCHANGE_KAFKA_TOPIC": topic,
        "EXCHANGE_RELAY_NAME": "bench",
        **env,
    })


async def cursor_total(conn) -> int:
    return await conn.fetchval("SELECT COALESCE(sum(seq), 0)::bigint FROM relay_cursors")


async def drain(conn, total: int, relay: ServiceProcess) -> dict:
    """Start the relay and time it until every cursor reached the head."""
    t_start = time.perf_counter()
    relay.start()
    first = None
    last_print = t_start
    last_done = 0
    while True:
        done = await cursor_total(conn)
        now = time.perf_counter()
        if done and first is None:
            first = (now, done)
        if now - last_print >= 1.0:
            say(f"  drained {done:,}/{total:,}  ({(done - last_done) / (now - last_print):,.0f} events/s)")
            last_print, last_done = now, done
        if done >= total:
            break
        if relay.proc.poll() is not None:
            raise RuntimeError(f"relay exited; see {relay.log_path}")
        if now - t_start > 600:
            raise TimeoutError(f"relay drained only {done} of {total} in 600 s")
        await asyncio.sleep(0.01)
    t_end = time.perf_counter()
    wall = t_end - t_start
    steady = (t_end - first[0], total - first[1]) if first else (wall, total)
    return {
        "wall_s": wall,
        "rate_wall": total / wall,
        "rate_steady": steady[1] / steady[0] if steady[0] > 0 else float("nan"),
    }


async def verify(bootstrap: str, topic: str, want: dict[str, int]) -> dict:
    """Read the whole topic back: every instrument must be exactly 1..n, in order."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        parts = (await admin._client.fetch_all_metadata()).partitions_for_topic(topic) or set()
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_partition_fetch_bytes=8 << 20)
    await consumer.start()
    last: dict[str, int] = defaultdict(int)
    dups = 0
    try:
        consumer.assign([TopicPartition(topic, p) for p in parts])
        await consumer.seek_to_beginning()
        deadline = time.monotonic() + 120
        while any(last[i] < n for i, n in want.items()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"verify: got {dict(last)}, want {want}")
            batches = await consumer.getmany(timeout_ms=500, max_records=50_000)
            for messages in batches.values():
                for m in messages:
                    e = decode_event(m.value)
                    if e.seq <= last[e.instrument]:
                        dups += 1
                    elif e.seq == last[e.instrument] + 1:
                        last[e.instrument] = e.seq
                    else:
                        raise AssertionError(f"{e.instrument}: gap {last[e.instrument]} -> {e.seq}")
    finally:
        await consumer.stop()
    return {"duplicates": dups, "partitions": len(parts)}


# One statement = one implicit transaction, rows and notification together (as the
# sequencers' journal write does).
_APPEND = """
WITH ev AS (
    INSERT INTO events (instrument, seq, type, ts, payload)
    SELECT $1, x.seq, x.type, x.ts, x.payload
    FROM unnest($2::bigint[], $3::text[], $4::bigint[], $5::bytea[]) AS x(seq, type, ts, payload)
)
SELECT pg_notify('exchange_events', $1)
"""


async def live(dsn: str, pool, instruments: list[str], start_seq: int, rate: int, seconds: float,
               batch: int) -> dict:
    """One writer connection per instrument (one sequencer each) commits transactions of
    `batch` events with pg_notify, together `rate` events/s (open loop); the relay lag is
    sampled from PostgreSQL every 50 ms."""
    per_rate = rate / len(instruments)
    nxt = {i: start_seq for i in instruments}
    samples_s: list[float] = []
    samples_n: list[int] = []
    stop = asyncio.Event()

    async def sampler():
        while not stop.is_set():
            lag = await relay_lag(pool)
            samples_s.append(lag["lag_seconds"])
            samples_n.append(lag["lag_events"])
            await asyncio.sleep(0.05)

    async def writer(inst: str) -> int:
        conn = await asyncpg.connect(dsn)
        written = 0
        try:
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                rows = list(rows_for(inst, nxt[inst], batch))
                nxt[inst] += batch
                await conn.execute(_APPEND, inst, [r[1] for r in rows], [r[2] for r in rows],
                                   [r[3] for r in rows], [r[4] for r in rows])
                written += batch
                ahead = t0 + written / per_rate - time.perf_counter()  # hold the offered rate
                if ahead > 0:
                    await asyncio.sleep(ahead)
        finally:
            await conn.close()
        return written

    task = asyncio.create_task(sampler())
    t0 = time.perf_counter()
    written = sum(await asyncio.gather(*(writer(i) for i in instruments)))
    elapsed = time.perf_counter() - t0
    t_drain = time.perf_counter()
    while (await relay_lag(pool))["lag_events"] > 0:
        if time.perf_counter() - t_drain > 60:
            break
        await asyncio.sleep(0.01)
    drain_after = time.perf_counter() - t_drain
    stop.set()
    await task
    samples_s.sort()

    def p(q: float) -> float:
        return samples_s[min(len(samples_s) - 1, int(q * len(samples_s)))] if samples_s else 0.0

    return {
        "offered": rate, "achieved": written / elapsed, "seconds": elapsed, "written": written,
        "lag_s_p50": p(0.50), "lag_s_p99": p(0.99), "lag_s_max": samples_s[-1] if samples_s else 0.0,
        "lag_events_max": max(samples_n, default=0), "drain_after_s": drain_after,
        "next": nxt,
    }


def machine() -> str:
    return machine_line()


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def write_section(text: str) -> None:
    """Replace (or append) the '## Relay' section of docs/BENCHMARKS.md, nothing else."""
    heading, _, body = text.partition("\n")
    benchdoc.write_section(heading.removeprefix("## ").strip(), body, DOC)


async def main(args) -> None:
    base_dsn = os.environ.get("EXCHANGE_PG_DSN", "postgresql://postgres@127.0.0.1:5432/exchange")
    bootstrap = os.environ.get("EXCHANGE_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    bench_db = (urlsplit(base_dsn).path.lstrip("/") or "exchange") + "_bench_relay"
    dsn = with_database(base_dsn, bench_db)
    topic = f"bench.relay.{int(time.time())}"
    instruments = SYMBOLS[: args.instruments]
    per = args.events // len(instruments)
    total = per * len(instruments)
    relay_env = {
        "EXCHANGE_RELAY_BATCH_SIZE": str(args.batch_size),
        "EXCHANGE_RELAY_MAX_BATCH_BYTES": str(args.max_batch_bytes),
        "EXCHANGE_RELAY_LINGER_MS": str(args.linger_ms),
    }
    load_at_start = load_average()
    say(f"postgres {with_database(base_dsn, bench_db)}  kafka {bootstrap}  topic {topic}  "
        f"(load average {load_at_start})")

    admin_conn = await asyncpg.connect(base_dsn)
    try:
        await admin_conn.execute(f'DROP DATABASE IF EXISTS "{bench_db}"')
        await admin_conn.execute(f'CREATE DATABASE "{bench_db}"')
    finally:
        await admin_conn.close()
    await migrate(dsn)
    conn = await asyncpg.connect(dsn)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    relay = relay_process(dsn, bootstrap, topic, relay_env, Path(args.log))
    results = {}
    try:
        # ---- 1. drain a journal of `total` events
        say(f"writing {total:,} events ({len(instruments)} instruments x {per:,}) with COPY ...")
        t0 = time.perf_counter()
        chunk = 50_000
        for inst in instruments:
            for s in range(1, per + 1, chunk):
                async with conn.transaction():
                    await conn.copy_records_to_table(
                        "events", records=list(rows_for(inst, s, min(chunk, per - s + 1))),
                        columns=["instrument", "seq", "type", "ts", "payload"],
                    )
        write_s = time.perf_counter() - t0
        pg_durability = ", ".join(
            [f"fsync {await conn.fetchval('SHOW fsync')}",
             f"synchronous_commit {await conn.fetchval('SHOW synchronous_commit')}"]
        )
        avg_bytes = await conn.fetchval("SELECT avg(length(payload))::int FROM events")
        say(f"  written in {write_s:.1f} s ({total / write_s:,.0f} events/s), avg payload {avg_bytes} B")
        say(f"starting the relay (log {args.log}) and draining ...")
        d = await drain(conn, total, relay)
        say(f"  drained {total:,} events in {d['wall_s']:.2f} s: {d['rate_wall']:,.0f} events/s "
            f"including relay start-up, {d['rate_steady']:,.0f} events/s from the first cursor advance")
        say("verifying the topic (order per instrument, duplicates) ...")
        v = await verify(bootstrap, topic, {i: per for i in instruments})
        say(f"  every instrument 1..{per:,} in order; duplicates {v['duplicates']}; partitions {v['partitions']}")
        results.update(drain=d, verify=v, write_s=write_s, avg_bytes=avg_bytes, pg=pg_durability)

        # ---- 2. live: a fixed offered rate, relay lag sampled from PG
        if args.seconds > 0:
            say(f"live: offering {args.rate:,} events/s for {args.seconds:.0f} s (one writer per "
                f"instrument, transactions of {args.txn_events} events + pg_notify) ...")
            lv = await live(dsn, pool, instruments, per + 1, args.rate, args.seconds, args.txn_events)
            say(f"  achieved {lv['achieved']:,.0f} events/s; relay lag p50 {lv['lag_s_p50'] * 1000:.1f} ms, "
                f"p99 {lv['lag_s_p99'] * 1000:.1f} ms, max {lv['lag_s_max'] * 1000:.1f} ms, "
                f"max {lv['lag_events_max']:,} events behind; drained {lv['drain_after_s'] * 1000:.0f} ms after the last commit")
            v2 = await verify(bootstrap, topic, {i: n - 1 for i, n in lv["next"].items()})
            say(f"  verified again: every instrument in order; duplicates {v2['duplicates']}")
            results["live"] = lv
    finally:
        relay.stop()
        await pool.close()
        await conn.close()
        if not args.keep:
            admin_conn = await asyncpg.connect(base_dsn)
            try:
                await admin_conn.execute(f'DROP DATABASE IF EXISTS "{bench_db}"')
            finally:
                await admin_conn.close()
            try:
                admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
                await admin.start()
                await admin.delete_topics([topic])
                await admin.close()
            except Exception as exc:
                say(f"could not delete topic {topic}: {exc!r}")

    if args.write_docs:
        d, lv = results["drain"], results.get("live")
        cmd = "python -m bench.relay " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        text = [
            "## Relay",
            "",
            f"- Date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
            f"- Machine: {machine()}; load average at start {load_at_start} (1/5/15 min: other "
            f"work on the machine shares the cores)",
            f"- Command: `{cmd.strip()}` (EXCHANGE_PG_DSN={with_database(base_dsn, '<db>')}, "
            f"EXCHANGE_KAFKA_BOOTSTRAP={bootstrap}; own database and topic)",
            f"- Servers: PostgreSQL ({results['pg']}) and the Kafka-API broker at {bootstrap} "
            f"on the same machine as the relay and the load.",
            f"- Relay settings: batch size {args.batch_size} rows per instrument per round, "
            f"max record batch {args.max_batch_bytes:,} B, linger {args.linger_ms} ms, acks=all, "
            f"no idempotent producer, no compression.",
            "",
            "| what | result |",
            "|---|---|",
            f"| drain a journal of {total:,} events ({len(instruments)} instruments, avg payload "
            f"{results['avg_bytes']} B) | **{d['rate_steady']:,.0f} events/s** "
            f"({d['wall_s']:.2f} s incl. relay start-up: {d['rate_wall']:,.0f} events/s) |",
            f"| read back | every instrument 1..{per:,} in order, {results['verify']['duplicates']} duplicates, "
            f"{results['verify']['partitions']} partitions |",
        ]
        if lv:
            text += [
                f"| live: {lv['offered']:,} events/s offered for {lv['seconds']:.0f} s "
                f"(one writer per instrument, transactions of {args.txn_events} + pg_notify) | achieved {lv['achieved']:,.0f} events/s; "
                f"relay lag p50 {lv['lag_s_p50'] * 1000:.1f} ms, p99 {lv['lag_s_p99'] * 1000:.1f} ms, "
                f"max {lv['lag_s_max'] * 1000:.1f} ms ({lv['lag_events_max']:,} events) |",
            ]
        text += [
            "",
            "Drain = the relay process started against a journal that already holds the events "
            "(the catch-up after a broker outage); the figure counts acknowledged events "
            "(cursor advanced) per second. Live = the writers commit at the offered rate (open "
            "loop; \"achieved\" is what the writers managed on the shared cores) while the relay "
            "runs; relay lag = age of the oldest journal row not yet acknowledged by the broker, "
            "sampled from PostgreSQL every 50 ms (`relay.lag.relay_lag`), so it "
            "includes the linger. The command service's peak is ~10k events/s.",
            "",
        ]
        write_section("\n".join(text))
        say(f"wrote the Relay section of {DOC}")


def cli() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--instruments", type=int, default=3, choices=range(1, len(SYMBOLS) + 1))
    ap.add_argument("--batch-size", type=int, default=5000)
    ap.add_argument("--max-batch-bytes", type=int, default=1_000_000)
    ap.add_argument("--linger-ms", type=int, default=5)
    ap.add_argument("--rate", type=int, default=10_000, help="live phase: offered events/s")
    ap.add_argument("--seconds", type=float, default=10, help="live phase duration (0 = skip)")
    ap.add_argument("--txn-events", type=int, default=10, help="live phase: events per transaction")
    ap.add_argument("--log", default="/tmp/bench_relay.log")
    ap.add_argument("--keep", action="store_true", help="keep the bench database and topic")
    ap.add_argument("--no-docs", dest="write_docs", action="store_false")
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.run(main(args))
    except ImportError:
        asyncio.run(main(args))


if __name__ == "__main__":
    cli()
