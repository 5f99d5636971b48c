"""The journal's partitions (db/migrations/007_events_partitioned.sql): list, create ahead, detach.

    python -m db.partitions status            # partitions, seq ranges, rows (estimate), archivable?
    python -m db.partitions ensure            # create partitions ahead of the newest seq
    python -m db.partitions detach NAME       # detach an archivable partition (CONCURRENTLY)

A partition may leave the journal only when nothing needs its events any more, for every
instrument that has events in it: recovery starts from the newest snapshot (its seq must be at
or past the instrument's last seq in the partition), the relay's cursor must be past it, and so
must the newest settlement run when the instrument was ever settled. And every instrument's newest
seq must be past the range (otherwise its next events would still go into it): a quiet instrument
holds back the partitions its seqs are in. DETACH ... CONCURRENTLY takes no lock that blocks the inserts of the
hot path; the detached table stays in the database as a plain table, to be archived
(`pg_dump -t NAME`) and dropped by the operator. A full rebuild of the query views from seq 1
needs the archived events back (re-attach them); a rebuild from the views' last_seq does not.
"""

from __future__ import annotations

import asyncio
import os
import sys

import asyncpg

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/exchange"

PARTITIONS_SQL = """
SELECT c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bound, c.reltuples::bigint AS rows_estimate
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'events'::regclass
"""

# Per instrument with events in the partition: its last seq there, and how far recovery
# (snapshot), the relay (cursor) and settlement have moved. Loose index scan inside the partition.
BLOCKERS_SQL = """
WITH RECURSIVE i(instrument) AS (
    SELECT min(instrument) FROM {part}
    UNION ALL
    SELECT (SELECT min(e.instrument) FROM {part} e WHERE e.instrument > i.instrument)
    FROM i WHERE i.instrument IS NOT NULL
)
SELECT i.instrument,
       (SELECT max(e.seq) FROM {part} e WHERE e.instrument = i.instrument) AS last_seq,
       (SELECT max(s.seq) FROM snapshots s WHERE s.instrument = i.instrument) AS snapshot_seq,
       (SELECT c.seq FROM relay_cursors c WHERE c.instrument = i.instrument) AS relay_seq,
       (SELECT max(r.to_seq) FROM settlement_runs r WHERE r.instrument = i.instrument) AS settled_seq
FROM i WHERE i.instrument IS NOT NULL
"""


HEADS_SQL = """
WITH RECURSIVE i(instrument) AS (
    SELECT min(instrument) FROM events
    UNION ALL
    SELECT (SELECT min(e.instrument) FROM events e WHERE e.instrument > i.instrument)
    FROM i WHERE i.instrument IS NOT NULL
)
SELECT instrument, head FROM (
    SELECT i.instrument, (SELECT max(e.seq) FROM events e WHERE e.instrument = i.instrument) AS head
    FROM i WHERE i.instrument IS NOT NULL
) h WHERE head < $1 - 1
"""


def _upper(bound: str) -> int | None:
    """Upper seq bound (exclusive) of a 'FOR VALUES FROM (..) TO (..)' expression."""
    to = bound.rsplit("TO (", 1)[-1].rstrip(")").strip("'")
    return None if to == "MAXVALUE" else int(to)


async def partitions(conn) -> list[dict]:
    rows = [dict(r) for r in await conn.fetch(PARTITIONS_SQL)]
    for r in rows:
        r["upper"] = _upper(r["bound"])
    return sorted(rows, key=lambda r: r["upper"] or 0)


async def blockers(conn, name: str) -> list[str]:
    """Why `name` may not be detached yet (empty = archivable)."""
    parts = await partitions(conn)
    names = [p["name"] for p in parts]
    if name not in names:
        return [f"{name} is not a partition of events"]
    reasons = []
    rows = await conn.fetch(BLOCKERS_SQL.format(part=asyncpg.utils._quote_ident(name)))
    if not rows:
        return []
    upper = next(p["upper"] for p in parts if p["name"] == name)
    # Every instrument's NEXT seq must lie above the range: an instrument still inside it
    # would insert into it again, and with the partition gone that insert has no home.
    behind = await conn.fetch(HEADS_SQL, upper)
    for r in behind:
        reasons.append(f"{r['instrument']}: newest seq {r['head']} is still inside the range (< {upper - 1})")
    for r in rows:
        inst, last = r["instrument"], r["last_seq"]
        if (r["snapshot_seq"] or 0) < last:
            reasons.append(f"{inst}: newest snapshot at seq {r['snapshot_seq'] or 0} < {last} (recovery replays it)")
        if (r["relay_seq"] or 0) < last:
            reasons.append(f"{inst}: relay cursor at {r['relay_seq'] or 0} < {last}")
        if r["settled_seq"] is not None and r["settled_seq"] < last:
            reasons.append(f"{inst}: settled up to {r['settled_seq']} < {last}")
    return reasons


async def ensure(conn) -> int:
    return int(await conn.fetchval("SELECT ensure_event_partitions()"))


async def detach(dsn: str, name: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        reasons = await blockers(conn, name)
        if reasons:
            raise RuntimeError(f"{name} is still needed: " + "; ".join(reasons))
        # CONCURRENTLY: no ACCESS EXCLUSIVE lock on events, so commits go on meanwhile. It cannot
        # run inside a transaction block (asyncpg's execute of one statement is not one).
        await conn.execute(f"ALTER TABLE events DETACH PARTITION {asyncpg.utils._quote_ident(name)} CONCURRENTLY")
    finally:
        await conn.close()


async def _main(argv: list[str]) -> int:
    dsn = os.environ.get("EXCHANGE_PG_DSN", DEFAULT_DSN)
    cmd = argv[0] if argv else "status"
    if cmd == "detach" and len(argv) == 2:
        await detach(dsn, argv[1])
        print(f"partitions: {argv[1]} detached; archive it (pg_dump -t {argv[1]}) and drop it")
        return 0
    conn = await asyncpg.connect(dsn)
    try:
        if cmd == "ensure":
            print(f"partitions: {await ensure(conn)} created")
            return 0
        if cmd == "status":
            for p in await partitions(conn):
                why = await blockers(conn, p["name"])
                state = "archivable" if not why else f"needed ({len(why)} reasons)"
                print(f"{p['name']:24} {p['bound']:50} ~{p['rows_estimate']:>12} rows  {state}")
            return 0
    finally:
        await conn.close()
    print(__doc__, file=sys.stderr)
    return 2


def main() -> None:
    try:
        sys.exit(asyncio.run(_main(sys.argv[1:])))
    except (RuntimeError, OSError, asyncpg.PostgresError) as exc:
        print(f"partitions: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
