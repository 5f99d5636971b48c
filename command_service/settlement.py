"""End-of-day settlement: net each client's trades per instrument since the previous run.

Computed from the journal (the truth), set-based in PostgreSQL, and written once: a run is
keyed by (instrument, to_seq), where to_seq is the last journal seq at or before the
cutoff. Running again for the same cutoff finds nothing new and changes nothing. Per
instrument the clients' net amounts sum to zero, since every trade has a buyer and a seller.

CLI: `python -m command_service.settlement [--cutoff ISO] [--instrument SYM]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

import asyncpg

from contracts.api import iso_ms, parse_iso
from contracts.instruments import Instruments, load_instruments, plain

SETTLEMENT_LOCK = 7421  # pg_advisory_xact_lock key: one settlement run at a time

_LEGS = """
WITH t AS (
    SELECT (p->>'price')::numeric AS price, (p->>'quantity')::numeric AS qty, p->>'taker_side' AS taker_side,
           p->>'maker_client_id' AS maker, p->>'taker_client_id' AS taker
    FROM (SELECT convert_from(payload, 'UTF8')::jsonb AS p FROM events
          WHERE instrument = $1 AND seq > $2 AND seq <= $3 AND type = 'trade') x
), legs AS (
    SELECT CASE WHEN taker_side = 'buy' THEN taker ELSE maker END AS client_id, qty AS base, -price * qty AS quote
    FROM t
    UNION ALL
    SELECT CASE WHEN taker_side = 'buy' THEN maker ELSE taker END, -qty, price * qty FROM t
)
SELECT client_id, sum(base) AS base, sum(quote) AS quote,
       sum(CASE WHEN base > 0 THEN base ELSE 0 END) AS bought,
       sum(CASE WHEN base < 0 THEN -base ELSE 0 END) AS sold, count(*) AS trades
FROM legs GROUP BY client_id ORDER BY client_id
"""


async def settle(pool: asyncpg.Pool, instruments: Instruments, cutoff_ns: int,
                 only: str | None = None) -> list[dict]:
    """Run settlement for every instrument (or `only`) up to `cutoff_ns`; returns one
    summary per instrument: the run written now, or the existing one for that cutoff."""
    out = []
    async with pool.acquire() as conn:
        for spec in instruments:
            if only and spec.symbol != only:
                continue
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", SETTLEMENT_LOCK)
                prev = await conn.fetchval("SELECT coalesce(max(to_seq), 0) FROM settlement_runs WHERE instrument=$1",
                                           spec.symbol)
                to_seq = await conn.fetchval(
                    "SELECT coalesce(max(seq), 0) FROM events WHERE instrument=$1 AND ts <= $2", spec.symbol,
                    cutoff_ns)
                if to_seq <= prev:
                    row = await conn.fetchrow(
                        "SELECT to_seq, from_seq, cutoff_ts, trade_count FROM settlement_runs"
                        " WHERE instrument=$1 AND to_seq=$2", spec.symbol, to_seq)
                    out.append({"instrument": spec.symbol, "created": False,
                                **(_run_view(row) if row else {"from_seq": prev, "to_seq": prev, "trade_count": 0})})
                    continue
                legs = await conn.fetch(_LEGS, spec.symbol, prev, to_seq)
                lot, quote_unit = spec.lot_size, spec.tick_size * spec.lot_size
                trades = sum(r["trades"] for r in legs) // 2
                await conn.execute(
                    "INSERT INTO settlement_runs (instrument, to_seq, from_seq, cutoff_ts, trade_count)"
                    " VALUES ($1, $2, $3, $4, $5)", spec.symbol, to_seq, prev, cutoff_ns, trades)
                await conn.executemany(
                    "INSERT INTO settlements (instrument, to_seq, client_id, from_seq, cutoff_ts, net_base, net_quote,"
                    " bought, sold, trade_count) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    [(spec.symbol, to_seq, r["client_id"], prev, cutoff_ns, plain(r["base"] * lot),
                      plain(r["quote"] * quote_unit), plain(r["bought"] * lot), plain(r["sold"] * lot), r["trades"])
                     for r in legs])
                out.append({"instrument": spec.symbol, "created": True, "from_seq": prev, "to_seq": to_seq,
                            "cutoff": iso_ms(cutoff_ns), "trade_count": trades, "clients": len(legs)})
    return out


def _run_view(row) -> dict:
    return {"from_seq": row["from_seq"], "to_seq": row["to_seq"], "cutoff": iso_ms(row["cutoff_ts"]),
            "trade_count": row["trade_count"]}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m command_service.settlement", description=__doc__)
    p.add_argument("--dsn", default=os.environ.get("EXCHANGE_PG_DSN", "postgresql://postgres@127.0.0.1:5432/exchange"))
    p.add_argument("--cutoff", help="ISO 8601 time (default: now)")
    p.add_argument("--instrument")
    a = p.parse_args()
    cutoff = parse_iso(a.cutoff) if a.cutoff else time.time_ns()

    async def run():
        pool = await asyncpg.create_pool(a.dsn, min_size=1, max_size=2)
        try:
            return await settle(pool, load_instruments(), cutoff, a.instrument)
        finally:
            await pool.close()

    for summary in asyncio.run(run()):
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
