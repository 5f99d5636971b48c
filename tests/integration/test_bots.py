"""Issue 15 through the command API, as a bot uses it (a real `python -m command_service`
against the real PostgreSQL, auth on): amend, icebergs, good-till-date, the dead man's
switch, cancel-on-disconnect, key scopes, RateLimit headers."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import asyncpg
import httpx
import pytest
import websockets

from contracts.api import iso_ms, parse_iso
from tests.support.services import DSN, ROOT, ServiceProcess, command_with_keys, free_port, reset_db


@pytest.fixture(scope="module")
async def svc():
    await reset_db()
    async with command_with_keys(("mm", "taker", "other", "switch", "switch2", "ws", "exp"), {"EXCHANGE_RATE_LIMIT_PER_SECOND": "0"}) as proc:
        yield proc


def h(svc, who):
    return {"Authorization": f"Bearer {svc.keys[who]}"}


async def place(svc, who, **body):
    r = await svc.http.post("/orders", json=body, headers=h(svc, who))
    assert r.status_code == 201, r.text
    return r.json()


async def get(svc, who, oid):
    r = await svc.http.get(f"/orders/{oid}", headers=h(svc, who))
    assert r.status_code == 200, r.text
    return r.json()["order"]


async def cancel_reason(oid: str) -> str | None:
    conn = await asyncpg.connect(DSN)
    try:
        raw = await conn.fetchval("SELECT payload FROM events WHERE type = 'order_cancelled' AND convert_from(payload, 'UTF8') LIKE $1",
                                  f'%"order_id":"{oid}"%')
    finally:
        await conn.close()
    return json.loads(bytes(raw))["reason"] if raw else None


# --------------------------------------------------------------------------- amend


async def test_amend_decrease_keeps_priority_and_price_change_trades(svc):
    sym = "SOL-USD"
    first = (await place(svc, "mm", instrument=sym, side="sell", type="limit", price=200, quantity=5))["order"]
    second = (await place(svc, "other", instrument=sym, side="sell", type="limit", price=200, quantity=5))["order"]
    r = await svc.http.post(f"/orders/{first['order_id']}/amend", json={"quantity": 3}, headers=h(svc, "mm"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["order"]["quantity"] == 3 and body["order"]["remaining_quantity"] == 3 and body["trades"] == []
    assert body["orderbook"]["asks"][0] == {"price": 200, "quantity": 8, "cumulative": 8}
    # still first in the queue: a buy of 3 fills the amended order, not the other one
    t = await place(svc, "taker", instrument=sym, side="buy", type="limit", price=200, quantity=3)
    assert [x["sell_order_id"] for x in t["trades"]] == [first["order_id"]]
    # a price change re-enters like a new limit order and may trade
    bid = (await place(svc, "taker", instrument=sym, side="buy", type="limit", price=190, quantity=2))["order"]
    r = await svc.http.post(f"/orders/{bid['order_id']}/amend", json={"price": "200"}, headers=h(svc, "taker"))
    assert r.status_code == 200, r.text
    assert r.json()["order"]["status"] == "filled" and r.json()["order"]["price"] == 200
    assert [x["sell_order_id"] for x in r.json()["trades"]] == [second["order_id"]]
    assert (await get(svc, "other", second["order_id"]))["filled_quantity"] == 2


async def test_amend_errors(svc):
    sym = "SOL-USD"
    o = (await place(svc, "mm", instrument=sym, side="buy", type="limit", price=10, quantity=4))["order"]
    oid = o["order_id"]
    url = f"/orders/{oid}/amend"
    unknown = await svc.http.post("/orders/nope-123/amend", json={"quantity": 1}, headers=h(svc, "mm"))
    foreign = await svc.http.post(url, json={"quantity": 1}, headers=h(svc, "other"))
    assert unknown.status_code == foreign.status_code == 404
    assert unknown.json()["error"]["code"] == foreign.json()["error"]["code"] == "not_found"
    for body, code, field in (({}, "missing_field", "quantity"), ({"quantity": 0}, "must_be_positive", "quantity"),
                              ({"quantity": "x"}, "invalid_number", "quantity"),
                              ({"price": 10.0001}, "off_tick", "price"),
                              ({"quantity": 4}, "invalid_amend", "quantity")):
        r = await svc.http.post(url, json=body, headers=h(svc, "mm"))
        assert r.status_code == 400, (body, r.text)
        assert (r.json()["error"]["code"], r.json()["error"].get("field")) == (code, field), (body, r.text)
    r = await svc.http.post(url, content=b"{not json", headers={**h(svc, "mm"), "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    # post-only that would cross: 409, the order stays as it was
    ask = (await place(svc, "other", instrument=sym, side="sell", type="limit", price=12, quantity=1))["order"]
    po = (await place(svc, "mm", instrument=sym, side="buy", type="limit", price=11, quantity=1,
                      post_only=True))["order"]
    r = await svc.http.post(f"/orders/{po['order_id']}/amend", json={"price": 12}, headers=h(svc, "mm"))
    assert r.status_code == 409 and r.json()["error"]["code"] == "post_only_would_cross"
    assert (await get(svc, "mm", po["order_id"]))["price"] == 11
    # a partly filled order cannot shrink to (or below) what is filled
    await place(svc, "taker", instrument=sym, side="sell", type="limit", price=10, quantity=2)  # po, then 1 of o
    assert (await get(svc, "mm", oid))["filled_quantity"] == 1
    r = await svc.http.post(url, json={"quantity": 1}, headers=h(svc, "mm"))
    assert r.status_code == 400 and r.json()["error"]["field"] == "quantity"
    # closed: 409
    await svc.http.post(f"/orders/{oid}/cancel", headers=h(svc, "mm"))
    r = await svc.http.post(url, json={"quantity": 2}, headers=h(svc, "mm"))
    assert r.status_code == 409 and r.json()["error"]["code"] == "order_closed"
    await svc.http.post(f"/orders/{ask['order_id']}/cancel", headers=h(svc, "other"))


# --------------------------------------------------------------------------- iceberg


async def test_iceberg_shows_only_its_display_part(svc):
    sym = "ETH-USD"
    body = await place(svc, "mm", instrument=sym, side="sell", type="limit", price=3000, quantity=10,
                       display_quantity=2)
    ice = body["order"]
    assert (ice["quantity"], ice["display_quantity"]) == (10, 2)
    assert body["orderbook"]["asks"][0]["quantity"] == 2
    t = await place(svc, "taker", instrument=sym, side="buy", type="limit", price=3000, quantity=5)
    assert [x["quantity"] for x in t["trades"]] == [2, 2, 1]  # each shown part its own trade
    assert t["orderbook"]["asks"][0]["quantity"] == 1
    mine = await get(svc, "mm", ice["order_id"])
    assert (mine["filled_quantity"], mine["remaining_quantity"], mine["display_quantity"]) == (5, 5, 2)
    for bad in ({"display_quantity": 10}, {"display_quantity": 0}, {"display_quantity": 1, "time_in_force": "IOC"},
                {"display_quantity": "0.0000000001"}):
        r = await svc.http.post("/orders", json={"instrument": sym, "side": "sell", "type": "limit", "price": 3000,
                                                 "quantity": 10, **bad}, headers=h(svc, "mm"))
        assert r.status_code == 400 and r.json()["error"]["field"] == "display_quantity", (bad, r.text)
    await svc.http.post(f"/orders/{ice['order_id']}/cancel", headers=h(svc, "mm"))


# --------------------------------------------------------------------------- GTD


async def test_gtd_expires_within_100_ms_of_its_time(svc):
    expire = time.time_ns() + 400_000_000
    o = (await place(svc, "exp", instrument="BTC-USD", side="buy", type="limit", price=100, quantity=1,
                     time_in_force="GTD", expire_time=iso_ms(expire)))["order"]
    assert o["time_in_force"] == "GTD" and o["expire_time"] == iso_ms(expire)
    deadline = time.monotonic() + 5
    while (state := await get(svc, "exp", o["order_id"]))["status"] == "open" and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert state["status"] == "cancelled"
    late_ms = (parse_iso(state["updated_at"]) - parse_iso(o["expire_time"])) / 1e6
    assert 0 <= late_ms < 100, late_ms
    assert await cancel_reason(o["order_id"]) == "expired"
    for bad, field in (({"time_in_force": "GTD"}, "expire_time"),
                       ({"time_in_force": "GTD", "expire_time": iso_ms(time.time_ns() - 10**9)}, "expire_time"),
                       ({"time_in_force": "GTD", "expire_time": "tomorrow"}, "expire_time"),
                       ({"expire_time": iso_ms(time.time_ns() + 10**10)}, "expire_time")):
        r = await svc.http.post("/orders", json={"instrument": "BTC-USD", "side": "buy", "type": "limit",
                                                 "price": 100, "quantity": 1, **bad}, headers=h(svc, "exp"))
        assert r.status_code == 400 and r.json()["error"]["field"] == field, (bad, r.text)


async def test_gtd_orders_past_their_time_expire_at_once_after_a_restart(svc):
    # a second service process on the same database, started after the first is stopped
    svc.stop()
    port = free_port()
    p = ServiceProcess("command_service", port, {"EXCHANGE_AUTH": "enabled", "EXCHANGE_RATE_LIMIT_PER_SECOND": "0"},
                       log_name="command-gtd-restart").start()
    try:
        await p.wait_ready()
        async with httpx.AsyncClient(base_url=p.url, timeout=10) as http:
            expire = time.time_ns() + 1_500_000_000
            r = await http.post("/orders", json={"instrument": "BTC-USD", "side": "buy", "type": "limit",
                                                 "price": 101, "quantity": 1, "time_in_force": "GTD",
                                                 "expire_time": iso_ms(expire)}, headers=h(svc, "exp"))
            oid = r.json()["order"]["order_id"]
            p.kill9()  # down across the expire time
            await asyncio.sleep(2.0)
            p.start()
            await p.wait_ready()
            ready = time.time_ns()
            r = await http.get(f"/orders/{oid}", headers=h(svc, "exp"))
            deadline = time.monotonic() + 3
            while r.json()["order"]["status"] == "open" and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
                r = await http.get(f"/orders/{oid}", headers=h(svc, "exp"))
            order = r.json()["order"]
            assert order["status"] == "cancelled"
            assert parse_iso(order["updated_at"]) - ready < 200_000_000  # at once, not at some later tick
            assert await cancel_reason(oid) == "expired"
    finally:
        p.stop()
        svc.start()
        await svc.wait_ready()


# --------------------------------------------------------------------------- dead man's switch


async def test_dead_mans_switch_fires_when_not_refreshed(svc):
    ids = [(await place(svc, "switch", instrument=sym, side="buy", type="limit", price=1, quantity=1))["order"]
           ["order_id"] for sym in ("BTC-USD", "ETH-USD", "SOL-USD")]
    r = await svc.http.post("/orders/cancel-after", json={"timeout_ms": 300}, headers=h(svc, "switch"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["timeout_ms"] == 300
    assert parse_iso(body["trigger_time"]) - parse_iso(body["current_time"]) == 300_000_000
    await asyncio.sleep(0.8)
    for oid in ids:
        assert (await get(svc, "switch", oid))["status"] == "cancelled"
        assert await cancel_reason(oid) == "cancel_after"


async def test_dead_mans_switch_does_not_fire_while_refreshed_or_off(svc):
    other = (await place(svc, "switch", instrument="BTC-USD", side="buy", type="limit", price=1, quantity=1))["order"]
    oid = (await place(svc, "switch2", instrument="BTC-USD", side="buy", type="limit", price=1, quantity=1))["order"]
    for _ in range(8):  # 8 x 100 ms > 300 ms, refreshed all along
        r = await svc.http.post("/orders/cancel-after", json={"timeout_ms": 300}, headers=h(svc, "switch2"))
        assert r.status_code == 200
        await asyncio.sleep(0.1)
    r = await svc.http.post("/orders/cancel-after", json={"timeout_ms": 0}, headers=h(svc, "switch2"))
    assert r.json()["trigger_time"] is None
    await asyncio.sleep(0.5)
    assert (await get(svc, "switch2", oid["order_id"]))["status"] == "open"
    assert (await get(svc, "switch", other["order_id"]))["status"] == "open"  # another client's switch is not ours
    for bad, code in (({"timeout_ms": -1}, "invalid_field"), ({}, "missing_field"),
                      ({"timeout_ms": "soon"}, "invalid_field"), ({"timeout_ms": 86_400_001}, "invalid_field")):
        r = await svc.http.post("/orders/cancel-after", json=bad, headers=h(svc, "switch2"))
        assert r.status_code == 400 and r.json()["error"]["code"] == code, (bad, r.text)
    r = await svc.http.post("/orders/cancel-after", json={"timeout_ms": 100})
    assert r.status_code == 401


# --------------------------------------------------------------------------- WebSocket


def ws_url(svc):
    return svc.url.replace("http://", "ws://") + "/ws"


async def ask(ws, msg):
    await ws.send(json.dumps(msg))
    while True:
        reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
        if reply.get("request_id") == msg.get("request_id"):
            return reply


@pytest.mark.ws_invalid_frames  # error cases on purpose
async def test_cancel_on_disconnect_cancels_only_that_sockets_orders(svc):
    hdr = h(svc, "ws")
    async with websockets.connect(ws_url(svc), additional_headers=hdr) as keep:
        kept = await ask(keep, {"type": "order", "order_type": "limit", "side": "buy", "price": 2, "quantity": 1,
                                "instrument": "BTC-USD", "request_id": 1})
        async with websockets.connect(ws_url(svc), additional_headers=hdr) as ws:
            a = await ask(ws, {"type": "order", "order_type": "limit", "side": "buy", "price": 2, "quantity": 1,
                               "instrument": "ETH-USD", "request_id": 2})  # before the session message: counts too
            s = await ask(ws, {"type": "session", "cancel_on_disconnect": True, "request_id": "s"})
            assert s["type"] == "session" and s["cancel_on_disconnect"] is True
            b = await ask(ws, {"type": "order", "order_type": "limit", "side": "buy", "price": 3, "quantity": 1,
                               "instrument": "BTC-USD", "order_id": "cod-client-id", "request_id": 3})
            assert a["type"] == b["type"] == "order_accepted", (a, b)
        http_order = (await place(svc, "ws", instrument="BTC-USD", side="buy", type="limit", price=2, quantity=1))
        await asyncio.sleep(0.3)
        for o in (a["order"], b["order"]):
            assert (await get(svc, "ws", o["order_id"]))["status"] == "cancelled"
            assert await cancel_reason(o["order_id"]) == "cancel_on_disconnect"
        assert (await get(svc, "ws", kept["order"]["order_id"]))["status"] == "open"
        assert (await get(svc, "ws", http_order["order"]["order_id"]))["status"] == "open"
        bad = await ask(keep, {"type": "session", "request_id": "x"})
        assert bad["type"] == "error" and bad["error"]["field"] == "cancel_on_disconnect"


@pytest.mark.ws_invalid_frames  # error cases on purpose
async def test_ws_amend_and_cancel_all(svc):
    async with websockets.connect(ws_url(svc), additional_headers=h(svc, "ws")) as ws:
        o = await ask(ws, {"type": "order", "order_type": "limit", "side": "sell", "price": 900, "quantity": 3,
                           "instrument": "SOL-USD", "request_id": "p"})
        oid = o["order"]["order_id"]
        a = await ask(ws, {"type": "amend", "order_id": oid, "quantity": 2, "request_id": "a"})
        assert a["type"] == "amend_accepted" and a["order"]["quantity"] == 2 and a["trades"] == []
        e = await ask(ws, {"type": "amend", "order_id": "nope-1", "quantity": 2, "request_id": "e"})
        assert e["type"] == "error" and e["error"]["code"] == "not_found"
        e = await ask(ws, {"type": "amend", "quantity": 2, "request_id": "e2"})
        assert e["type"] == "error" and e["error"]["code"] == "missing_field" and e["error"]["field"] == "order_id"
        e = await ask(ws, {"type": "amend", "order_id": oid, "request_id": "e3"})
        assert e["type"] == "error" and e["error"]["code"] == "missing_field"
        other = await ask(ws, {"type": "order", "order_type": "limit", "side": "sell", "price": 901, "quantity": 1,
                               "instrument": "BTC-USD", "request_id": "q"})
        c = await ask(ws, {"type": "cancel_all", "instrument": "SOL-USD", "request_id": "c"})
        assert c["type"] == "cancel_all_accepted" and c["cancelled"] == [oid]
        c = await ask(ws, {"type": "cancel_all", "all": True, "request_id": "c2"})
        assert other["order"]["order_id"] in c["cancelled"]
        e = await ask(ws, {"type": "cancel_all", "instrument": "DOGE-USD", "request_id": "c3"})
        assert e["type"] == "error" and e["error"]["code"] == "unknown_instrument"


# --------------------------------------------------------------------------- scopes


def keys_cli(*args) -> dict:
    out = subprocess.run([sys.executable, "-m", "command_service.api_keys", "--dsn", DSN, *args], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


async def test_key_scopes(svc):
    made = {scope: keys_cli("create", "--client-id", "scoped", "--scope", scope, "--json")
            for scope in ("read", "trade", "admin")}
    assert {k: v["kind"] for k, v in made.items()} == {"read": "read", "trade": "trade", "admin": "admin"}
    read = {"Authorization": f"Bearer {made['read']['key']}"}
    trade = {"Authorization": f"Bearer {made['trade']['key']}"}
    order = {"instrument": "BTC-USD", "side": "buy", "type": "limit", "price": 5, "quantity": 1}
    r = await svc.http.post("/orders", json=order, headers=read)
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"
    r = await svc.http.post("/orders", json={**order, "idempotency_key": "k1"}, headers=read)
    assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope"
    r = await svc.http.post("/orders", json=order, headers=trade)
    assert r.status_code == 201
    oid = r.json()["order"]["order_id"]
    assert (await svc.http.get(f"/orders/{oid}", headers=read)).status_code == 200  # reads its own orders
    for path, body in ((f"/orders/{oid}/cancel", None), (f"/orders/{oid}/amend", {"quantity": 2}),
                       ("/orders/cancel-all", None), ("/orders/cancel-after", {"timeout_ms": 1000})):
        r = await svc.http.post(path, json=body, headers=read)
        assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope", (path, r.text)
    r = await svc.http.post("/admin/snapshot", headers=trade)
    assert r.status_code == 403
    async with websockets.connect(ws_url(svc), additional_headers=read) as ws:
        e = await ask(ws, {"type": "order", "order_type": "limit", "side": "buy", "price": 5, "quantity": 1,
                           "request_id": 1})
        assert e["type"] == "error" and e["error"]["code"] == "insufficient_scope"
    # keys made before scopes existed ('trader') trade as before
    conn = await asyncpg.connect(DSN)
    try:
        kinds = {r["kind"] for r in await conn.fetch("SELECT DISTINCT kind FROM api_keys")}
    finally:
        await conn.close()
    assert kinds <= {"read", "trade", "admin"}
    assert (await svc.http.post(f"/orders/{oid}/cancel", headers=trade)).status_code == 200
