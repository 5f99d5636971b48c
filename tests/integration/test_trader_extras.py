"""Cancel-all, stop orders and end-of-day settlement through the command API (real process,
real PostgreSQL)."""

import asyncio
from decimal import Decimal

import asyncpg
import pytest

from tests.support.services import DSN, command_with_keys, reset_db


@pytest.fixture(scope="module")
async def svc():
    await reset_db()
    async with command_with_keys(("alice", "bob", "carol"), {"EXCHANGE_RATE_LIMIT_PER_SECOND": "0"}) as proc:
        yield proc


async def order(svc, who, **body):
    r = await svc.http.post("/orders", json=body, headers={"Authorization": f"Bearer {svc.keys[who]}"})
    assert r.status_code == 201, r.text
    return r.json()


async def status_of(svc, who, oid):
    r = await svc.http.get(f"/orders/{oid}", headers={"Authorization": f"Bearer {svc.keys[who]}"})
    return r.json()["order"]["status"]


async def test_cancel_all_cancels_only_own_orders_with_filters(svc):
    a_btc_buy = [(await order(svc, "alice", instrument="BTC-USD", side="buy", type="limit", price=p, quantity=1))
                 ["order"]["order_id"] for p in (100, 101)]
    a_btc_sell = (await order(svc, "alice", instrument="BTC-USD", side="sell", type="limit", price=500,
                              quantity=1))["order"]["order_id"]
    a_eth = (await order(svc, "alice", instrument="ETH-USD", side="buy", type="limit", price=10,
                         quantity=1))["order"]["order_id"]
    b_btc = (await order(svc, "bob", instrument="BTC-USD", side="buy", type="limit", price=100,
                         quantity=1))["order"]["order_id"]
    h = {"Authorization": f"Bearer {svc.keys['alice']}"}

    r = await svc.http.post("/orders/cancel-all", json={"instrument": "BTC-USD", "side": "buy"}, headers=h)
    assert r.status_code == 200 and sorted(r.json()["cancelled"]) == sorted(a_btc_buy)
    assert await status_of(svc, "alice", a_btc_sell) == "open"

    r = await svc.http.post("/orders/cancel-all", json={"all": True}, headers=h)
    assert sorted(r.json()["cancelled"]) == sorted([a_btc_sell, a_eth])
    assert await status_of(svc, "bob", b_btc) == "open"
    r = await svc.http.post("/orders/cancel-all", json={"all": True}, headers=h)
    assert r.json()["cancelled"] == []
    r = await svc.http.post("/orders/cancel-all", json={"instrument": "NOPE"}, headers=h)
    assert r.status_code == 400 and r.json()["error"]["field"] == "instrument"
    r = await svc.http.post("/orders/cancel-all", json={"all": True, "client_id": "bob"}, headers=h)
    assert r.status_code == 403


async def test_stop_limit_waits_then_triggers_on_the_last_trade(svc):
    stop = await order(svc, "carol", instrument="SOL-USD", side="buy", type="stop_limit", stop_price=105,
                       price=106, quantity=1)
    assert stop["order"]["status"] == "pending" and stop["order"]["stop_price"] == 105
    sid = stop["order"]["order_id"]
    await order(svc, "alice", instrument="SOL-USD", side="sell", type="limit", price=104, quantity=1)
    await order(svc, "bob", instrument="SOL-USD", side="buy", type="market", quantity=1)  # last = 104
    assert await status_of(svc, "carol", sid) == "pending"
    await order(svc, "alice", instrument="SOL-USD", side="sell", type="limit", price=105, quantity=2)
    await order(svc, "bob", instrument="SOL-USD", side="buy", type="market", quantity=1)  # last = 105: triggers
    # the triggered buy at up to 106 takes alice's remaining 1 @ 105
    assert await status_of(svc, "carol", sid) == "filled"


async def test_settlement_nets_to_zero_and_is_written_once(svc):
    await order(svc, "alice", instrument="ETH-USD", side="sell", type="limit", price="2000.10", quantity="1.5")
    await order(svc, "bob", instrument="ETH-USD", side="buy", type="limit", price="2000.10", quantity="1")
    await order(svc, "carol", instrument="ETH-USD", side="buy", type="market", quantity="0.5")
    admin = {"Authorization": f"Bearer {svc.keys['admin']}"}
    r = await svc.http.post("/admin/settlement", json={}, headers={"Authorization": f"Bearer {svc.keys['bob']}"})
    assert r.status_code == 403
    await asyncio.sleep(0.01)
    r = await svc.http.post("/admin/settlement", json={}, headers=admin)
    assert r.status_code == 201, r.text
    cutoff = r.json()["cutoff"]
    eth = next(run for run in r.json()["runs"] if run["instrument"] == "ETH-USD")
    assert eth["created"] and eth["trade_count"] == 2

    conn = await asyncpg.connect(DSN)
    try:
        rows = {r["client_id"]: r for r in await conn.fetch("SELECT * FROM settlements WHERE instrument='ETH-USD'")}
        totals = await conn.fetch("SELECT instrument, sum(net_base) b, sum(net_quote) q FROM settlements"
                                  " GROUP BY instrument")
        assert all(t["b"] == 0 and t["q"] == 0 for t in totals), totals
        assert (rows["alice"]["net_base"], rows["alice"]["net_quote"]) == (Decimal("-1.5"), Decimal("3000.15"))
        assert (rows["bob"]["net_base"], rows["bob"]["net_quote"]) == (Decimal("1"), Decimal("-2000.1"))
        assert (rows["carol"]["net_base"], rows["carol"]["net_quote"]) == (Decimal("0.5"), Decimal("-1000.05"))
        count = await conn.fetchval("SELECT count(*) FROM settlements")

        again = await svc.http.post("/admin/settlement", json={"cutoff": cutoff}, headers=admin)
        assert not any(run["created"] for run in again.json()["runs"])
        assert await conn.fetchval("SELECT count(*) FROM settlements") == count

        await order(svc, "bob", instrument="ETH-USD", side="sell", type="limit", price="2001", quantity="1")
        await order(svc, "carol", instrument="ETH-USD", side="buy", type="market", quantity="1")
        await asyncio.sleep(0.01)
        nxt = await svc.http.post("/admin/settlement", json={}, headers=admin)
        run2 = next(run for run in nxt.json()["runs"] if run["instrument"] == "ETH-USD")
        assert run2["created"] and run2["from_seq"] == eth["to_seq"] and run2["trade_count"] == 1
        r2 = {r["client_id"]: r for r in await conn.fetch(
            "SELECT * FROM settlements WHERE instrument='ETH-USD' AND to_seq=$1", run2["to_seq"])}
        assert set(r2) == {"bob", "carol"} and r2["carol"]["net_quote"] == Decimal("-2001")
    finally:
        await conn.close()
    bad = await svc.http.post("/admin/settlement", json={"cutoff": "yesterday"}, headers=admin)
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "cutoff"
