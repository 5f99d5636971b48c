"""Client order ids through the whole exchange (issue 20): the owner's views - the HTTP answer, the
private `orders` channel on /stream, order history - carry `client_order_id`; public market data
(trades over REST and on /stream) carries server order ids only, so two clients using the same
client order id neither block nor learn of each other."""

import asyncio
import json

import httpx
import pytest
import websockets

from tests.e2e.conftest import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")
SYM = "SOL-USD"


async def test_client_order_ids_stay_private_and_per_client(system):
    ws_url = system.gateway.replace("http", "ws") + "/stream"
    async with httpx.AsyncClient(base_url=system.gateway, timeout=10) as gw, \
            websockets.connect(ws_url, additional_headers=system.auth("client-A")) as ws:
        assert json.loads(await ws.recv())["type"] == "connected"
        await ws.send(json.dumps({"type": "subscribe", "channels": ["trades", "orders"], "instrument": SYM}))
        frames: list[dict] = []

        # generous: a projector group rebalancing after an earlier test's restarts can hold the feed for a while
        async def read_until(pred, timeout=45.0):
            end = asyncio.get_running_loop().time() + timeout
            while True:
                for m in frames:
                    if pred(m):
                        return m
                raw = await asyncio.wait_for(ws.recv(), end - asyncio.get_running_loop().time())
                frames.append(json.loads(raw))

        await read_until(lambda m: m["type"] == "subscribed")
        # both clients use the same client order id: both are accepted (before: B got 409)
        sell = await gw.post("/orders", headers=system.auth("client-A"), json={
            "instrument": SYM, "side": "sell", "type": "limit", "price": "150.125", "quantity": "1",
            "client_order_id": "e2e-same"})
        buy = await gw.post("/orders", headers=system.auth("client-B"), json={
            "instrument": SYM, "side": "buy", "type": "limit", "price": "150.125", "quantity": "1",
            "client_order_id": "e2e-same"})
        assert sell.status_code == buy.status_code == 201, (sell.text, buy.text)
        sell, buy = sell.json()["order"], buy.json()["order"]
        assert sell["client_order_id"] == buy["client_order_id"] == "e2e-same"

        # The public trades (/stream, /market/trades) name server ids only. Other tests leave orders in
        # the book, so the buy may fill against them first; but one of the two orders trades: the sell
        # crosses resting bids, or it rests and the buy at its price fills.
        def mine(t):
            return t.get("buy_order_id") == buy["order_id"] or t.get("sell_order_id") == sell["order_id"]

        trade = await read_until(lambda m: m["type"] == "trade" and mine(m))
        assert "client_order_id" not in json.dumps(trade) and "e2e-same" not in json.dumps(trade)

        async def public_trades():
            r = await gw.get("/market/trades", params={"instrument": SYM, "limit": 200})
            return [t for t in r.json()["trades"] if mine(t)]

        rest_trades = await eventually(public_trades, timeout=45)
        assert "e2e-same" not in json.dumps(rest_trades) and "client_order_id" not in json.dumps(rest_trades)

        # the owner's private channel and history carry it
        update = await read_until(lambda m: m["type"] == "order_update" and m["order"]["order_id"] == sell["order_id"])
        assert update["order"]["client_order_id"] == "e2e-same"
        assert {m["order"]["client_id"] for m in frames if m["type"] == "order_update"} == {"client-A"}

        async def history():
            r = await gw.get("/market/orders", params={"client_id": "client-B", "instrument": SYM},
                             headers=system.auth("client-B"))
            return [o for o in r.json()["orders"] if o["order_id"] == buy["order_id"]]

        [hist] = await eventually(history, timeout=45)
        assert hist["client_order_id"] == "e2e-same"

        # each client reads its own order by the shared id; a reuse by its owner is 409
        for who, mine in (("client-A", sell), ("client-B", buy)):
            r = await gw.get("/orders/e2e-same", headers=system.auth(who))
            assert r.status_code == 200 and r.json()["order"]["order_id"] == mine["order_id"]
        r = await gw.post("/orders", headers=system.auth("client-B"), json={
            "instrument": SYM, "side": "buy", "type": "limit", "price": "1", "quantity": "1",
            "client_order_id": "e2e-same"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "duplicate_client_order_id"
        r = await gw.get("/orders/e2e-same", headers=system.auth("client-C"))
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
