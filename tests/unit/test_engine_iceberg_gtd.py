"""Icebergs (rules 1-5 of issue 15), good-till-date expiry and the cancel reasons of the
dead man's switch, each spelled out with exact events."""

from __future__ import annotations

from contracts.enums import CancelReason, RejectReason, TimeInForce
from contracts.messages import CancelAll, CancelOrder, ExpireOrders
from engine import OrderBook
from tests.unit.test_engine_support import (
    BUY,
    FOK,
    GTC,
    INSTRUMENT,
    IOC,
    SELL,
    TS,
    accepted,
    amend,
    amended,
    book_with,
    cancelled,
    limit,
    rejected,
    run,
    trade,
)

GTD = TimeInForce.GTD


def shown(book: OrderBook):
    return [(s.order_id, s.shown, s.quantity - s.filled_quantity) for s in book.l3()]


def test_rule1_a_resting_iceberg_shows_only_its_display_part():
    book = book_with(limit("ice", "alice", SELL, 100, 50, display_quantity=10), limit("a", "bob", SELL, 5, 50))
    assert book.l2(5) == ([], [(50, 15)])
    state = book.get("ice")
    assert (state.quantity, state.display_quantity, state.shown) == (100, 10, 10)


def test_rule2_refreshed_part_joins_the_back_and_the_taker_keeps_matching():
    book = book_with(limit("ice", "alice", SELL, 25, 50, display_quantity=10), limit("b", "bob", SELL, 4, 50))
    r = run(book, limit("t", "carol", BUY, 20, 50))
    assert r.events[1:] == [
        trade(4, 50, 10, BUY, "ice", "alice", "t", "carol", 15, 10),
        trade(5, 50, 4, BUY, "b", "bob", "t", "carol", 0, 6),  # b was ahead of the refreshed part
        trade(6, 50, 6, BUY, "ice", "alice", "t", "carol", 9, 0),
    ]
    assert shown(book) == [("ice", 4, 9)]
    assert book.l2(5) == ([], [(50, 4)])


def test_rule2_a_lone_iceberg_refreshes_until_the_level_is_empty():
    book = book_with(limit("ice", "alice", SELL, 7, 50, display_quantity=3))
    r = run(book, limit("t", "carol", BUY, 10, 50))
    assert [(e.quantity, e.maker_remaining) for e in r.events[1:4]] == [(3, 4), (3, 1), (1, 0)]
    assert shown(book) == [("t", 0, 3)]


def test_rule3_an_iceberg_crossing_on_arrival_trades_whole_then_hides_the_rest():
    book = book_with(limit("a", "bob", SELL, 30, 50))
    r = run(book, limit("ice", "alice", BUY, 100, 50, display_quantity=10))
    assert r.events[1] == trade(3, 50, 30, BUY, "a", "bob", "ice", "alice", 0, 70)
    assert book.l2(5) == ([(50, 10)], [])
    assert shown(book) == [("ice", 10, 70)]


def test_rule4_decrease_takes_hidden_first_and_keeps_priority():
    book = book_with(limit("ice", "alice", SELL, 30, 50, display_quantity=10), limit("b", "bob", SELL, 5, 50))
    assert run(book, amend("ice", "alice", quantity=15)).events == [amended(3, "ice", "alice", 50, 15, 15, True)]
    assert shown(book) == [("ice", 10, 15), ("b", 0, 5)]
    run(book, amend("ice", "alice", quantity=4))  # nothing hidden left: the shown part shrinks
    assert shown(book) == [("ice", 4, 4), ("b", 0, 5)]
    assert book.l2(5) == ([], [(50, 9)])


def test_rule4_price_change_reenters_as_a_whole_taker_then_a_fresh_shown_part():
    book = book_with(limit("ice", "alice", BUY, 30, 49, display_quantity=10), limit("a", "bob", SELL, 12, 50))
    r = run(book, amend("ice", "alice", price=50))
    assert r.events[1] == trade(4, 50, 12, BUY, "a", "bob", "ice", "alice", 0, 18)
    assert shown(book) == [("ice", 10, 18)]


def test_rule5_fok_ioc_and_self_trade_count_the_whole_iceberg():
    book = book_with(limit("ice", "alice", SELL, 20, 50, display_quantity=2))
    r = run(book, limit("f", "bob", BUY, 20, 50, tif=FOK))
    assert [e.quantity for e in r.events[1:]] == [2] * 10
    book = book_with(limit("ice", "alice", SELL, 20, 50, display_quantity=2))
    run(book, limit("i", "bob", BUY, 5, 50, tif=IOC))
    assert shown(book) == [("ice", 1, 15)]
    # self-trade: the own iceberg is met as a whole (cancel_oldest cancels all of it)
    book = book_with(limit("ice", "alice", SELL, 20, 50, display_quantity=2))
    from contracts.enums import StpMode

    r = run(book, limit("t", "alice", BUY, 3, 50, stp=StpMode.CANCEL_OLDEST))
    assert r.events[1] == cancelled(3, "ice", "alice", CancelReason.SELF_TRADE, 20)
    assert book.l2(5) == ([(50, 3)], [])


def test_iceberg_rules_are_checked_at_entry():
    for cmd in (
        limit("x", "a", BUY, 10, 50, display_quantity=10),  # not below the quantity
        limit("x", "a", BUY, 10, 50, display_quantity=0),
        limit("x", "a", BUY, 10, 50, display_quantity=2, tif=IOC),
    ):
        r = run(OrderBook(INSTRUMENT), cmd)
        assert r.events == [rejected(1, cmd, RejectReason.INVALID_ORDER)]
    ok = limit("x", "a", BUY, 10, 50, display_quantity=2, post_only=True)
    assert run(OrderBook(INSTRUMENT), ok).events == [accepted(1, ok)]


def test_gtd_orders_expire_at_their_time_only():
    book = book_with(
        limit("g1", "alice", BUY, 5, 50, tif=GTD, expire_ts=TS + 100),
        limit("g2", "alice", BUY, 5, 49, tif=GTD, expire_ts=TS + 50),
        limit("c", "alice", BUY, 5, 48),
    )
    assert book.next_expiry() == TS + 50
    assert run(book, ExpireOrders(instrument=INSTRUMENT, ts=TS + 49)).events == []
    r = run(book, ExpireOrders(instrument=INSTRUMENT, ts=TS + 100))
    assert r.events == [
        cancelled(4, "g2", "alice", CancelReason.EXPIRED, 5, ts=TS + 100),
        cancelled(5, "g1", "alice", CancelReason.EXPIRED, 5, ts=TS + 100),
    ]
    assert [s.status.value for s in r.orders] == ["cancelled", "cancelled"]
    assert book.next_expiry() is None
    assert [s.order_id for s in book.l3()] == ["c"]


def test_gtd_needs_a_future_expire_time():
    for cmd in (
        limit("x", "a", BUY, 1, 50, tif=GTD),
        limit("x", "a", BUY, 1, 50, tif=GTD, expire_ts=TS),
        limit("x", "a", BUY, 1, 50, tif=GTC, expire_ts=TS + 5),
    ):
        assert run(OrderBook(INSTRUMENT), cmd).events == [rejected(1, cmd, RejectReason.INVALID_ORDER)]


def test_a_filled_or_cancelled_gtd_order_is_not_expired_again():
    book = book_with(limit("g", "alice", SELL, 5, 50, tif=GTD, expire_ts=TS + 10))
    run(book, limit("t", "bob", BUY, 5, 50))
    assert book.next_expiry() is None
    assert run(book, ExpireOrders(instrument=INSTRUMENT, ts=TS + 20)).events == []


def test_snapshot_and_replay_keep_icebergs_and_expiry_exactly():
    cmds = [
        limit("ice", "alice", SELL, 25, 50, display_quantity=10, tif=GTD, expire_ts=TS + 9),
        limit("b", "bob", SELL, 4, 50),
        limit("t", "carol", BUY, 13, 50),
        amend("ice", "alice", quantity=20),
    ]
    book = book_with(*cmds)
    restored = OrderBook.restore(book.snapshot(), validate=True)
    assert shown(restored) == shown(book) and restored.next_expiry() == TS + 9
    replayed = OrderBook(INSTRUMENT)
    live = OrderBook(INSTRUMENT)
    for cmd in cmds:
        for ev in live.execute(cmd).events:
            replayed.apply(ev)
    assert replayed.snapshot() == book.snapshot()
    assert run(restored, ExpireOrders(instrument=INSTRUMENT, ts=TS + 9)) == run(
        replayed, ExpireOrders(instrument=INSTRUMENT, ts=TS + 9)
    )


def test_cancel_reasons_for_the_dead_mans_switch_and_disconnect():
    book = book_with(limit("a", "alice", BUY, 1, 50), limit("b", "alice", BUY, 1, 49))
    r = run(book, CancelOrder(order_id="a", client_id="alice", instrument=INSTRUMENT, ts=TS,
                              reason=CancelReason.DISCONNECT))
    assert r.events[0].reason is CancelReason.DISCONNECT
    r = run(book, CancelAll(client_id="alice", instrument=INSTRUMENT, ts=TS, reason=CancelReason.CANCEL_AFTER))
    assert r.events == [cancelled(4, "b", "alice", CancelReason.CANCEL_AFTER, 1)]




def test_gtd_orders_cancelled_long_before_their_expiry_do_not_pile_up():
    # A long run (issue 18): GTD orders with a distant expiry, cancelled soon after. Their
    # expiry entries used to stay until that distant time; the book now drops them once they
    # are most of its expiry index, and what is live still expires exactly as before.
    book = OrderBook(INSTRUMENT)
    keep = [limit("live-early", "alice", BUY, 1, 10, tif=GTD, expire_ts=TS + 500),
            limit("live-late", "alice", BUY, 1, 11, tif=GTD, expire_ts=TS + 10**12)]
    for cmd in keep:
        book.execute(cmd)
    sizes = []
    for i in range(20_000):
        book.execute(limit(f"g{i}", "bob", BUY, 1, 20, tif=GTD, expire_ts=TS + 10**9 + i))
        book.execute(CancelOrder(order_id=f"g{i}", client_id="bob", instrument=INSTRUMENT, ts=TS))
        sizes.append(len(book._expiry))  # the index itself: memory, not visible through the API
    assert max(sizes) <= 2 * 2 + 1024 + 1
    book.validate()
    assert book.next_expiry() == TS + 500
    r = run(book, ExpireOrders(instrument=INSTRUMENT, ts=TS + 10**12))
    assert [e.order_id for e in r.events] == ["live-early", "live-late"]
    assert book.next_expiry() is None
