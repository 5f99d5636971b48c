"""Read-only access to the PostgreSQL journal (the events table): the source the views are
rebuilt from when Kafka lost, skipped or duplicated something, or Redis was wiped."""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from contracts.messages import Event, decode_event

log = logging.getLogger("query_service.journal")


class JournalReader:
    """A small asyncpg pool whose sessions are read-only (default_transaction_read_only):
    the query side never writes to PostgreSQL, and the server enforces it."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self.pool: asyncpg.Pool | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        try:
            await self._connect()
        except Exception as exc:  # PG down at start: keep serving from Redis, retry in background
            log.warning("journal: postgres unavailable (%s); retrying in background", exc)
            self._task = asyncio.create_task(self._retry())

    async def _connect(self) -> None:
        self.pool = await asyncpg.create_pool(
            self.dsn,
            min_size=1,
            max_size=4,
            timeout=3,
            command_timeout=30,
            server_settings={"default_transaction_read_only": "on", "application_name": "query_service"},
        )

    async def _retry(self) -> None:
        delay = 0.5
        while self.pool is None:
            await asyncio.sleep(delay)
            try:
                await self._connect()
                log.info("journal: connected")
            except Exception:
                delay = min(delay * 2, 5.0)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        if self.pool is not None:
            await self.pool.close()

    def _pool(self) -> asyncpg.Pool:
        if self.pool is None:
            raise ConnectionError("postgres not connected")
        return self.pool

    async def read(self, instrument: str, after_seq: int, limit: int) -> list[Event]:
        rows = await self._pool().fetch(
            "SELECT payload FROM events WHERE instrument = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            instrument,
            after_seq,
            limit,
        )
        return [decode_event(bytes(r[0])) for r in rows]

    async def max_seqs(self, instruments: list[str]) -> dict[str, int]:
        # One index-only backward scan per instrument (no GROUP BY over the whole journal).
        rows = await self._pool().fetch(
            "SELECT i, (SELECT max(seq) FROM events WHERE instrument = i) FROM unnest($1::text[]) AS i",
            instruments,
        )
        return {r[0]: (r[1] or 0) for r in rows}

    async def check(self) -> bool:
        try:
            await asyncio.wait_for(self._pool().fetchval("SELECT 1"), 1.0)
            return True
        except Exception:
            return False
