"""The command API as a trader uses it: a real `python -m command_service` process against
the real PostgreSQL (auth on, keys in the database)."""

import asyncio
import json

import asyncpg
import httpx
import pytest
import websockets

from contracts.messages import TradeExecuted, decode_event
from engine import OrderBook
from tests.support.services import DSN, ServiceProcess, auth, create_key, event_count, free_port, reset_db


@pytest.fixture(scope="module")
async def svc():
    await reset_db()
    keys = {c: await create_key(c) for c in ("client-A", "client-B")}
    keys["admin"] = await create_key("ops", admin=True)
    for i in range(20):
        keys[f"load-{i}"] = await create_key(f"load-{i}")
    proc = ServiceProcess("command_service", free_port(), {
        "EXCHANGE_AUTH": "enabled",
        "EXCHANGE_RATE_LIMIT_PER_SECOND": "50",
        "EXCHANGE_RATE_LIMIT_BURST": "200",
        "EXCHANGE_MAX_BODY_BYTES": "4096",
    }).start()
    try:
        await proc.wait_ready()
        proc.keys = keys
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
async def http(svc):
    async with httpx.AsyncClient(base_url=svc.url, timeout=10) as client:
        yield client


async def post_order(http, svc, who, **body):
    return await http.post("/orders", json=body, headers=auth(svc, who))


async def test_seed_limit_then_market_sell(http, svc):
    r = await post_order(http, svc, "client-A", idempotency_key="seed-1", client_id="client-A", instrument="SOL-USD",
                         side="buy", type="limit", price=150.5, quantity=2.5)
    assert r.status_code == 201, r.text
    buy = r.json()["order"]
    assert (buy["status"], buy["price"], buy["quantity"], buy["filled_quantity"]) == ("open", 150.5, 2.5, 0)
    assert r.json()["orderbook"]["bids"][0] == {"price": 150.5, "quantity": 2.5, "cumulative": 2.5}
    assert buy["created_at"].endswith("Z") and len(buy["created_at"]) == 24

    r = await post_order(http, svc, "client-B", idempotency_key="seed-2", client_id="client-B", instrument="SOL-USD",
                         side="sell", type="market", quantity=1)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["order"]["status"] == "filled"
    [trade] = body["trades"]
    assert (trade["price"], trade["quantity"], trade["buy_order_id"], trade["sell_order_id"], trade["taker_side"]) == (
        150.5, 1, buy["order_id"], body["order"]["order_id"], "sell")
    r = await http.get(f"/orders/{buy['order_id']}", headers=auth(svc, "client-A"))
    assert r.json()["order"]["status"] == "partially_filled"
    assert r.json()["order"]["filled_quantity"] == 1


async def test_fills_are_exact_decimals(http, svc):
    r = await post_order(http, svc, "client-A", instrument="ETH-USD", side="sell", type="limit", price="0.3",
                         quantity="0.3")
    sell_id = r.json()["order"]["order_id"]
    for q in ("0.1", "0.2"):
        r = await post_order(http, svc, "client-B", instrument="ETH-USD", side="buy", type="market", quantity=q)
        assert r.status_code == 201
    r = await http.get(f"/orders/{sell_id}", headers=auth(svc, "client-A"))
    assert '"filled_quantity":0.3,' in r.text  # never 0.30000000000000004
    assert r.json()["order"]["status"] == "filled"


async def test_idempotent_retry_returns_the_original_response(http, svc):
    body = dict(instrument="BTC-USD", side="buy", type="limit", price=100, quantity=1, idempotency_key="idem-1")
    first = await post_order(http, svc, "client-A", **body)
    before = await event_count()
    again = await post_order(http, svc, "client-A", **body)
    assert again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert await event_count() == before
    changed = await post_order(http, svc, "client-A", **{**body, "quantity": 2})
    assert changed.status_code == 409
    assert changed.json()["error"] == {"code": "idempotency_key_reused", "field": "idempotency_key",
                                       "message": changed.json()["error"]["message"]}
    # keys are per client: client-B may use the same key for its own order
    other = await post_order(http, svc, "client-B", **body)
    assert other.status_code == 201 and other.json()["order"]["client_id"] == "client-B"


async def test_concurrent_duplicates_of_one_key_create_one_order(http, svc):
    body = dict(instrument="BTC-USD", side="sell", type="limit", price=5000, quantity=1, idempotency_key="idem-race")
    rs = await asyncio.gather(*[post_order(http, svc, "client-A", **body) for _ in range(10)])
    ids = {r.json()["order"]["order_id"] for r in rs}
    assert [r.status_code for r in rs] == [201] * 10 and len(ids) == 1


async def test_concurrent_requests_with_one_client_order_id_create_one_order(http, svc):
    rs = await asyncio.gather(*[post_order(http, svc, "client-B", order_id="race-id-1", side="buy", type="limit",
                                           price=3, quantity=0.01, instrument="SOL-USD") for _ in range(10)])
    assert sorted(r.status_code for r in rs) == [201] + [409] * 9


async def test_client_order_id_is_kept_and_duplicates_refused(http, svc):
    # the seed API's order_id on place is an alias of client_order_id; the order_id is the server's
    r = await post_order(http, svc, "client-A", order_id="my-order-1", side="buy", type="limit", price=99, quantity=1)
    assert r.status_code == 201 and r.json()["order"]["client_order_id"] == "my-order-1"
    assert r.json()["order"]["order_id"] != "my-order-1"
    before = await event_count()
    r = await post_order(http, svc, "client-A", order_id="my-order-1", side="buy", type="limit", price=98, quantity=1)
    assert r.status_code == 409 and r.json()["error"]["code"] == "duplicate_client_order_id"
    assert await event_count() == before


async def test_cancel_own_order_and_not_others(http, svc):
    r = await post_order(http, svc, "client-A", side="buy", type="limit", price=90, quantity=1)
    oid = r.json()["order"]["order_id"]
    r = await http.post(f"/orders/{oid}/cancel", headers=auth(svc, "client-B"))
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"  # exactly like an unknown id
    r = await http.post(f"/orders/{oid}/cancel", headers=auth(svc, "client-A"))
    assert r.status_code == 200 and r.json()["order"]["status"] == "cancelled"
    r = await http.post(f"/orders/{oid}/cancel", headers=auth(svc, "client-A"))
    assert r.status_code == 409 and r.json()["error"]["code"] == "order_closed"
    r = await http.post("/orders/no-such-order/cancel", headers=auth(svc, "client-A"))
    assert r.status_code == 404
    r = await http.get(f"/orders/{oid}", headers=auth(svc, "client-B"))
    assert r.status_code == 404
    r = await http.get(f"/orders/{oid}", headers=auth(svc, "admin"))
    assert r.status_code == 200 and r.json()["order"]["status"] == "cancelled"


async def test_authentication_is_required(http, svc):
    body = dict(side="buy", type="limit", price=90, quantity=1)
    r = await http.post("/orders", json=body)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = await http.post("/orders", json=body, headers={"Authorization": "Bearer exk_not-a-key"})
    assert r.status_code == 401
    r = await post_order(http, svc, "client-A", client_id="client-B", **body)
    assert r.status_code == 403 and r.json()["error"]["field"] == "client_id"


async def test_rate_limit_answers_429_with_retry_after(http, svc):
    statuses = []
    for _ in range(8):
        rs = await asyncio.gather(*[http.get("/orders/x", headers=auth(svc, "load-19")) for _ in range(50)])
        statuses += [r.status_code for r in rs]
        if 429 in statuses:
            break
    limited = [r for r in rs if r.status_code == 429]
    assert limited, statuses
    assert int(limited[0].headers["retry-after"]) >= 1
    assert limited[0].json()["error"]["code"] == "rate_limited"


BAD = [
    (b'{"side":"buy","type":"limit","price":0,"quantity":1}', "must_be_positive", "price"),
    (b'{"side":"buy","type":"limit","price":-1,"quantity":1}', "must_be_positive", "price"),
    (b'{"side":"buy","type":"limit","price":"NaN","quantity":1}', "invalid_number", "price"),
    (b'{"side":"buy","type":"limit","price":"Infinity","quantity":1}', "invalid_number", "price"),
    (b'{"side":"buy","type":"limit","price":100.001,"quantity":1}', "off_tick", "price"),
    (b'{"side":"buy","type":"limit","price":100,"quantity":0.000000001}', "out_of_range", "quantity"),
    (b'{"side":"buy","type":"limit","price":100,"quantity":0.123456789}', "off_lot", "quantity"),
    (b'{"side":"buy","type":"limit","price":100,"quantity":5000}', "out_of_range", "quantity"),
    (b'{"side":"buy","type":"limit","price":1e999,"quantity":1}', "out_of_range", "price"),
    (b'{"side":"buy","type":"limit","price":100,"quantity":1,"instrument":"XYZ"}', "unknown_instrument", "instrument"),
    (b'{"side":"buy","type":"limit","quantity":1}', "missing_field", "price"),
    (b'{"type":"limit","price":1,"quantity":1}', "missing_field", "side"),
    (b'{"side":"buy","type":"limit","price":"abc","quantity":1}', "invalid_number", "price"),
    (b'{"side":"buy","type":"limit","price":1,"quantity":[]}', "invalid_type", "quantity"),
    (b'{"side":7,"type":"limit","price":1,"quantity":1}', "invalid_field", "side"),
    (b'{"side":"buy","type":"limit","price":1,"quantity":1', "invalid_json", None),
    (b'nonsense', "invalid_json", None),
    # more digits than a float holds: must not be rounded into a valid quantity
    (b'{"side":"buy","type":"limit","price":1,"quantity":1.000000000000000001}', "off_lot", "quantity"),
]


@pytest.mark.parametrize("body, code, field", BAD)
async def test_bad_input_is_refused_and_changes_nothing(http, svc, body, code, field):
    before = await event_count()
    r = await http.post("/orders", content=body, headers={**auth(svc, "client-B"), "Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == code and err.get("field") == field, err
    assert await event_count() == before
    ok = await post_order(http, svc, "client-B", side="buy", type="limit", price=1, quantity=0.01, instrument="SOL-USD")
    assert ok.status_code == 201


async def test_body_over_the_limit_is_413(http, svc):
    r = await http.post("/orders", content=b'{"pad":"' + b"x" * 10_000 + b'"}', headers=auth(svc, "client-A"))
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


@pytest.mark.ws_invalid_frames
async def test_websocket_orders_cancels_and_errors(svc):
    url = svc.url.replace("http", "ws") + "/ws"
    async with websockets.connect(url, additional_headers=auth(svc, "client-A")) as ws:
        await ws.send("not json")
        assert json.loads(await ws.recv())["error"]["code"] == "invalid_json"
        await ws.send(json.dumps({"type": "order", "order_type": "limit", "side": "buy", "price": 10,
                                  "quantity": 1, "instrument": "SOL-USD", "request_id": "r1"}))
        ack = json.loads(await ws.recv())
        assert ack["type"] == "order_accepted" and ack["request_id"] == "r1" and ack["order"]["status"] == "open"
        await ws.send(json.dumps({"type": "order", "order_type": "limit", "side": "buy", "price": 0,
                                  "quantity": 1, "request_id": "r2"}))
        err = json.loads(await ws.recv())
        assert (err["type"], err["request_id"], err["error"]["field"]) == ("error", "r2", "price")
        await ws.send(json.dumps({"type": "cancel", "order_id": ack["order"]["order_id"], "request_id": "r3"}))
        c = json.loads(await ws.recv())
        assert c["type"] == "cancel_accepted" and c["order"]["status"] == "cancelled"
        # many in flight on one connection, each answered once after commit
        for i in range(50):
            await ws.send(json.dumps({"type": "order", "order_type": "limit", "side": "sell", "price": 1000 + i,
                                      "quantity": 0.01, "instrument": "SOL-USD", "request_id": i}))
        got = [json.loads(await ws.recv()) for _ in range(50)]
        assert sorted(m["request_id"] for m in got) == list(range(50))
        assert {m["type"] for m in got} == {"order_accepted"}
    async with websockets.connect(url) as ws:  # no key: refused with a reason
        msg = json.loads(await ws.recv())
        assert msg["error"]["code"] == "unauthorized"


async def test_snapshot_needs_admin(http, svc):
    r = await http.post("/admin/snapshot", headers=auth(svc, "client-A"))
    assert r.status_code == 403
    r = await http.post("/admin/snapshot", headers=auth(svc, "admin"))
    assert r.status_code == 201
    snaps = {s["instrument"]: s["seq"] for s in r.json()["snapshots"]}
    conn = await asyncpg.connect(DSN)
    try:
        for sym, seq in snaps.items():
            assert await conn.fetchval("SELECT count(*) FROM snapshots WHERE instrument=$1 AND seq=$2", sym, seq) == 1
    finally:
        await conn.close()


async def test_health_and_metrics(http, svc):
    r = await http.get("/healthz")
    assert r.status_code == 200 and r.json()["checks"]["postgres"] == "healthy"
    text = (await http.get("/metrics")).text
    for name in ("orders_received_total", "orders_matched_total", "orders_rejected_total", "order_latency_seconds",
                 "current_orderbook_depth", "trades_total", "trade_volume_total", "sequencer_batch_size",
                 "sequencer_commit_seconds", "sequencer_queue_depth"):
        assert name in text, name


async def replay_journal(instrument: str) -> OrderBook:
    conn = await asyncpg.connect(DSN)
    try:
        rows = await conn.fetch("SELECT seq, payload FROM events WHERE instrument=$1 ORDER BY seq", instrument)
    finally:
        await conn.close()
    book = OrderBook(instrument)
    for i, r in enumerate(rows, 1):
        assert r["seq"] == i, "journal has a gap"
        book.apply(decode_event(r["payload"]))
    return book


async def test_thousands_of_concurrent_orders_stay_consistent(http, svc):
    clients = [f"load-{i}" for i in range(18)]
    n = 3000

    async def one(i):
        who = clients[i % len(clients)]
        side = "buy" if (i * 7) % 2 else "sell"
        kind = "market" if i % 10 == 0 else "limit"
        body = dict(instrument="BTC-USD", side=side, type=kind, quantity=f"0.{(i % 9) + 1}")
        if kind == "limit":
            body["price"] = 30000 + (i * 13) % 40 - (10 if side == "buy" else 0)
        r = await post_order(http, svc, who, **body)
        assert r.status_code == 201, r.text
        return r.json()

    results = []
    for start in range(0, n, 500):  # 500 in flight at a time, from 18 clients
        results += await asyncio.gather(*[one(i) for i in range(start, start + 500)])

    conn = await asyncpg.connect(DSN)
    try:
        rows = await conn.fetch("SELECT payload FROM events WHERE instrument='BTC-USD' ORDER BY seq")
        orders = {r["order_id"]: r for r in await conn.fetch("SELECT * FROM orders WHERE instrument='BTC-USD'")}
    finally:
        await conn.close()
    events = [decode_event(r["payload"]) for r in rows]
    trades = [e for e in events if type(e) is TradeExecuted]
    assert len({t.trade_id for t in trades}) == len(trades)
    filled: dict[str, int] = {}
    for t in trades:
        filled[t.maker_order_id] = filled.get(t.maker_order_id, 0) + t.quantity
        filled[t.taker_order_id] = filled.get(t.taker_order_id, 0) + t.quantity
        assert t.maker_client_id != t.taker_client_id  # self-trade prevention
    for oid, row in orders.items():
        assert row["filled_quantity"] == filled.get(oid, 0), oid
        assert row["filled_quantity"] <= row["quantity"]
    for res in results:  # every acknowledged order is in the table
        assert res["order"]["order_id"] in orders
    book = await replay_journal("BTC-USD")
    book.validate()
    bid, ask = book.best_bid(), book.best_ask()
    assert bid is None or ask is None or bid < ask
    resting = {o.order_id: o.quantity - o.filled_quantity for o in book.l3()}
    open_rows = {oid: r["quantity"] - r["filled_quantity"] for oid, r in orders.items()
                 if r["status"] in ("open", "partially_filled")}
    assert resting == open_rows
