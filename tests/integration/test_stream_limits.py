"""Issue 20, /stream: one client may not hurt the others. Snapshots take a `depth` (default 100,
at most 1000) instead of the whole book; a connection's messages and subscribes per second and
its open subscriptions are bounded (documented codes, close 1008 for a message flood). The frame
size cap is a setting of the real process's uvicorn: tests/fuzz/test_ws_fuzz.py checks it."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets
from websockets.asyncio.client import connect

from query_service.stream import MAX_SNAPSHOT_DEPTH, SNAPSHOT_DEPTH
from tests.support.order_flow import OrderFlow
from tests.support.query import JournalSeeder, Replica, settings_for_test, unique, wait_for_seq, wipe

LEVELS = 150  # per side: more than the default depth


@pytest.fixture
async def deep_book():
    sym = unique("SL") + "-USD"
    settings = settings_for_test([sym], auth_enabled=False, ws_max_subscriptions=3)
    await wipe(settings.redis_url, settings.redis_prefix)
    sim = OrderFlow(instrument=sym, seed=7)
    for i in range(1, LEVELS + 1):
        sim.place("alice", "buy", price=7_000_000 - i)
        sim.place("bob", "sell", price=7_000_000 + i)
    async with JournalSeeder(settings.pg_dsn) as journal:
        await journal.clear([sym])
        await journal.append(sim.events)
        replica = await Replica(settings).start()  # the watchdog builds the views from the journal
        try:
            await wait_for_seq(settings.redis_url, settings.redis_prefix, {sym: sim.seq})
            yield replica, sym
        finally:
            await replica.stop()
            await journal.clear([sym])
    await wipe(settings.redis_url, settings.redis_prefix)


async def recv(ws, timeout=10.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def next_of(ws, kind: str) -> dict:
    while (m := await recv(ws))["type"] != kind:
        pass
    return m


async def snapshot(ws, sym: str, **extra) -> dict:
    await ws.send(json.dumps({"type": "subscribe", "channels": ["orderbook"], "instrument": sym, **extra}))
    while True:
        m = await recv(ws)
        if m["type"] == "error":
            return m
        if m["type"] == "orderbook" and m["action"] == "snapshot":
            return m


@pytest.mark.ws_invalid_frames
async def test_snapshot_depth_default_maximum_and_bad_values(deep_book):
    replica, sym = deep_book
    async with connect(replica.ws_url) as ws:
        await recv(ws)  # connected
        m = await snapshot(ws, sym)
        assert (m["depth"], len(m["bids"]), len(m["asks"])) == (SNAPSHOT_DEPTH, SNAPSHOT_DEPTH, SNAPSHOT_DEPTH)
        assert m["bids"][0]["price"] > m["bids"][-1]["price"] and m["asks"][0]["price"] < m["asks"][-1]["price"]
    for depth, want in ((5, 5), (MAX_SNAPSHOT_DEPTH, LEVELS)):
        async with connect(replica.ws_url) as ws:
            await recv(ws)
            m = await snapshot(ws, sym, depth=depth)
            assert (m["depth"], len(m["bids"]), len(m["asks"])) == (depth, want, want)
    async with connect(replica.ws_url) as ws:
        await recv(ws)
        for bad in (0, MAX_SNAPSHOT_DEPTH + 1, "10", 2.5, True, None):
            m = await snapshot(ws, sym, depth=bad)
            assert m["type"] == "error" and (m["error"]["code"], m["error"]["field"]) == ("out_of_range", "depth"), m


async def test_a_message_flood_closes_only_that_connection(deep_book):
    replica, sym = deep_book
    async with connect(replica.ws_url) as calm:
        await recv(calm)
        async with connect(replica.ws_url) as flood:
            await recv(flood)
            for _ in range(1000):
                await flood.send('{"type":"ping"}')
            codes = []
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    m = await recv(flood)
                    if m["type"] == "error":
                        codes.append(m["error"]["code"])
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
            assert codes == ["too_many_messages"]
        await calm.send('{"type":"ping"}')
        assert (await next_of(calm, "pong"))["type"] == "pong"


async def test_subscribes_per_second_and_open_subscriptions_are_bounded(deep_book):
    replica, sym = deep_book
    async with connect(replica.ws_url) as ws:
        await recv(ws)
        for _ in range(60):
            await ws.send(json.dumps({"type": "subscribe", "channels": ["trades"], "instrument": sym}))
        answers = []
        while len(answers) < 60:
            m = await recv(ws)
            if m["type"] in ("subscribed", "error"):
                answers.append(m["type"] if m["type"] == "subscribed" else m["error"]["code"])
        assert 15 <= answers.count("subscribed") <= 30, answers  # burst 20 (+ refill while sending)
        assert set(answers) == {"subscribed", "too_many_subscriptions"}
        await ws.send('{"type":"ping"}')
        assert (await next_of(ws, "pong"))["type"] == "pong"  # the connection stays open
        await asyncio.sleep(2.5)  # the subscribe bucket refills
        # at most 3 open (instrument, channel) subscriptions here: trades + 2 more
        await ws.send(json.dumps({"type": "subscribe", "channels": ["ticker", "orderbook"], "instrument": sym,
                                  "depth": 1}))
        assert (await next_of(ws, "subscribed"))["channels"] == ["ticker", "orderbook"]
        await ws.send(json.dumps({"type": "subscribe", "channels": ["orders"], "instrument": sym, "client_id": "c"}))
        m = await next_of(ws, "error")
        assert (m["error"]["code"], m["error"]["field"]) == ("too_many_subscriptions", "channels")
