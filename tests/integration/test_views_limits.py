"""Issue 20: the read side at the instrument limits, and a projector that cannot apply says so.

Real PostgreSQL (journal), broker, Redis and NATS; the engine produces the events.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import httpx
import msgspec
import pytest
import redis.asyncio as aioredis

from contracts.instruments import load_instruments
from engine.book import OrderBook
from query_service.redis_keys import Keys
from tests.support.order_flow import OrderFlow
from tests.support.query import (
    JournalSeeder,
    Publisher,
    Replica,
    create_topic,
    delete_topic,
    instruments_file,
    settings_for_test,
    unique,
    wait_for_seq,
    wipe,
)

_dec = msgspec.json.Decoder(float_hook=Decimal).decode


@pytest.fixture
async def env():
    symbol = unique("QX") + "-USD"
    settings = settings_for_test([symbol])
    await create_topic(settings)
    await wipe(settings.redis_url, settings.redis_prefix)
    async with JournalSeeder(settings.pg_dsn) as journal:
        await journal.clear([symbol])
        yield settings, symbol, journal
        await journal.clear([symbol])
    await wipe(settings.redis_url, settings.redis_prefix)
    await delete_topic(settings)


async def test_maximal_trades_reach_every_view_exactly(env):
    """1000 @ 10,000,000 (BTC-USD's limits) = 1e20 ticks*lots per fill, 50 of them per client:
    the views (positions, order, trades, book, ticker) hold them exactly, and the engine's
    snapshot of a partly filled maximal order restores."""
    settings, sym, journal = env
    spec = load_instruments(instruments_file([sym])).get(sym)
    max_px = spec.price_to_ticks(spec.max_price)
    max_qty = spec.quantity_to_lots(spec.max_quantity)
    flow = OrderFlow(instrument=sym, clients=("a", "b"))
    for _ in range(50):
        flow.place("a", "sell", price=max_px, qty=max_qty)
        flow.place("b", "buy", type_="market", qty=max_qty)
    flow.place("a", "sell", price=max_px, qty=max_qty)
    flow.place("b", "buy", price=max_px, qty=max_qty // 2)  # a's last order rests, half filled
    snap = flow.book.snapshot()
    assert OrderBook.restore(snap, validate=True).snapshot() == snap
    await journal.append(flow.events)
    replica = await Replica(settings.replace(auth_enabled=False)).start()
    try:
        async with Publisher(settings) as pub:
            await pub.publish(flow.events)
        await wait_for_seq(settings.redis_url, settings.redis_prefix, {sym: flow.seq}, timeout=20)
        async with httpx.AsyncClient(base_url=replica.url) as http:
            pos = _dec((await http.get("/market/positions/b")).content)["positions"][0]
            assert pos["net_quantity"] == Decimal("50500")
            assert pos["total_cost"] == Decimal("505000000000")  # 50.5 x 1000 x 10,000,000
            book = _dec((await http.get("/market/orderbook", params={"instrument": sym})).content)
            assert book["asks"] == [{"price": Decimal("10000000"), "quantity": Decimal("500"),
                                     "cumulative": Decimal("500")}]
            trades = _dec((await http.get("/market/trades", params={"instrument": sym, "limit": 100})).content)
            assert trades["count"] == 51
            health = await http.get("/healthz")
            assert health.status_code == 200, health.text
    finally:
        await replica.stop()


async def test_a_projector_that_cannot_apply_makes_health_degraded_naming_the_instrument(env):
    settings, sym, journal = env
    flow = OrderFlow(instrument=sym, clients=("a", "b"))
    flow.place("a", "sell", price=100, qty=5)
    flow.place("b", "buy", price=100, qty=2)
    await journal.append(flow.events)
    keys = Keys(settings.redis_prefix)
    r = aioredis.Redis.from_url(settings.redis_url)
    # A view key of the wrong type (an operator's mistake, a foreign writer): every batch of
    # this instrument fails.
    await r.set(keys.side(sym, "buy"), "not a sorted set")
    replica = await Replica(settings.replace(watchdog_interval_s=30.0)).start()
    try:
        async with Publisher(settings) as pub:
            await pub.publish(flow.events)
        async with httpx.AsyncClient(base_url=replica.url) as http:
            for _ in range(200):
                h = await http.get("/healthz")
                if h.status_code == 503 and "WRONGTYPE" in h.json().get("views", {}).get(sym, ""):
                    break
                await asyncio.sleep(0.05)
            body = h.json()
            assert h.status_code == 503, body
            assert body["status"] == "degraded" and body["checks"]["views"] == "unhealthy"
            assert sym in body["views"] and "WRONGTYPE" in body["views"][sym]
            await r.delete(keys.side(sym, "buy"))  # repaired: the retry applies, health recovers
            await wait_for_seq(settings.redis_url, settings.redis_prefix, {sym: flow.seq}, timeout=20)
            for _ in range(100):
                h = await http.get("/healthz")
                if h.status_code == 200:
                    break
                await asyncio.sleep(0.05)
            assert h.status_code == 200, h.text
    finally:
        await replica.stop()
        await r.aclose()
