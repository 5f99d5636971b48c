"""The test database, API keys, and the services started as processes against the real servers."""

from __future__ import annotations

import os
from pathlib import Path

import asyncpg

from command_service.api_keys import create as create_key_row
from ops.stack import ServiceProcess, free_port

__all__ = ["DSN", "ROOT", "ServiceProcess", "create_key", "free_port", "reset_db"]

ROOT = Path(__file__).resolve().parent.parent.parent
DSN = os.environ["EXCHANGE_PG_DSN"]


async def reset_db(dsn: str = DSN) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("TRUNCATE events, orders, idempotency, snapshots, api_keys, relay_cursors")
        # tables added by later migrations, when present
        if await conn.fetchval("SELECT to_regclass('settlements')"):
            await conn.execute("TRUNCATE settlements, settlement_runs")
    finally:
        await conn.close()


async def create_key(client_id: str, admin: bool = False, dsn: str = DSN) -> str:
    return await create_key_row(dsn, client_id, admin, "test")
