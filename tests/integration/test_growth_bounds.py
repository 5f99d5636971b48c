"""Growth bounds of the command side (issue 18) against the real PostgreSQL and a real
`python -m command_service`: idempotency keys expire after their window (a replay after
that is a new order), expired rows are deleted, and only the newest snapshots are kept."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx

from command_service.journal import JournalWriter
from tests.support.services import DSN, ServiceProcess, free_port

OPEN_ENV = {"EXCHANGE_AUTH": "disabled", "EXCHANGE_RATE_LIMIT_PER_SECOND": "0", "EXCHANGE_NATS_ENABLED": "false"}


async def test_a_replay_after_the_idempotency_window_is_a_new_order():
    client = f"idem-{uuid.uuid4().hex[:8]}"
    svc = ServiceProcess("command_service", free_port(), {**OPEN_ENV, "EXCHANGE_IDEMPOTENCY_TTL_S": "1.5",
                                                          "EXCHANGE_HOUSEKEEPING_S": "0"}).start()
    try:
        await svc.wait_ready()
        body = {"client_id": client, "instrument": "BTC-USD", "side": "buy", "type": "limit", "price": "1000",
                "quantity": "1", "idempotency_key": "k-1"}
        async with httpx.AsyncClient(base_url=svc.url, timeout=10) as http:
            first = await http.post("/orders", json=body)
            assert first.status_code == 201, first.text
            again = await http.post("/orders", json=body)
            assert again.json()["order"]["order_id"] == first.json()["order"]["order_id"]  # replayed
            await asyncio.sleep(2.0)
            late = await http.post("/orders", json=body)
            assert late.status_code == 201, late.text
            assert late.json()["order"]["order_id"] != first.json()["order"]["order_id"]  # a new order
            late_again = await http.post("/orders", json=body)  # ... which the key now answers for
            assert late_again.json()["order"]["order_id"] == late.json()["order"]["order_id"]
        conn = await asyncpg.connect(DSN)
        try:
            n = await conn.fetchval("SELECT count(*) FROM orders WHERE client_id = $1", client)
            assert n == 2
        finally:
            await conn.close()
    finally:
        svc.stop()


async def test_expired_idempotency_rows_are_deleted_and_fresh_ones_kept():
    pool = await asyncpg.create_pool(DSN, min_size=1, max_size=2)
    client = f"idem-{uuid.uuid4().hex[:8]}"
    try:
        async with pool.acquire() as conn:
            await conn.executemany(
                "INSERT INTO idempotency (client_id, key, request_hash, status_code, response, created_at)"
                " VALUES ($1, $2, 'h', 201, '{}', now() - make_interval(secs => $3))",
                [(client, f"old-{i}", 7200.0) for i in range(12)] + [(client, f"new-{i}", 10.0) for i in range(3)],
            )
        journal = JournalWriter(pool, idempotency_ttl_s=3600.0)
        assert await journal.expire_idempotency(batch=5) >= 12  # several small batches
        async with pool.acquire() as conn:
            left = sorted(r[0] for r in await conn.fetch("SELECT key FROM idempotency WHERE client_id = $1", client))
        assert left == ["new-0", "new-1", "new-2"]
    finally:
        async with pool.acquire() as conn:
            await conn.execute("DELETE FROM idempotency WHERE client_id = $1", client)
        await pool.close()


async def test_only_the_newest_snapshots_are_kept_per_instrument():
    pool = await asyncpg.create_pool(DSN, min_size=1, max_size=2)
    a, b = f"SNA{uuid.uuid4().hex[:6]}-USD", f"SNB{uuid.uuid4().hex[:6]}-USD"
    try:
        journal = JournalWriter(pool, snapshots_keep=3)
        for seq in (10, 20, 30, 40, 50):
            await journal.save_snapshot(a, seq, f"a{seq}".encode())
        await journal.save_snapshot(b, 5, b"b5")
        async with pool.acquire() as conn:
            kept = [r[0] for r in await conn.fetch("SELECT seq FROM snapshots WHERE instrument = $1 ORDER BY seq", a)]
            other = [r[0] for r in await conn.fetch("SELECT seq FROM snapshots WHERE instrument = $1", b)]
        assert kept == [30, 40, 50]
        assert other == [5]  # another instrument's snapshots are untouched
        assert await journal.latest_snapshot(a) == (50, b"a50")
    finally:
        async with pool.acquire() as conn:
            await conn.execute("DELETE FROM snapshots WHERE instrument = ANY($1::text[])", [a, b])
        await pool.close()
