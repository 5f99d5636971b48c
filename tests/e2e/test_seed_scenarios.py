"""The seed README's curl examples and WebSocket flows, run through the gateway against the
whole running exchange, with exact expected values."""

import asyncio
import json

import httpx
import pytest
import websockets

from tests.e2e.conftest import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="session")
async def gw(system):
    async with httpx.AsyncClient(base_url=system.gateway, timeout=10) as client:
        yield client


async def test_system_health_through_the_gateway(gw):
    r = await gw.get("/healthz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "healthy"
    assert set(body["checks"]) >= {"postgres", "redis", "kafka", "nats", "command", "query"}
    assert all(v == "healthy" for v in body["checks"].values()), body
    assert body["timestamp"].endswith("Z")


async def test_seed_curl_examples(gw, system):
    # curl -X POST /orders  (limit buy)
    r = await gw.post("/orders", headers=system.auth("client-A"), json={
        "idempotency_key": "test-order-1", "client_id": "client-A", "instrument": "BTC-USD",
        "side": "buy", "type": "limit", "price": 70000, "quantity": 0.25})
    assert r.status_code == 201, r.text
    buy = r.json()["order"]
    assert (buy["status"], buy["price"], buy["quantity"], buy["filled_quantity"]) == ("open", 70000, 0.25, 0)

    # curl -X POST /orders  (market sell)
    r = await gw.post("/orders", headers=system.auth("client-B"), json={
        "idempotency_key": "test-order-2", "client_id": "client-B", "instrument": "BTC-USD",
        "side": "sell", "type": "market", "quantity": 0.1})
    assert r.status_code == 201, r.text
    sell = r.json()
    assert sell["order"]["status"] == "filled"
    assert [(t["price"], t["quantity"]) for t in sell["trades"]] == [(70000, 0.1)]
    trade_seq = sell["trades"][0]["seq"]

    # curl /market/orderbook?instrument=BTC-USD&levels=10 (the read side catches up)
    async def book():
        r = await gw.get("/market/orderbook", params={"instrument": "BTC-USD", "levels": 10})
        b = r.json()
        return b if b["seq"] >= trade_seq else None

    b = await eventually(book)
    assert b["bids"] == [{"price": 70000, "quantity": 0.15, "cumulative": 0.15}] and b["asks"] == []
    assert b["instrument"] == "BTC-USD" and b["timestamp"].endswith("Z")

    r = await gw.get("/market/trades", params={"instrument": "BTC-USD", "limit": 50})
    trades = r.json()
    assert trades["count"] == 1
    t = trades["trades"][0]
    assert (t["price"], t["quantity"], t["buy_order_id"], t["sell_order_id"]) == (
        70000, 0.1, buy["order_id"], sell["order"]["order_id"])

    # positions: A bought 0.1 at 70000, B sold it
    r = await gw.get("/market/positions/client-A", headers=system.auth("client-A"))
    [pos] = [p for p in r.json()["positions"] if p["instrument"] == "BTC-USD"]
    assert (pos["net_quantity"], pos["avg_price"]) == (0.1, 70000)
    r = await gw.get("/market/positions/client-B", headers=system.auth("client-B"))
    [pos] = [p for p in r.json()["positions"] if p["instrument"] == "BTC-USD"]
    assert pos["net_quantity"] == -0.1
    r = await gw.get("/market/positions/client-B", headers=system.auth("client-A"))
    assert r.status_code == 403

    # analytics over the last hour: one trade
    r = await gw.get("/market/analytics", params={"instrument": "BTC-USD"})
    a = r.json()
    assert a["overall_vwap"] == 70000
    assert sum(x["trade_count"] for x in a["aggregates"]) == 1
    [bucket] = [x for x in a["aggregates"] if x["trade_count"]]
    assert (bucket["total_quantity"], bucket["total_volume"], bucket["vwap"], bucket["min_price"],
            bucket["max_price"]) == (0.1, 7000, 70000, 70000, 70000)

    # cancel the rest of the buy; the book empties
    r = await gw.post(f"/orders/{buy['order_id']}/cancel", headers=system.auth("client-A"))
    assert r.status_code == 200 and r.json()["order"]["status"] == "cancelled"
    assert r.json()["order"]["filled_quantity"] == 0.1
    await eventually(lambda: _empty_book(gw, "BTC-USD"))
    r = await gw.get(f"/orders/{buy['order_id']}", headers=system.auth("client-A"))
    assert r.json()["order"]["status"] == "cancelled"

    # snapshot (admin) and metrics through the gateway
    r = await gw.post("/admin/snapshot", headers=system.auth("admin"))
    assert r.status_code == 201
    r = await gw.get("/metrics", headers=system.auth("admin"))  # not public: admin key
    assert "orders_received_total" in r.text and "trades_total" in r.text


async def _empty_book(gw, instrument):
    b = (await gw.get("/market/orderbook", params={"instrument": instrument})).json()
    return not b["bids"] and not b["asks"]


async def test_bad_requests_at_the_gateway_have_the_error_shape(gw, system):
    r = await gw.get("/market/orderbook", params={"levels": 0})
    assert r.status_code == 400 and r.json()["error"]["field"] == "levels"
    r = await gw.get("/market/trades", params={"limit": 1001})
    assert r.status_code == 400 and r.json()["error"]["field"] == "limit"
    r = await gw.post("/orders", headers=system.auth("client-A"), content=b"x" * 200_000)
    assert r.status_code == 413 and "error" in r.json()


def apply_changes(book: dict, changes: list) -> None:
    for c in changes:
        side = book["bids" if c["side"] == "buy" else "asks"]
        if c["quantity"] == 0:
            side.pop(c["price"], None)
        else:
            side[c["price"]] = c["quantity"]


@pytest.mark.ws_invalid_frames
async def test_stream_snapshot_then_gap_free_deltas_equal_the_rest_book(gw, system):
    ws_url = system.gateway.replace("http", "ws") + "/stream"
    async with websockets.connect(ws_url) as ws:
        assert json.loads(await ws.recv())["type"] == "connected"
        await ws.send(json.dumps({"type": "subscribe", "channels": ["orderbook", "trades"], "instrument": "SOL-USD"}))
        book, seq, trades = None, None, []
        async def read_until(pred, timeout=10):
            nonlocal book, seq
            end = asyncio.get_running_loop().time() + timeout
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), end - asyncio.get_running_loop().time()))
                if msg["type"] == "orderbook" and msg["action"] == "snapshot":
                    book = {"bids": {l["price"]: l["quantity"] for l in msg["bids"]},
                            "asks": {l["price"]: l["quantity"] for l in msg["asks"]}}
                    seq = msg["seq"]
                elif msg["type"] == "orderbook" and msg["action"] == "update":
                    assert msg["prev_seq"] == seq, f"gap: prev_seq {msg['prev_seq']} after {seq}"
                    apply_changes(book, msg["changes"])
                    seq = msg["seq"]
                elif msg["type"] == "trade":
                    trades.append(msg)
                if pred(msg):
                    return msg

        await read_until(lambda m: m["type"] == "orderbook" and m["action"] == "snapshot")
        placed = []
        for who, side, price, qty in ([
            ("client-A", "buy", "99.5", "3"), ("client-A", "buy", "99.4", "1"), ("client-B", "sell", "100.1", "2"),
            ("client-C", "sell", "99.5", "1.25"), ("client-A", "buy", "100.1", "0.5"),
        ]):
            r = await gw.post("/orders", headers=system.auth(who), json={
                "instrument": "SOL-USD", "side": side, "type": "limit", "price": price, "quantity": qty})
            assert r.status_code == 201
            placed.append(r.json())
        last = max(max([o["orderbook"]["seq"] for o in placed]), 0)
        # caught up: a book message at or past the last seq, or a heartbeat saying so
        await read_until(lambda m: (m["type"] == "orderbook" and m.get("seq", 0) >= last)
                         or (m["type"] == "heartbeat" and m["seqs"].get("SOL-USD", 0) >= last), timeout=15)
        if len(trades) < 2:  # a batch's trades may follow its book delta
            await read_until(lambda m: len(trades) >= 2)
        rest = (await gw.get("/market/orderbook", params={"instrument": "SOL-USD", "levels": 100})).json()
        assert rest["seq"] >= seq
        assert book["bids"] == {l["price"]: l["quantity"] for l in rest["bids"]}
        assert book["asks"] == {l["price"]: l["quantity"] for l in rest["asks"]}
        assert book["bids"] == {99.5: 1.75, 99.4: 1} and book["asks"] == {100.1: 1.5}
        assert sorted((t["price"], t["quantity"]) for t in trades) == [(99.5, 1.25), (100.1, 0.5)]
        # a malformed frame gets an error and the connection stays usable
        await ws.send("{nope")
        assert (await read_until(lambda m: m["type"] == "error"))["type"] == "error"
        await ws.send(json.dumps({"type": "unsubscribe", "channels": ["trades"], "instrument": "SOL-USD"}))
        await read_until(lambda m: m["type"] == "unsubscribed")


async def test_order_entry_on_the_stream_is_answered_after_commit(gw, system):
    ws_url = system.gateway.replace("http", "ws") + "/stream"
    async with websockets.connect(ws_url, additional_headers=system.auth("client-C")) as ws:
        assert json.loads(await ws.recv())["type"] == "connected"
        await ws.send(json.dumps({"type": "order", "order_type": "limit", "client_id": "client-C",
                                  "instrument": "ETH-USD", "side": "buy", "price": 1500, "quantity": 1.0,
                                  "idempotency_key": "ws-order-1", "request_id": "q1"}))
        while True:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if msg.get("request_id") == "q1":
                break
        assert msg["type"] == "order_accepted", msg
        oid = msg["order"]["order_id"]
    r = await gw.get(f"/orders/{oid}", headers=system.auth("client-C"))
    assert r.status_code == 200 and r.json()["order"]["price"] == 1500


async def test_both_replicas_give_the_same_answers(system):
    async with httpx.AsyncClient(timeout=5) as client:
        async def same():
            books = [(await client.get(f"{u}/market/orderbook", params={"instrument": "SOL-USD"})).json()
                     for u in system.query_urls]
            trades = [(await client.get(f"{u}/market/trades", params={"instrument": "SOL-USD"})).json()["trades"]
                      for u in system.query_urls]
            for b in books:
                b.pop("timestamp", None)
            return books[0] == books[1] and trades[0] == trades[1]
        assert await eventually(same)
