"""Client order ids (issue 20) in the journal and the engine: the engine only carries the id
(PlaceOrder -> OrderAccepted/OrderRejected -> every OrderState of the order), journals and
snapshots written before the field existed still decode and recover, and trades (public) never
carry it."""

from __future__ import annotations

import msgspec

from contracts.enums import OrderType, Side, TimeInForce
from contracts.messages import (
    CancelOrder,
    OrderAccepted,
    OrderRejected,
    PlaceOrder,
    TradeExecuted,
    decode_event,
    encode_event,
)
from engine import OrderBook

SYM = "BTC-USD"


def place(oid, cid, side, price, qty=10, coid=None, tif=TimeInForce.GTC, ts=1):
    return PlaceOrder(oid, cid, SYM, side, OrderType.LIMIT, qty, ts, price, tif, client_order_id=coid)


def test_an_old_journal_event_without_the_field_decodes_and_recovers():
    # exactly what the journal held before client order ids existed
    old = (b'{"type":"order_accepted","instrument":"BTC-USD","seq":1,"ts":5,"order_id":"o-1","client_id":"A",'
           b'"side":"buy","order_type":"limit","price":100,"quantity":3,"tif":"GTC","post_only":false,'
           b'"stp":"cancel_newest","stop_price":null,"display_quantity":null,"expire_ts":null}')
    ev = decode_event(old)
    assert isinstance(ev, OrderAccepted) and ev.client_order_id is None
    rej = decode_event(b'{"type":"order_rejected","instrument":"BTC-USD","seq":2,"ts":6,"order_id":"o-2",'
                       b'"client_id":"A","side":"buy","order_type":"limit","price":100,"quantity":3,"tif":"FOK",'
                       b'"reason":"fok_unfillable"}')
    assert isinstance(rej, OrderRejected) and rej.client_order_id is None
    book = OrderBook(SYM)
    book.apply(ev)
    book.apply(rej)
    state = book.get("o-1")
    assert state is not None and state.client_order_id is None and state.quantity == 3


def test_the_engine_carries_the_client_order_id_through_every_state_and_replay():
    book = OrderBook(SYM)
    events: list = []

    def execute(cmd):
        result = book.execute(cmd)
        events.extend(result.events)
        return result

    r = execute(place("o-1", "A", Side.SELL, 100, coid="a-1"))
    assert r.events[0].client_order_id == "a-1" and r.orders[0].client_order_id == "a-1"
    r = execute(place("o-2", "B", Side.BUY, 100, qty=4, coid="a-1", ts=2))  # same id, another client
    trade = next(e for e in r.events if isinstance(e, TradeExecuted))
    assert b"client_order_id" not in encode_event(trade)  # trades are public: server ids only
    assert {s.order_id: s.client_order_id for s in r.orders} == {"o-2": "a-1", "o-1": "a-1"}
    r = execute(CancelOrder("o-1", "A", SYM, 3))
    assert r.orders[0].client_order_id == "a-1"
    r = execute(place("o-3", "A", Side.BUY, 90, tif=TimeInForce.FOK, coid="a-fok", ts=4))
    assert isinstance(r.events[0], OrderRejected) and r.events[0].client_order_id == "a-fok"
    assert r.orders[0].client_order_id == "a-fok"
    execute(place("o-4", "A", Side.BUY, 80, coid="a-4", ts=5))
    execute(place("o-5", "A", Side.BUY, 80, ts=6))  # the fast path: no client order id

    # replay from the encoded journal and restore from a snapshot give the same states
    journal = [encode_event(e) for e in events]
    replayed = OrderBook(SYM)
    for raw in journal:
        replayed.apply(decode_event(raw))
    restored = OrderBook.restore(book.snapshot(), validate=True)
    for b in (replayed, restored):
        assert b.get("o-4").client_order_id == "a-4" and b.get("o-5").client_order_id is None


def test_a_snapshot_written_before_the_field_restores():
    book = OrderBook(SYM)
    book.execute(place("o-1", "A", Side.BUY, 100))
    snap = msgspec.json.decode(book.snapshot())
    order = snap[4][0]
    assert order[-1] is None  # the new last field
    snap[4][0] = order[:-1]  # as an older version wrote it
    restored = OrderBook.restore(msgspec.json.encode(snap), validate=True)
    assert restored.get("o-1").client_order_id is None

