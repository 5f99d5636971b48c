"""Read-only access to the PostgreSQL journal (the events table): the source the views are
rebuilt from when Kafka lost, skipped or duplicated something, or Redis was wiped."""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from contracts.enums import CLOSED_STATUSES
from contracts.messages import Event, decode_event
from query_service.records import OrderRec

log = logging.getLogger("query_service.journal")


class _PgTrade:
    __slots__ = ("instrument", "trade_id", "price", "quantity", "ts", "seq")

    def __init__(self, r):
        self.instrument, self.trade_id, self.price = r["instrument"], r["trade_id"], r["price"]
        self.quantity, self.ts, self.seq = r["quantity"], r["ts"], r["seq"]


class PgFill:
    """A fills row in the shape render.fill_view reads (like the projector's Fill)."""

    __slots__ = ("client_id", "order_id", "side", "role", "trade")

    def __init__(self, client_id: str, r):
        self.client_id, self.order_id, self.side, self.role = client_id, r["order_id"], r["side"], r["role"]
        self.trade = _PgTrade(r)

    @property
    def member_prefix(self) -> bytes:
        return f"{self.trade.ts:019d}|{self.trade.trade_id}|{self.role[0]}".encode()


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

    async def orders_before(
        self, client_id: str, status: str | None, instrument: str | None,
        horizon_ns: int, cursor: tuple[int, str] | None, limit: int,
    ) -> list:
        """A client's orders created before the retention horizon (and below the paging
        cursor), newest first, in the views' order: (created_ts, order_id) with order_id
        compared bytewise like the Redis index members. Uses orders_client_created."""
        closed = [s.value for s in CLOSED_STATUSES]
        args: list = [client_id, horizon_ns, limit]
        where = ["client_id = $1", "created_ts < $2"]
        if cursor is not None:
            args += [cursor[0], cursor[1]]
            where.append(f'(created_ts, order_id COLLATE "C") < (${len(args) - 1}, ${len(args)} COLLATE "C")')
        if status == "open":
            args.append(closed)
            where.append(f"status <> ALL(${len(args)}::text[])")
        elif status == "closed":
            args.append(closed)
            where.append(f"status = ANY(${len(args)}::text[])")
        if instrument is not None:
            args.append(instrument)
            where.append(f"instrument = ${len(args)}")
        sql = (
            "SELECT order_id, client_id, instrument, side, order_type, price, quantity, filled_quantity, cost,"
            " status, tif, post_only, created_ts, updated_ts, last_seq, stop_price, reject_reason, client_order_id"
            f" FROM orders WHERE {' AND '.join(where)}"
            ' ORDER BY created_ts DESC, order_id COLLATE "C" DESC LIMIT $3'
        )
        rows = await self._pool().fetch(sql, *args)
        return [
            OrderRec(
                order_id=r["order_id"], client_id=r["client_id"], instrument=r["instrument"], side=r["side"],
                order_type=r["order_type"], price=r["price"], quantity=r["quantity"], filled_quantity=r["filled_quantity"],
                cost=int(r["cost"]), status=r["status"], tif=r["tif"], post_only=r["post_only"],
                created_ts=r["created_ts"], updated_ts=r["updated_ts"], seq=r["last_seq"],
                remaining=0 if r["status"] in CLOSED_STATUSES else r["quantity"] - r["filled_quantity"],
                stop_price=r["stop_price"], reject_reason=r["reject_reason"],
                client_order_id=r["client_order_id"],
            )
            for r in rows
        ]

    async def fills_before(
        self, client_id: str, instrument: str | None, cursor: tuple[int, str, str] | None, limit: int,
    ) -> list:
        """A client's fills below the paging cursor (ts, trade_id, role initial), newest first,
        in the Redis fill index's order (migration 006's key). Returns PgFill rows."""
        args: list = [client_id, limit]
        where = ["client_id = $1"]
        if cursor is not None:
            # role initial 'm' < 't' like 'maker' < 'taker': compare the full role against the bound
            args += [cursor[0], cursor[1], "maker" if cursor[2] == "m" else "taker"]
            where.append("(ts, trade_id, role) < ($3, $4, $5)")
        if instrument is not None:
            args.append(instrument)
            where.append(f"instrument = ${len(args)}")
        rows = await self._pool().fetch(
            "SELECT ts, trade_id, role, order_id, side, instrument, seq, price, quantity FROM fills"
            f" WHERE {' AND '.join(where)} ORDER BY ts DESC, trade_id DESC, role DESC LIMIT $2",
            *args,
        )
        return [PgFill(client_id, r) for r in rows]

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
