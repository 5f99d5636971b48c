"""Relay leadership: one PostgreSQL session holds a fixed advisory lock; whoever holds it leads.

The lock lives exactly as long as that session, so a killed leader (kill -9, crash, lost
network) releases it and a standby, blocked inside pg_advisory_lock, takes over at once.
"""

from __future__ import annotations

import asyncpg

# Fixed advisory lock key of the relay leadership (db.migrate uses 742001). One bigint key
# space; the sequencers' per-instrument locks must not use this value.
RELAY_LOCK_KEY = 742_002


async def open_lock_session(dsn: str, name: str) -> asyncpg.Connection:
    """The connection that will hold the lock. Keepalives so a leader cut off from PostgreSQL
    notices, and PostgreSQL ends a dead leader's session (freeing the lock) within ~11 s."""
    return await asyncpg.connect(
        dsn,
        server_settings={
            "application_name": f"relay {name}",
            "statement_timeout": "0",  # the lock wait of a standby has no end
            "tcp_keepalives_idle": "5",
            "tcp_keepalives_interval": "2",
            "tcp_keepalives_count": "3",
        },
    )


async def wait_for_leadership(lock_conn: asyncpg.Connection, key: int) -> None:
    """Blocks while another relay leads; returns when its session ends and the lock is ours."""
    await lock_conn.execute("SELECT pg_advisory_lock($1)", key)
