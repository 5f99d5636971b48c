"""Issue 20: an empty (restarted) Redis is not served as the truth. After Redis lost the views,
reads of the instrument answer 503 `unavailable` with Retry-After, /stream subscribers wait for
a snapshot, and /healthz is degraded naming the instrument, until a projector has rebuilt the
views from the journal; then every read answers the journal's state."""

from __future__ import annotations

import asyncio
import json

import httpx
from websockets.asyncio.client import connect

from tests.support.order_flow import OrderFlow
from tests.support.query import JournalSeeder, Replica, free_port, settings_for_test, unique, wait_for_seq, wipe


async def test_reads_answer_503_while_the_views_are_missing_and_the_rebuilt_book_after():
    sym = unique("RD") + "-USD"
    settings = settings_for_test([sym], auth_enabled=False)
    await wipe(settings.redis_url, settings.redis_prefix)
    sim = OrderFlow(instrument=sym, seed=11)
    sim.run(400)
    async with JournalSeeder(settings.pg_dsn) as journal:
        await journal.clear([sym])
        await journal.append(sim.events)
        # `reader` serves reads only; `builder` runs the projector (it rebuilds from the journal)
        reader = await Replica(settings.replace(projector_enabled=False)).start()
        builder = await Replica(settings.replace(port=free_port())).start()
        try:
            await wait_for_seq(settings.redis_url, settings.redis_prefix, {sym: sim.seq})
            async with httpx.AsyncClient(base_url=reader.url, timeout=10) as http:
                for _ in range(50):
                    r = await http.get("/market/orderbook", params={"instrument": sym})
                    if r.status_code == 200:
                        break
                    await asyncio.sleep(0.1)
                assert r.status_code == 200 and r.json()["seq"] == sim.seq, r.text
                before = r.json()
                await builder.stop()
                builder = None
                # Redis restarts empty (every key of the views gone at once)
                await wipe(settings.redis_url, settings.redis_prefix)
                await asyncio.sleep(settings.book_cache_max_age_s + 0.1)  # the replica's cached book expires
                for path, params in (("/market/orderbook", {"instrument": sym}),
                                     ("/market/trades", {"instrument": sym}),
                                     ("/market/ticker", {"instrument": sym}),
                                     ("/market/candles", {"instrument": sym, "interval": "1m"}),
                                     ("/market/orders", {"client_id": "alice", "instrument": sym}),
                                     ("/market/fills", {"client_id": "alice"}),
                                     ("/market/positions/alice", {})):
                    r = await http.get(path, params=params)
                    assert r.status_code == 503, (path, r.status_code, r.text)
                    assert r.json()["error"]["code"] == "unavailable" and r.headers["retry-after"] == "1", r.text
                r = await http.get("/healthz")
                assert r.status_code == 503 and r.json()["status"] == "degraded", r.text
                assert sym in r.json()["views"], r.text
                # a /stream subscriber gets no snapshot of the empty views...
                async with connect(reader.ws_url) as ws:
                    await ws.recv()
                    await ws.send(json.dumps({"type": "subscribe", "channels": ["orderbook"], "instrument": sym}))
                    assert json.loads(await ws.recv())["type"] == "subscribed"
                    try:
                        early = json.loads(await asyncio.wait_for(ws.recv(), 1.0))
                    except TimeoutError:
                        early = None
                    assert early is None or early["type"] == "heartbeat", early
                    # ...until a projector rebuilt them from the journal: then the whole book
                    builder = await Replica(settings.replace(port=free_port())).start()
                    while (m := json.loads(await asyncio.wait_for(ws.recv(), 20)))["type"] != "orderbook":
                        pass
                    assert m["action"] == "snapshot" and m["seq"] == sim.seq
                r = await http.get("/market/orderbook", params={"instrument": sym})
                assert r.status_code == 200 and r.json() == before, r.text
                r = await http.get("/healthz")
                assert r.status_code == 200 and "views" not in r.json(), r.text
        finally:
            await reader.stop()
            if builder is not None:
                await builder.stop()
            await journal.clear([sym])
    await wipe(settings.redis_url, settings.redis_prefix)



async def test_views_a_projector_cannot_apply_lose_ready_and_reads_answer_503():
    """Issue 20: views stuck behind events the projector cannot apply were served as current."""
    import redis.asyncio as aioredis

    from query_service.redis_keys import Keys
    from tests.support.query import Publisher, create_topic, delete_topic

    sym = unique("ST") + "-USD"
    settings = settings_for_test([sym], auth_enabled=False, watchdog_interval_s=30.0)
    await create_topic(settings)
    await wipe(settings.redis_url, settings.redis_prefix)
    sim = OrderFlow(instrument=sym, seed=3)
    sim.place("a", "sell", price=7_000_100, qty=5)
    first = sim.seq
    sim.place("b", "buy", price=7_000_000, qty=2)  # rests on the buy side: a bids change
    keys = Keys(settings.redis_prefix)
    r = aioredis.Redis.from_url(settings.redis_url)
    replica = await Replica(settings).start()
    try:
        async with Publisher(settings) as pub, httpx.AsyncClient(base_url=replica.url, timeout=10) as http:
            await pub.publish(sim.events[:first])
            await wait_for_seq(settings.redis_url, settings.redis_prefix, {sym: first})
            assert (await http.get("/market/trades", params={"instrument": sym})).status_code == 200
            await r.delete(keys.bids(sym))
            await r.set(keys.bids(sym), "not a sorted set")  # every later batch touching bids fails
            await pub.publish(sim.events[first:])
            for _ in range(200):
                got = await http.get("/market/trades", params={"instrument": sym})
                if got.status_code == 503:
                    break
                await asyncio.sleep(0.05)
            assert got.status_code == 503 and got.json()["error"]["code"] == "unavailable", got.text
            h = await http.get("/healthz")
            assert h.status_code == 503 and sym in h.json()["views"], h.text
    finally:
        await replica.stop()
        await r.aclose()
        await wipe(settings.redis_url, settings.redis_prefix)
        await delete_topic(settings)
