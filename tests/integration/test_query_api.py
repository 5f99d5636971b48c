"""Read API against the real servers: shapes and exact values of every endpoint, auth of
per-client data, parameter validation (400 with code and field, never 500), health."""

from __future__ import annotations

import asyncio
import secrets
import time
from decimal import Decimal

import httpx
import msgspec
import pytest
import uvicorn

from tests.support.order_flow import OrderFlow
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
L = 100_000_000  # lots per 1.0 (BTC-like)


def scenario(sym: str, alice: str, bob: str):
    """alice sells 1.0 @ 100 and 2.0 @ 101; bob bids 0.5 @ 99, buys 1.5 at market
    (1.0 @ 100 + 0.5 @ 101), then cancels his bid. Ten minutes ago, within one minute."""
    now = time.time_ns()
    start = now - 600 * 10**9
    start -= start % (60 * 10**9)
    sim = OrderFlow(instrument=sym, start_ts=start, max_step_ns=1_000_000_000, clients=(alice, bob))
    sim.place(alice, "sell", "limit", 10000, 1 * L)
    sim.place(alice, "sell", "limit", 10100, 2 * L)
    sim.place(bob, "buy", "limit", 9900, L // 2)
    sim.place(bob, "buy", "market", None, 3 * L // 2)
    sim.cancel(f"{sym}-o3")
    return sim


@pytest.fixture(scope="module")
async def api(views_redis_url):
    """Every test runs on a single Redis and on a Redis Cluster (views_redis_url)."""
    sym, other = unique("QP") + "-USD", unique("QQ") + "-USD"
    alice, bob, admin = unique("alice-"), unique("bob-"), unique("admin-")
    keys = {alice: "exk_" + secrets.token_urlsafe(16), bob: "exk_" + secrets.token_urlsafe(16),
            admin: "exk_" + secrets.token_urlsafe(16)}
    settings = settings_for_test([sym, other], redis_url=views_redis_url)
    await create_topic(settings)
    await wipe(settings.redis_url, settings.redis_prefix)
    async with JournalSeeder(settings.pg_dsn) as journal:
        await journal.clear([sym, other])
        await journal.add_key(keys[alice], alice)
        await journal.add_key(keys[bob], bob)
        await journal.add_key(keys[admin], admin, "admin")
        sim = scenario(sym, alice, bob)
        await journal.append(sim.events)
        replica = await Replica(settings).start()
        # nothing goes through the broker here: the watchdog catches up from the journal
        await wait_for_seq(settings.redis_url, settings.redis_prefix, {sym: sim.seq})
        async with httpx.AsyncClient(base_url=replica.url, timeout=10) as http:
            yield {"http": http, "sym": sym, "other": other, "alice": alice, "bob": bob, "admin": admin,
                   "keys": keys, "sim": sim, "settings": settings, "replica": replica}
        await replica.stop()
        await journal.clear([sym, other])
        await journal.remove_keys(list(keys.values()))
    await wipe(settings.redis_url, settings.redis_prefix)
    await delete_topic(settings)


def auth(key):
    return {"Authorization": f"Bearer {key}"}


async def get(http, path, **kw):
    r = await http.get(path, **kw)
    return r.status_code, decode(r.content)


async def test_orderbook(api):
    status, body = await get(api["http"], "/market/orderbook", params={"instrument": api["sym"], "levels": 5})
    assert status == 200
    assert body["instrument"] == api["sym"] and body["seq"] == api["sim"].seq
    assert body["bids"] == []
    assert body["asks"] == [{"price": 101, "quantity": Decimal("1.5"), "cumulative": Decimal("1.5")}]
    assert body["timestamp"].endswith("Z") and len(body["timestamp"]) == 24


async def test_trades_newest_first(api):
    sym = api["sym"]
    status, body = await get(api["http"], "/market/trades", params={"instrument": sym, "limit": 10})
    assert status == 200 and body["count"] == 2
    t0, t1 = body["trades"]
    assert (t0["price"], t0["quantity"], t1["price"], t1["quantity"]) == (101, Decimal("0.5"), 100, 1)
    assert t0["seq"] > t1["seq"] and t0["taker_side"] == "buy"
    assert t0["buy_order_id"] == f"{sym}-o4" and t0["sell_order_id"] == f"{sym}-o2"
    assert set(t0) == {"trade_id", "buy_order_id", "sell_order_id", "instrument", "price", "quantity",
                       "taker_side", "timestamp", "seq"}
    status, body = await get(api["http"], "/market/trades", params={"instrument": sym, "limit": 1})
    assert body["count"] == 1 and body["trades"][0]["price"] == 101


async def test_analytics_exact(api):
    sym = api["sym"]
    ts = api["sim"].events[0].ts
    start = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(ts // 10**9 - 60))
    end = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(ts // 10**9 + 3600))
    status, body = await get(api["http"], "/market/analytics",
                             params={"instrument": sym, "start_time": start, "end_time": end, "interval": 5})
    assert status == 200 and body["interval_minutes"] == 5 and body["start_time"] == start
    (agg,) = body["aggregates"]
    assert agg["trade_count"] == 2 and agg["total_quantity"] == Decimal("1.5")
    assert agg["total_volume"] == Decimal("150.5") and agg["vwap"] == Decimal("100.333333")
    assert agg["avg_price"] == Decimal("100.5") and (agg["min_price"], agg["max_price"]) == (100, 101)
    assert body["overall_vwap"] == Decimal("100.333333")
    # default window (the last 24 h) contains it too
    status, body = await get(api["http"], "/market/analytics", params={"instrument": sym})
    assert status == 200 and sum(a["trade_count"] for a in body["aggregates"]) == 2


async def test_candles_ticker_instruments(api):
    sym = api["sym"]
    status, body = await get(api["http"], "/market/candles", params={"instrument": sym, "interval": "5m"})
    assert status == 200 and body["interval"] == "5m"
    (c,) = body["candles"]
    assert (c["open"], c["high"], c["low"], c["close"], c["volume"], c["trade_count"]) == (
        100, 101, 100, 101, Decimal("1.5"), 2)
    status, t = await get(api["http"], "/market/ticker", params={"instrument": sym})
    assert status == 200
    assert (t["last_price"], t["open_24h"], t["high_24h"], t["low_24h"], t["volume_24h"]) == (
        101, 100, 101, 100, Decimal("1.5"))
    assert t["change_24h"] == 1 and t["change_percent_24h"] == 1 and t["best_ask"] == 101 and t["best_bid"] is None
    status, body = await get(api["http"], "/market/instruments")
    assert status == 200 and [i["symbol"] for i in body["instruments"]] == [sym, api["other"]]
    assert body["instruments"][0]["tick_size"] == Decimal("0.01")


async def test_positions_exact_and_authorized(api):
    http, alice, bob, admin, keys = api["http"], api["alice"], api["bob"], api["admin"], api["keys"]
    path = f"/market/positions/{bob}"
    assert (await http.get(path)).status_code == 401
    status, body = await get(http, path, headers=auth("exk_not-a-key"))
    assert status == 401 and body["error"]["code"] == "unauthorized"
    status, body = await get(http, path, headers=auth(keys[alice]))
    assert status == 403 and body["error"] == {"code": "forbidden", "message": body["error"]["message"],
                                               "field": "client_id"}
    status, body = await get(http, path, headers=auth(keys[bob]))
    assert status == 200 and body["client_id"] == bob
    (p,) = body["positions"]
    assert p["instrument"] == api["sym"] and p["net_quantity"] == Decimal("1.5")
    assert p["total_cost"] == Decimal("150.5") and p["avg_price"] == Decimal("100.333333")
    assert p["realized_pnl"] == 0 and p["unrealized_pnl"] == Decimal("1")  # 1.5 * 101 - 150.5
    status, body = await get(http, f"/market/positions/{alice}", headers=auth(keys[admin]))
    assert status == 200
    (p,) = body["positions"]
    assert p["net_quantity"] == Decimal("-1.5") and p["total_cost"] == Decimal("-150.5")
    assert p["unrealized_pnl"] == Decimal("-1") and p["avg_price"] == Decimal("100.333333")


async def test_order_history_and_fills_paginate(api):
    http, sym, alice, bob, keys = api["http"], api["sym"], api["alice"], api["bob"], api["keys"]
    status, body = await get(http, "/market/orders", headers=auth(keys[bob]))
    assert status == 200 and body["client_id"] == bob
    assert [o["order_id"] for o in body["orders"]] == [f"{sym}-o4", f"{sym}-o3"]
    o4 = body["orders"][0]
    assert (o4["status"], o4["filled_quantity"], o4["average_price"], o4["type"]) == (
        "filled", Decimal("1.5"), Decimal("100.333333"), "market")
    assert body["orders"][1]["status"] == "cancelled"
    status, body = await get(http, "/market/orders", params={"status": "open"}, headers=auth(keys[bob]))
    assert body["orders"] == [] and body["next_cursor"] is None
    status, body = await get(http, "/market/orders", params={"status": "open", "instrument": sym},
                             headers=auth(keys[alice]))
    (o2,) = body["orders"]
    assert (o2["order_id"], o2["status"], o2["remaining_quantity"]) == (f"{sym}-o2", "partially_filled", Decimal("1.5"))
    # numbers are plain JSON numbers: never an exponent, even for one lot
    assert b"E-" not in (await http.get("/market/orders", headers=auth(keys[alice]))).content
    # cursor pagination, newest first
    seen, cursor = [], None
    while True:
        params = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        status, body = await get(http, "/market/orders", params=params, headers=auth(keys[alice]))
        assert status == 200
        seen += [o["order_id"] for o in body["orders"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"{sym}-o2", f"{sym}-o1"]
    # another client's history: 403; admin may read it
    status, body = await get(http, "/market/orders", params={"client_id": bob}, headers=auth(keys[alice]))
    assert status == 403
    status, body = await get(http, "/market/orders", params={"client_id": bob}, headers=auth(keys[api["admin"]]))
    assert status == 200 and len(body["orders"]) == 2
    assert (await http.get("/market/orders")).status_code == 401
    # fills
    status, body = await get(http, "/market/fills", params={"limit": 1}, headers=auth(keys[bob]))
    assert status == 200 and body["count"] == 1
    f0 = body["fills"][0]
    assert (f0["price"], f0["quantity"], f0["role"], f0["side"], f0["order_id"]) == (
        101, Decimal("0.5"), "taker", "buy", f"{sym}-o4")
    status, body = await get(http, "/market/fills", params={"limit": 1, "cursor": body["next_cursor"]},
                             headers=auth(keys[bob]))
    assert [(f["price"], f["quantity"]) for f in body["fills"]] == [(100, 1)] and body["next_cursor"] is None
    status, body = await get(http, "/market/fills", params={"instrument": sym}, headers=auth(keys[alice]))
    assert [f["role"] for f in body["fills"]] == ["maker", "maker"] and body["fills"][0]["notional"] == Decimal("50.5")


BAD = [
    ("/market/orderbook", {"levels": "0"}, "out_of_range", "levels"),
    ("/market/orderbook", {"levels": "101"}, "out_of_range", "levels"),
    ("/market/orderbook", {"levels": "abc"}, "invalid_integer", "levels"),
    ("/market/orderbook", {"levels": "1.5"}, "invalid_integer", "levels"),
    ("/market/orderbook", {"levels": "99999999999999999999999"}, "invalid_integer", "levels"),
    ("/market/orderbook", {"instrument": "DOGE-USD"}, "unknown_instrument", "instrument"),
    ("/market/trades", {"limit": "0"}, "out_of_range", "limit"),
    ("/market/trades", {"limit": "1001"}, "out_of_range", "limit"),
    ("/market/trades", {"limit": "-3"}, "out_of_range", "limit"),
    ("/market/trades", {"limit": "ten"}, "invalid_integer", "limit"),
    ("/market/analytics", {"start_time": "yesterday"}, "invalid_time", "start_time"),
    ("/market/analytics", {"end_time": "2024-13-01T00:00:00Z"}, "invalid_time", "end_time"),
    ("/market/analytics", {"start_time": "2024-01-02T00:00:00Z", "end_time": "2024-01-01T00:00:00Z"},
     "invalid_range", "start_time"),
    ("/market/analytics", {"start_time": "2024-01-01T00:00:00Z", "end_time": "2024-06-01T00:00:00Z"},
     "range_too_large", "start_time"),
    ("/market/analytics", {"interval": "0"}, "out_of_range", "interval"),
    ("/market/analytics", {"interval": "x"}, "invalid_integer", "interval"),
    ("/market/candles", {"interval": "2m"}, "invalid_value", "interval"),
    ("/market/candles", {"limit": "0"}, "out_of_range", "limit"),
    ("/market/ticker", {"instrument": ""}, None, None),  # empty = default instrument
]


@pytest.mark.parametrize("path,params,code,field", BAD)
async def test_parameter_validation(api, path, params, code, field):
    params = {"instrument": api["sym"], **params}
    r = await api["http"].get(path, params=params)
    body = decode(r.content)
    if code is None:
        assert r.status_code in (200, 400)  # default BTC-USD is not in this test's instruments
        return
    assert r.status_code == 400, body
    assert body["error"]["code"] == code and body["error"]["field"] == field and body["error"]["message"]


@pytest.mark.parametrize("params,code,field", [
    ({"status": "pending"}, "invalid_value", "status"),
    ({"limit": "501"}, "out_of_range", "limit"),
    ({"cursor": "!!!"}, "invalid_cursor", "cursor"),
    ({"cursor": "Zm9v"}, "invalid_cursor", "cursor"),
    ({"instrument": "NOPE"}, "unknown_instrument", "instrument"),
])
async def test_history_parameter_validation(api, params, code, field):
    r = await api["http"].get("/market/orders", params=params, headers=auth(api["keys"][api["bob"]]))
    assert r.status_code == 400 and decode(r.content)["error"] == {
        "code": code, "field": field, "message": decode(r.content)["error"]["message"]}


async def test_never_500_on_odd_input(api):
    http = api["http"]
    for path in ("/market/orderbook", "/market/trades", "/market/analytics", "/market/candles", "/market/ticker"):
        for params in ({"instrument": "\x00"}, {"levels": "\u0661"}, {"limit": "+1"}, {"start_time": "9" * 40},
                       {"end_time": "0000-00-00"}, {"interval": "1e3"}, {"instrument": "a" * 5000}):
            r = await http.get(path, params=params)
            assert r.status_code in (200, 400), (path, params, r.text)
            if r.status_code == 400:
                assert set(decode(r.content)["error"]) >= {"code", "message"}
    r = await http.get("/market/nope")
    assert r.status_code == 404 and decode(r.content)["error"]["code"] == "not_found"
    r = await http.post("/market/orderbook")
    assert r.status_code == 405 and "error" in decode(r.content)


async def test_openapi_document_is_served(api):
    status, doc = await get(api["http"], "/schema/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    assert {"/market/orderbook", "/market/trades", "/market/analytics", "/market/candles", "/market/ticker",
            "/market/instruments", "/market/positions/{client_id}", "/market/orders", "/market/fills",
            "/healthz", "/healthz/system"} <= set(doc["paths"])
    levels = [p for p in doc["paths"]["/market/orderbook"]["get"]["parameters"] if p["name"] == "levels"][0]
    assert (levels["schema"]["minimum"], levels["schema"]["maximum"]) == (1, 100)


async def test_health_and_metrics(api):
    http = api["http"]
    status, body = await get(http, "/healthz")
    assert status == 200 and body["status"] == "healthy"
    assert body["checks"] == {"postgres": "healthy", "redis": "healthy", "kafka": "healthy", "nats": "healthy"}
    # the system check also asks the command service: down -> 503
    status, body = await get(http, "/healthz/system")
    assert status == 503 and body["checks"]["command"] == "unhealthy" and body["checks"]["query"] == "healthy"
    r = await http.get("/metrics")
    text = r.text
    for name in ("projection_lag_seconds_bucket", "projection_lag_events", "projector_events_applied_total",
                 "projector_rebuilds_total", "ws_connections", "ws_messages_sent_total", "ws_messages_dropped_total",
                 "http_request_duration_seconds_bucket", "current_orderbook_depth", "trades_total"):
        assert name in text, name


async def test_system_health_with_a_command_service():
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                m = await receive()
                if m["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif m["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"status":"healthy"}'})

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    server.capture_signals = lambda: __import__("contextlib").nullcontext()
    task = asyncio.create_task(server.serve())
    sym = unique("QH") + "-USD"
    replica = await Replica(settings_for_test([sym], command_url=f"http://127.0.0.1:{port}")).start()
    try:
        while not server.started:
            await asyncio.sleep(0.02)
        async with httpx.AsyncClient(base_url=replica.url) as http:
            r = await http.get("/healthz/system")
            body = decode(r.content)
            assert r.status_code == 200 and body["status"] == "healthy"
            assert set(body["checks"]) == {"postgres", "redis", "kafka", "nats", "command", "query"}
    finally:
        await replica.stop()
        server.should_exit = True
        await task


async def test_auth_disabled_opens_per_client_reads(api):
    s = api["settings"].replace(auth_enabled=False, port=free_port(), projector_enabled=False)
    replica = await Replica(s).start()
    try:
        async with httpx.AsyncClient(base_url=replica.url) as http:
            status, body = await get(http, f"/market/positions/{api['bob']}")
            assert status == 200 and body["positions"][0]["net_quantity"] == Decimal("1.5")
            status, body = await get(http, "/market/orders")
            assert status == 400 and body["error"]["field"] == "client_id"
            status, body = await get(http, "/market/orders", params={"client_id": api["alice"]})
            assert status == 200 and len(body["orders"]) == 2
    finally:
        await replica.stop()


async def test_history_across_instruments_merges_newest_first(views_redis_url):
    """A client's orders and fills in two instruments live in per-instrument keys (one hash tag per
    instrument, so a Redis Cluster can hold them): without an instrument filter the pages merge
    them newest first, every page size gives the same listing, and positions list both."""
    syms = [unique("QX") + "-USD", unique("QY") + "-USD"]
    settings = settings_for_test(syms, redis_url=views_redis_url, auth_enabled=False)
    await create_topic(settings)
    start = time.time_ns() - 300 * 10**9
    ann, ben = unique("ann-"), unique("ben-")
    flows = [OrderFlow(instrument=s, seed=7 + n, clients=(ann, ben), start_ts=start + n * 50_000_000,
                       max_step_ns=100_000_000) for n, s in enumerate(syms)]
    for f in flows:
        f.run(120)
    async with JournalSeeder(settings.pg_dsn) as journal:
        await journal.clear(syms)
        await journal.append([e for f in flows for e in f.events])
        replica = await Replica(settings).start()
        try:
            await wait_for_seq(settings.redis_url, settings.redis_prefix, {f.instrument: f.seq for f in flows})
            async with httpx.AsyncClient(base_url=replica.url, timeout=10) as http:
                async def listing(path, key, limit, **params):
                    got, cursor = [], None
                    for _ in range(1000):
                        q = {"client_id": ann, "limit": limit, **params, **({"cursor": cursor} if cursor else {})}
                        status, body = await get(http, path, params=q)
                        assert status == 200, body
                        got += body[key]
                        cursor = body["next_cursor"]
                        if cursor is None:
                            return got
                    raise AssertionError("paging did not end")

                for path, key, ident in (("/market/orders", "orders", "order_id"), ("/market/fills", "fills", None)):
                    per = [await listing(path, key, 500, instrument=s) for s in syms]
                    assert all(per), "the client has history in both instruments"
                    whole = await listing(path, key, 500)
                    assert len(whole) == sum(len(p) for p in per)
                    assert {i["instrument"] for i in whole} == set(syms)
                    times = [i["created_at" if ident else "timestamp"] for i in whole]
                    assert times == sorted(times, reverse=True)  # newest first across both
                    for limit in (1, 3, 7):
                        assert await listing(path, key, limit) == whole, (path, limit)
                status, body = await get(http, f"/market/positions/{ann}")
                assert status == 200 and {p["instrument"] for p in body["positions"]} == set(syms)
        finally:
            await replica.stop()
            await journal.clear(syms)
    await wipe(settings.redis_url, settings.redis_prefix)
    await delete_topic(settings)
