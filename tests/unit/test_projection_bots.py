"""The projection against the real engine with icebergs, amends, GTD expiry and the dead
man's switch's cancel reasons: after every command the public levels equal the engine's l2
(icebergs count with their shown part only) and each resting record shows what the engine
shows."""

from __future__ import annotations

import random

import pytest

from contracts.enums import CancelReason, OrderType, Side, TimeInForce
from contracts.messages import AmendOrder, CancelAll, CancelOrder, ExpireOrders, PlaceOrder
from contracts.views import order_view
from engine import OrderBook
from query_service.records import BOOK_RESTING
from tests.unit.test_projection import SPEC, DictStore, J, assert_uncrossed

INSTRUMENT = "BTC-USD"
CLIENTS = ["a", "b", "c"]


def random_commands(rng: random.Random, book: OrderBook, n: int):
    ts = 1_700_000_000_000_000_000
    for i in range(n):
        ts += rng.randint(1, 5)
        live = book.open_orders()
        k = rng.random()
        if k < 0.6 or not live:
            qty = rng.randint(1, 12)
            otype = OrderType.LIMIT if rng.random() < 0.85 else OrderType.MARKET
            tif = rng.choice([TimeInForce.GTC, TimeInForce.GTC, TimeInForce.GTD, TimeInForce.IOC])
            if otype is OrderType.MARKET and tif is TimeInForce.GTD:
                tif = TimeInForce.GTC
            resting = otype is OrderType.LIMIT and tif in (TimeInForce.GTC, TimeInForce.GTD)
            display = rng.randint(1, qty - 1) if resting and qty > 1 and rng.random() < 0.4 else None
            yield PlaceOrder(
                order_id=f"o{i}", client_id=rng.choice(CLIENTS), instrument=INSTRUMENT,
                side=rng.choice([Side.BUY, Side.SELL]), order_type=otype, quantity=qty, ts=ts,
                price=rng.randint(95, 105) if otype is OrderType.LIMIT else None, tif=tif,
                display_quantity=display,
                expire_ts=ts + rng.randint(1, 40) if tif is TimeInForce.GTD else None,
            )
        elif k < 0.75:
            o = rng.choice(live)
            yield AmendOrder(order_id=o.order_id, client_id=o.client_id, instrument=INSTRUMENT, ts=ts,
                             quantity=rng.choice([None, o.filled_quantity + rng.randint(1, 10)]),
                             price=rng.choice([None, None, rng.randint(95, 105)]))
        elif k < 0.85:
            o = rng.choice(live)
            yield CancelOrder(order_id=o.order_id, client_id=o.client_id, instrument=INSTRUMENT, ts=ts,
                              reason=rng.choice([CancelReason.USER, CancelReason.DISCONNECT]))
        elif k < 0.9:
            yield CancelAll(client_id=rng.choice(CLIENTS), instrument=INSTRUMENT, ts=ts,
                            reason=CancelReason.CANCEL_AFTER)
        else:
            ts += rng.randint(0, 30)
            yield ExpireOrders(instrument=INSTRUMENT, ts=ts)


@pytest.mark.parametrize("seed", range(10))
def test_projection_shows_what_the_engine_shows(seed):
    rng = random.Random(seed)
    book = OrderBook(INSTRUMENT)
    store = DictStore()
    reasons = set()
    for cmd in random_commands(rng, book, 500):
        result = book.execute(cmd)
        for e in result.events:
            store.apply([e])
            assert_uncrossed(store)
            if hasattr(e, "reason") and e.reason in (CancelReason.EXPIRED, CancelReason.CANCEL_AFTER):
                reasons.add(e.reason.value)
        book.validate()
        bids, asks = book.l2(10**9)
        assert sorted(store.bids.items(), reverse=True) == bids
        assert sorted(store.asks.items()) == asks
        for s in book.l3():
            rec = store.orders[s.order_id]
            assert rec.book == BOOK_RESTING
            assert (rec.remaining, rec.price, rec.quantity) == (s.quantity - s.filled_quantity, s.price, s.quantity)
            if s.display_quantity:
                assert rec.shown == s.shown
    assert reasons == {"expired", "cancel_after"}


def test_owner_view_of_an_iceberg_and_a_gtd_order():
    book = OrderBook(INSTRUMENT)
    store = DictStore()
    ts = 1_700_000_000_000_000_000
    cmd = PlaceOrder(order_id="ice", client_id="a", instrument=INSTRUMENT, side=Side.SELL,
                     order_type=OrderType.LIMIT, quantity=10, ts=ts, price=100, tif=TimeInForce.GTD,
                     display_quantity=3, expire_ts=ts + 1_000_000_000)
    for e in book.execute(cmd).events:
        store.apply([e])
    assert dict(store.asks) == {100: 3}
    view = J(order_view(SPEC, store.orders["ice"]))
    assert view["display_quantity"] == view["shown_quantity"] == SPEC.lots_to_quantity(3)
    assert view["quantity"] == SPEC.lots_to_quantity(10)
    assert view["expire_time"] == "2023-11-14T22:13:21.000Z"
    for e in book.execute(ExpireOrders(instrument=INSTRUMENT, ts=ts + 1_000_000_000)).events:
        store.apply([e])
    assert J(order_view(SPEC, store.orders["ice"]))["cancel_reason"] == "expired"
    assert dict(store.asks) == {}
