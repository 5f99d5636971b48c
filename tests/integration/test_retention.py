"""Retention of the Redis views (issue 18) against the real command service, PostgreSQL and
Redis: closed orders and fills leave Redis after the window, /market/orders keeps serving
them from PostgreSQL with the same paging (a cursor crosses from Redis to PostgreSQL), open
orders stay in Redis; fills continue from PostgreSQL's fills table the same way."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import redis.asyncio as aioredis

from query_service.redis_keys import Keys
from query_service.settings import QuerySettings
from tests.support.query import Replica, create_topic, delete_topic, settings_for_test, wipe
from tests.support.services import ServiceProcess, free_port

OPEN_ENV = {"EXCHANGE_AUTH": "disabled", "EXCHANGE_RATE_LIMIT_PER_SECOND": "0", "EXCHANGE_NATS_ENABLED": "false"}


async def page_all(http, client_id: str, limit: int, **params) -> list[dict]:
    out, cursor = [], None
    for _ in range(100):  # bounded
        q = {"client_id": client_id, "limit": limit, **params}
        if cursor:
            q["cursor"] = cursor
        r = await http.get("/market/orders", params=q)
        assert r.status_code == 200, r.text
        body = r.json()
        out += body["orders"]
        cursor = body["next_cursor"]
        if not cursor:
            return out
    raise AssertionError("paging did not end")


def essentials(orders: list[dict]) -> list[tuple]:
    keep = ("order_id", "status", "side", "type", "price", "quantity", "filled_quantity", "created_at", "instrument")
    return [tuple(o.get(k) for k in keep) for o in orders]


async def test_closed_orders_leave_redis_and_paging_crosses_into_postgres():
    client = f"ret-{uuid.uuid4().hex[:8]}"
    other = f"ret-{uuid.uuid4().hex[:8]}"
    cmd = ServiceProcess("command_service", free_port(), OPEN_ENV).start()
    settings = settings_for_test(["BTC-USD"], instruments_file=QuerySettings.from_env().instruments_file,
                                 retention_s=1.0, retention_sweep_s=0.0, auth_enabled=False,
                                 fills_per_client=3)
    await create_topic(settings)
    replica = None
    try:
        await cmd.wait_ready()
        async with httpx.AsyncClient(base_url=cmd.url, timeout=10) as http:
            ids = {"open": [], "closed": []}
            for i in range(12):  # resting far below the market: stays open
                r = await http.post("/orders", json={"client_id": client, "instrument": "BTC-USD", "side": "buy",
                                                     "type": "limit", "price": f"{1000 + i}", "quantity": "1"})
                assert r.status_code in (200, 201), r.text
                ids["open"].append(r.json()["order"]["order_id"])
            for i in range(15):  # cancelled: closed
                r = await http.post("/orders", json={"client_id": client, "instrument": "BTC-USD", "side": "buy",
                                                     "type": "limit", "price": f"{900 + i}", "quantity": "1"})
                oid = r.json()["order"]["order_id"]
                assert (await http.post(f"/orders/{oid}/cancel", json={"client_id": client})).status_code == 200
                ids["closed"].append(oid)
            for i in range(6):  # a trade between two clients: fills for both, filled orders closed
                r = await http.post("/orders", json={"client_id": other, "instrument": "BTC-USD", "side": "sell",
                                                     "type": "limit", "price": f"{1011 - i}", "quantity": "1"})
                assert r.json()["order"]["status"] == "filled", r.text
        replica = await Replica(settings).start()
        redis = aioredis.Redis.from_url(settings.redis_url)
        k = Keys(settings.redis_prefix)
        inst = "BTC-USD"
        async with httpx.AsyncClient(base_url=replica.url, timeout=10) as q:
            deadline = time.monotonic() + 30
            # (With a 1 s window everything is below the horizon and PostgreSQL would answer at
            # once: wait for the Redis views themselves.)
            async def indexed(c: str) -> int:
                return sum([await redis.zcard(k.client_orders(c, w, inst)) for w in ("open", "closed")])

            while await indexed(client) < 27 or await indexed(other) < 6:
                assert time.monotonic() < deadline, "views did not catch up"
                await asyncio.sleep(0.2)
            before = {s: await page_all(q, client, 500, **({"status": s} if s else {})) for s in (None, "open", "closed")}
            assert {o["order_id"] for o in before["open"]} == set(ids["open"][:6])  # six filled by `other`
            # Redis keeps the newest 3 fills per client (the cap): a listing crosses into PostgreSQL.
            assert await redis.zcard(k.client_fills(client, inst)) == 3
            fills_before = (await q.get("/market/fills", params={"client_id": client})).json()["fills"]
            assert len(fills_before) == 6
            assert [f["timestamp"] for f in fills_before] == sorted((f["timestamp"] for f in fills_before), reverse=True)
            assert len({f["trade_id"] for f in fills_before}) == 6

            await asyncio.sleep(1.2)  # everything closed is now older than the 1 s window
            removed_orders, removed_fills = await replica.services.retention.sweep()
            assert removed_orders >= 21 + 6  # 15 cancelled + 6 filled of client, 6 filled of other
            assert removed_fills >= 3
            # Closed orders are gone from Redis, open ones are still there.
            for oid in ids["closed"] + ids["open"][6:]:  # the six highest bids were filled
                assert await redis.hget(k.orders(inst), oid) is None
            for oid in ids["open"][:6]:
                assert await redis.hget(k.orders(inst), oid) is not None
            assert await redis.zcard(k.client_orders(client, "closed", inst)) == 0
            assert await redis.zcard(k.closed(inst)) == 0
            fills_key = k.client_fills(client, inst)
            assert await redis.zcard(fills_key) == 0  # the fills left Redis ...
            # ... and come from PostgreSQL, identical, with the same paging
            for limit in (1, 4, 50):
                got, cursor = [], None
                for _ in range(20):
                    params = {"client_id": client, "limit": limit, **({"cursor": cursor} if cursor else {})}
                    body = (await q.get("/market/fills", params=params)).json()
                    got += body["fills"]
                    cursor = body["next_cursor"]
                    if not cursor:
                        break
                assert got == fills_before, limit

            # Same listing, page by page, with small pages so cursors cross from Redis rows
            # into PostgreSQL rows - for every status filter and for the instrument filter.
            for status, want in before.items():
                extra = {"status": status} if status else {}
                for limit in (1, 4, 7, 500):
                    got = await page_all(q, client, limit, **extra)
                    assert essentials(got) == essentials(want), (status, limit)
            by_inst = await page_all(q, client, 5, instrument="BTC-USD")
            assert essentials(by_inst) == essentials(before[None])
        await redis.aclose()
    finally:
        cmd.stop()
        if replica is not None:
            await replica.stop()
        await wipe(settings.redis_url, settings.redis_prefix)
        await delete_topic(settings)
