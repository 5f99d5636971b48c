"""Relay lag from PostgreSQL alone: newest journal seq vs the relay's cursor, per instrument."""

from __future__ import annotations

LAG_SQL = """
WITH RECURSIVE i(instrument) AS (
    SELECT min(instrument) FROM events
    UNION ALL
    SELECT (SELECT min(e.instrument) FROM events e WHERE e.instrument > i.instrument)
    FROM i WHERE i.instrument IS NOT NULL
)
SELECT i.instrument,
       (SELECT max(e.seq) FROM events e WHERE e.instrument = i.instrument) AS head,
       COALESCE(c.seq, 0) AS cursor,
       (SELECT EXTRACT(EPOCH FROM (clock_timestamp() - e.committed_at))::float8
          FROM events e
         WHERE e.instrument = i.instrument AND e.seq > COALESCE(c.seq, 0)
         ORDER BY e.seq LIMIT 1) AS oldest_unpublished_age
FROM i LEFT JOIN relay_cursors c ON c.instrument = i.instrument
WHERE i.instrument IS NOT NULL
"""


async def relay_lag(pool) -> dict:
    """Relay lag from PostgreSQL alone (works with a pool or a connection).

    Returns {"events": {instrument: lag in events}, "seconds": max lag in seconds,
             "lag_events": total, "lag_seconds": max,
             "instruments": {instrument: {"head_seq", "cursor_seq", "lag_events", "lag_seconds"}}}
    where lag in events = newest journal seq - relay cursor and lag in seconds = age of the
    oldest journal row the relay has not had acknowledged yet (0 when it is caught up).
    """
    rows = await pool.fetch(LAG_SQL)
    instruments = {}
    for r in rows:
        head = r["head"] or 0
        cursor = r["cursor"]
        age = r["oldest_unpublished_age"]
        instruments[r["instrument"]] = {
            "head_seq": head,
            "cursor_seq": cursor,
            "lag_events": max(0, head - cursor),
            "lag_seconds": max(0.0, age) if age is not None else 0.0,
        }
    return {
        "events": {k: v["lag_events"] for k, v in instruments.items()},
        "seconds": max((v["lag_seconds"] for v in instruments.values()), default=0.0),
        "lag_events": sum(v["lag_events"] for v in instruments.values()),
        "lag_seconds": max((v["lag_seconds"] for v in instruments.values()), default=0.0),
        "instruments": instruments,
    }

