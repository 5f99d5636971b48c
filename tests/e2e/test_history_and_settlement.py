"""Order history, fills and settlement records through the gateway (issue: the rest of
what traders expect)."""

import asyncio

import httpx
import pytest

from tests.e2e.conftest import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_history_fills_and_settlement(system):
    async with httpx.AsyncClient(base_url=system.gateway, timeout=10) as gw:
        r = await gw.post("/orders", headers=system.auth("client-A"), json={
            "instrument": "ETH-USD", "side": "sell", "type": "limit", "price": "2500.25", "quantity": "2"})
        sell = r.json()["order"]
        r = await gw.post("/orders", headers=system.auth("client-B"), json={
            "instrument": "ETH-USD", "side": "buy", "type": "market", "quantity": "2"})
        assert r.json()["order"]["status"] == "filled"
        trade_seq = r.json()["trades"][0]["seq"]

        async def closed_in_history():
            r = await gw.get("/market/orders", params={"client_id": "client-A", "status": "closed",
                                                       "instrument": "ETH-USD"}, headers=system.auth("client-A"))
            assert r.status_code == 200, r.text
            return [o for o in r.json()["orders"] if o["order_id"] == sell["order_id"]]

        [hist] = await eventually(closed_in_history)
        assert (hist["status"], hist["filled_quantity"]) == ("filled", 2)
        r = await gw.get("/market/fills", params={"client_id": "client-A"}, headers=system.auth("client-A"))
        assert any(f["order_id"] == sell["order_id"] if "order_id" in f else True for f in r.json()["fills"])
        r = await gw.get("/market/orders", params={"client_id": "client-A"}, headers=system.auth("client-B"))
        assert r.status_code == 403

        await asyncio.sleep(0.01)
        r = await gw.post("/admin/settlement", json={"instrument": "ETH-USD"}, headers=system.auth("admin"))
        assert r.status_code == 201, r.text
        [run] = r.json()["runs"]
        assert run["created"] and run["to_seq"] >= trade_seq

        r = await gw.get("/market/settlements", params={"client_id": "client-A", "instrument": "ETH-USD"},
                         headers=system.auth("client-A"))
        assert r.status_code == 200, r.text
        a = r.json()["settlements"][0]
        r = await gw.get("/market/settlements", params={"client_id": "client-B", "instrument": "ETH-USD"},
                         headers=system.auth("client-B"))
        b = r.json()["settlements"][0]
        assert (a["net_quantity"], a["net_quote"]) == (-2, 5000.5)
        assert (b["net_quantity"], b["net_quote"]) == (2, -5000.5)
        r = await gw.get("/market/settlements", params={"client_id": "client-A"}, headers=system.auth("client-B"))
        assert r.status_code == 403
        r = await gw.get("/market/settlements", params={"client_id": "client-A", "limit": 0},
                         headers=system.auth("client-A"))
        assert r.status_code == 400 and r.json()["error"]["field"] == "limit"
