"""Issue 15 on the read side (a real query replica, real Redis/PostgreSQL): icebergs show only
their shown part publicly and everything to their owner, amended quantities and prices,
expired / cancel_after / cancel_on_disconnect reasons, GET /market/time, instrument status,
and the read limiter with its RateLimit headers on REST and /stream subscriptions."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from decimal import Decimal

import httpx
import msgspec
import pytest
import websockets

from contracts.api import parse_iso
from contracts.enums import CancelReason, OrderType, Side, TimeInForce
from contracts.messages import AmendOrder, CancelAll, CancelOrder, ExpireOrders, PlaceOrder
from engine import OrderBook
from tests.support.query import (
    JournalSeeder,
    Replica,
    create_topic,
    delete_topic,
    free_port,
    settings_for_test,
    unique,
    wait_for_seq,
    wipe,
)

decode = msgspec.json.Decoder(float_hook=Decimal).decode
L = 100_000_000  # lots per 1.0 (BTC-like instruments of the test)


def flow(sym: str, maker: str, taker: str) -> list:
    """maker: an iceberg sell 10 @ 100 showing 2, a GTD bid 1 @ 90 that expires, a bid 3 @ 95
    amended to 2 @ 96, a bid 1 @ 94 cancelled on disconnect, a bid 1 @ 93 cancelled by the dead
    man's switch; taker buys 3 @ 100 (2 + 1 from the iceberg)."""
    book = OrderBook(sym)
    ts = time.time_ns() - 60 * 10**9
    events = []

    def run(cmd):
        nonlocal ts
        ts += 1_000_000
        events.extend(book.execute(msgspec.structs.replace(cmd, ts=ts)).events)

    def limit(oid, who, side, price, qty, **kw):
        return PlaceOrder(order_id=f"{sym}-{oid}", client_id=who, instrument=sym, side=side,
                          order_type=OrderType.LIMIT, quantity=qty, ts=0, price=price, **kw)

    run(limit("ice", maker, Side.SELL, 10000, 10 * L, display_quantity=2 * L))
    run(limit("gtd", maker, Side.BUY, 9000, 1 * L, tif=TimeInForce.GTD, expire_ts=ts + 5_000_000))
    run(limit("amd", maker, Side.BUY, 9500, 3 * L))
    run(AmendOrder(order_id=f"{sym}-amd", client_id=maker, instrument=sym, ts=0, quantity=2 * L, price=9600))
    run(limit("cod", maker, Side.BUY, 9400, 1 * L))
    run(CancelOrder(order_id=f"{sym}-cod", client_id=maker, instrument=sym, ts=0, reason=CancelReason.DISCONNECT))
    run(ExpireOrders(instrument=sym, ts=0))  # stamped after the GTD's expire time
    run(limit("t", taker, Side.BUY, 10000, 3 * L))
    other = book.execute(msgspec.structs.replace(limit("dms", maker, Side.BUY, 9300, 1 * L), ts=ts + 1)).events
    events.extend(other)
    events.extend(book.execute(CancelAll(client_id=maker, instrument=sym, ts=ts + 2, side=Side.BUY,
                                         reason=CancelReason.CANCEL_AFTER)).events)
    # the amended bid went with the switch too: put a fresh one back so the book has a bid
    events.extend(book.execute(msgspec.structs.replace(limit("bid", maker, Side.BUY, 9600, 2 * L), ts=ts + 3)).events)
    return events, book


@pytest.fixture(scope="module")
async def api():
    sym = unique("QB") + "-USD"
    maker, taker = unique("maker-"), unique("taker-")
    keys = {maker: "exk_" + secrets.token_urlsafe(16), taker: "exk_" + secrets.token_urlsafe(16)}
    settings = settings_for_test([sym])
    await create_topic(settings)
    await wipe(settings.redis_url, settings.redis_prefix)
    async with JournalSeeder(settings.pg_dsn) as journal:
        await journal.clear([sym])
        await journal.add_key(keys[maker], maker, "read")  # a read key reads its own orders
        await journal.add_key(keys[taker], taker, "trade")
        events, book = flow(sym, maker, taker)
        await journal.append(events)
        replica = await Replica(settings).start()
        await wait_for_seq(settings.redis_url, settings.redis_prefix, {sym: book.seq})
        async with httpx.AsyncClient(base_url=replica.url, timeout=10) as http:
            yield {"http": http, "sym": sym, "maker": maker, "taker": taker, "keys": keys, "book": book,
                   "settings": settings, "replica": replica}
        await replica.stop()
        await journal.clear([sym])
        await journal.remove_keys(list(keys.values()))
    await wipe(settings.redis_url, settings.redis_prefix)
    await delete_topic(settings)


async def get(http, path, **kw):
    r = await http.get(path, **kw)
    return r.status_code, decode(r.content)


async def test_public_book_shows_only_the_icebergs_shown_part(api):
    status, body = await get(api["http"], "/market/orderbook", params={"instrument": api["sym"], "levels": 5})
    assert status == 200
    # 10 - 3 filled = 7 left; 2 + 1 traded from shown parts, so 1 of the second shown part is left
    assert body["asks"] == [{"price": 100, "quantity": 1, "cumulative": 1}]
    assert body["bids"] == [{"price": 96, "quantity": 2, "cumulative": 2}]
    bids, asks = api["book"].l2(5)
    assert asks == [(10000, 1 * L)] and bids == [(9600, 2 * L)]  # the engine agrees


async def test_owner_sees_quantity_remaining_display_and_reasons(api):
    h = {"Authorization": f"Bearer {api['keys'][api['maker']]}"}
    status, body = await get(api["http"], "/market/orders", params={"instrument": api["sym"], "limit": 50},
                             headers=h)
    assert status == 200, body
    by_id = {o["order_id"].rsplit("-", 1)[-1]: o for o in body["orders"]}
    ice = by_id["ice"]
    assert (ice["quantity"], ice["filled_quantity"], ice["remaining_quantity"]) == (10, 3, 7)
    assert (ice["display_quantity"], ice["shown_quantity"]) == (2, 1)
    assert by_id["gtd"]["cancel_reason"] == "expired" and by_id["gtd"]["time_in_force"] == "GTD"
    assert parse_iso(by_id["gtd"]["expire_time"]) > parse_iso(by_id["gtd"]["created_at"])
    assert by_id["cod"]["cancel_reason"] == "cancel_on_disconnect"
    assert by_id["dms"]["cancel_reason"] == "cancel_after"
    amd = by_id["amd"]  # amended 3 @ 95 -> 2 @ 96, then cancelled by the switch
    assert (amd["quantity"], amd["price"], amd["cancel_reason"]) == (2, 96, "cancel_after")
    # another client's orders: not with this key
    r = await api["http"].get("/market/orders", params={"client_id": api["taker"]}, headers=h)
    assert r.status_code == 403


async def test_server_time_and_instrument_status(api):
    before = time.time_ns()
    status, body = await get(api["http"], "/market/time")
    assert status == 200
    assert before - 10**9 <= parse_iso(body["time"]) <= time.time_ns() + 10**9
    assert body["epoch_ms"] // 1000 == parse_iso(body["time"]) // 10**9
    status, body = await get(api["http"], "/market/instruments")
    (inst,) = body["instruments"]
    assert inst["status"] == "trading"
    assert inst["order_types"] == ["limit", "market", "stop_limit", "stop_market"]
    assert inst["time_in_force"] == ["GTC", "IOC", "FOK", "GTD"]


async def test_read_limiter_headers_count_down_to_429_on_rest_and_stream(api):
    settings = api["settings"].replace(port=free_port(), projector_enabled=False,
                                       read_rate_limit_per_second=0.5, read_rate_limit_burst=3)
    replica = await Replica(settings).start()
    try:
        h = {"Authorization": f"Bearer {api['keys'][api['taker']]}"}
        async with httpx.AsyncClient(base_url=replica.url, timeout=10) as http:
            seen = []
            for path in ("/market/orderbook", "/market/trades", "/market/time"):
                r = await http.get(path, params={"instrument": api["sym"]} if "time" not in path else None,
                                   headers=h)
                assert r.status_code == 200 and r.headers["ratelimit-policy"] == '"read";q=3;w=6'
                seen.append(r.headers["ratelimit"])
            assert seen == ['"read";r=2;t=2', '"read";r=1;t=4', '"read";r=0;t=6']
            r = await http.get("/market/orderbook", params={"instrument": api["sym"]}, headers=h)
            assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
            assert int(r.headers["retry-after"]) >= 1 and r.headers["ratelimit"].startswith('"read";r=0;')
            # another key has its own budget
            other = {"Authorization": f"Bearer {api['keys'][api['maker']]}"}
            r = await http.get("/market/time", headers=other)
            assert r.status_code == 200
        async with websockets.connect(replica.ws_url) as ws:
            json.loads(await ws.recv())  # connected
            left = []
            for i in range(4):
                await ws.send(json.dumps({"type": "subscribe", "channels": ["trades"], "instrument": api["sym"],
                                          "request_id": i}))
                while True:
                    m = json.loads(await asyncio.wait_for(ws.recv(), 5))
                    if m["type"] in ("subscribed", "error"):
                        break
                left.append((m["type"], m["rate_limit"]["remaining"]))
            # no key on this socket: the budget of the client address (the REST calls above had keys)
            assert left == [("subscribed", 2), ("subscribed", 1), ("subscribed", 0), ("error", 0)]
            assert m["error"]["code"] == "rate_limited"
    finally:
        await replica.stop()
