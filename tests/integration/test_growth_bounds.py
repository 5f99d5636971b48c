"""Growth bounds of the command side (issue 18) against the real PostgreSQL and a real
`python -m command_service`: idempotency keys expire after their window (a replay after
that is a new order), expired rows are deleted, only the newest snapshots are kept, and the
in-memory closed orders stay bounded while a long-closed order is answered as before."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx

from command_service.journal import JournalWriter
from tests.support.services import DSN, ServiceProcess, create_key, free_port

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


def _gauge(text: str, name: str, instrument: str) -> float:
    for line in text.splitlines():
        if line.startswith(f'{name}{{instrument="{instrument}"}}'):
            return float(line.split()[-1])
    raise AssertionError(f"{name} for {instrument} not in /metrics")


async def _answers(http, order_id: str, owner: dict, other: dict) -> list[tuple[int, object]]:
    """Every answer about a closed order: cancel, amend and GET by its owner and by another client."""
    out = []
    for headers in (owner, other):
        for method, path, body in (("POST", f"/orders/{order_id}/cancel", None),
                                   ("POST", f"/orders/{order_id}/amend", {"quantity": "2"}),
                                   ("GET", f"/orders/{order_id}", None)):
            r = await http.request(method, path, json=body, headers=headers)
            out.append((r.status_code, r.json()))
    return out


async def test_closed_orders_beyond_the_memory_bound_are_answered_exactly_as_recent_ones():
    # keep 4: the service holds 4-7 closed orders per instrument in memory; everything older
    # must come from the orders table with the same answers (issue 18: it held up to 200,000).
    tag = uuid.uuid4().hex[:8]
    owner_key, other_key = await create_key(f"rc-{tag}"), await create_key(f"rc-other-{tag}")
    owner = {"Authorization": f"Bearer {owner_key}"}
    other = {"Authorization": f"Bearer {other_key}"}
    svc = ServiceProcess("command_service", free_port(), {
        "EXCHANGE_AUTH": "enabled", "EXCHANGE_RATE_LIMIT_PER_SECOND": "0", "EXCHANGE_NATS_ENABLED": "false",
        "EXCHANGE_RECENTLY_CLOSED_KEEP": "4"}).start()
    order = {"instrument": "ETH-USD", "side": "buy", "type": "limit", "price": "1.5", "quantity": "1"}
    try:
        await svc.wait_ready()
        async with httpx.AsyncClient(base_url=svc.url, timeout=10) as http:

            async def place_and_cancel(**extra) -> str:
                placed = await http.post("/orders", json={**order, **extra}, headers=owner)
                assert placed.status_code == 201, placed.text
                oid = placed.json()["order"]["order_id"]
                cancelled = await http.post(f"/orders/{oid}/cancel", headers=owner)
                assert cancelled.status_code == 200, cancelled.text
                return oid

            first = await place_and_cancel(idempotency_key=f"rc-{tag}")
            recent = await _answers(http, first, owner, other)  # answered from memory
            # the owner: 409 closed, 409 closed, 200; another client: 404 (ids leak nothing)
            assert [s for s, _ in recent] == [409, 409, 200, 404, 404, 404]
            assert recent[0][1]["error"] == {"code": "order_closed", "message": "order is already cancelled",
                                             "field": "order_id"}
            assert recent[2][1]["order"]["status"] == "cancelled"

            for _ in range(30):  # far past the bound: `first` leaves the service's memory
                await place_and_cancel()
            held = _gauge((await http.get("/metrics")).text, "sequencer_recently_closed_orders", "ETH-USD")
            assert 4 <= held < 8

            # from PostgreSQL now: the very same statuses and bodies
            assert await _answers(http, first, owner, other) == recent
            # an idempotent replay of the long-closed order's placement still answers the original
            replay = await http.post("/orders", json={**order, "idempotency_key": f"rc-{tag}"}, headers=owner)
            assert replay.status_code == 201 and replay.headers.get("idempotent-replayed") == "true"
            assert replay.json()["order"]["order_id"] == first
            unknown = await http.post(f"/orders/{uuid.uuid4()}/cancel", headers=owner)
            assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    finally:
        svc.stop()
