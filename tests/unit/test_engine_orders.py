"""Cancel, amend and cancel-all. One behaviour per test, exact events."""

from __future__ import annotations

from contracts.enums import CancelReason, OrderStatus, ResultCode
from contracts.messages import CancelOrder, Result
from engine import OrderBook
from tests.unit.test_engine_support import (
    BUY,
    INSTRUMENT,
    OLDEST,
    SELL,
    TS,
    amend,
    amended,
    book_with,
    cancel,
    cancel_all,
    cancelled,
    limit,
    resting,
    run,
    stop_limit,
    stop_market,
    trade,
)

# ------------------------------------------------------------------ cancel


def test_cancel_removes_a_resting_order():
    book = book_with(limit("b", "alice", BUY, 5, 100))
    result = run(book, cancel("b", "alice"))
    assert result.code == ResultCode.OK
    assert result.events == [cancelled(2, "b", "alice", CancelReason.USER, 5)]
    assert result.orders[0].status == OrderStatus.CANCELLED
    assert resting(book) == [] and book.get("b") is None and len(book) == 0


def test_cancel_of_a_partially_filled_order_reports_open_and_filled_quantity():
    book = book_with(limit("b", "alice", BUY, 5, 100), limit("s", "bob", SELL, 2, 100))
    assert run(book, cancel("b", "alice")).events == [cancelled(4, "b", "alice", CancelReason.USER, 3, 2)]


def test_cancel_of_an_unknown_order_returns_code_without_events():
    book = book_with(limit("b", "alice", BUY, 5, 100))
    assert run(book, cancel("nope", "alice")) == Result(code=ResultCode.UNKNOWN_ORDER)
    assert book.seq == 1


def test_cancel_of_a_filled_order_is_unknown():
    book = book_with(limit("b", "alice", BUY, 5, 100), limit("s", "bob", SELL, 5, 100))
    assert run(book, cancel("b", "alice")).code == ResultCode.UNKNOWN_ORDER


def test_cancel_twice_is_unknown_the_second_time():
    book = book_with(limit("b", "alice", BUY, 5, 100), cancel("b", "alice"))
    assert run(book, cancel("b", "alice")).code == ResultCode.UNKNOWN_ORDER


def test_cancel_of_another_clients_order_is_refused():
    book = book_with(limit("b", "alice", BUY, 5, 100))
    assert run(book, cancel("b", "mallory")) == Result(code=ResultCode.NOT_OWNER)
    assert resting(book) == [("b", 100, 5)]


def test_cancel_for_another_instrument_is_unknown():
    book = book_with(limit("b", "alice", BUY, 5, 100))
    cmd = CancelOrder(order_id="b", client_id="alice", instrument="ETH-USD", ts=TS)
    assert run(book, cmd).code == ResultCode.UNKNOWN_ORDER


def test_cancel_of_a_pending_stop():
    book = book_with(stop_market("st", "alice", SELL, 4, 90))
    assert run(book, cancel("st", "alice")).events == [cancelled(2, "st", "alice", CancelReason.USER, 4)]
    assert len(book) == 0


def test_cancel_in_the_middle_of_a_level_keeps_fifo_of_the_rest():
    book = book_with(*[limit(f"b{i}", "alice", BUY, 1, 100) for i in range(5)])
    run(book, cancel("b2", "alice"))
    run(book, cancel("b0", "alice"))
    assert [r[0] for r in resting(book)] == ["b1", "b3", "b4"]
    events = run(book, limit("s", "bob", SELL, 2, 100)).events
    assert [e.maker_order_id for e in events[1:]] == ["b1", "b3"]


def test_many_cancels_inside_a_level_keep_totals_and_order():
    cmds = [limit(f"b{i}", "alice", BUY, 1 + i % 3, 100) for i in range(200)]
    book = book_with(*cmds)
    for i in range(0, 200):
        if i % 5:
            run(book, cancel(f"b{i}", "alice"))
    left = [f"b{i}" for i in range(0, 200, 5)]
    assert [r[0] for r in resting(book)] == left
    assert book.l2(1) == ([(100, sum(1 + i % 3 for i in range(0, 200, 5)))], [])


# ------------------------------------------------------------------ amend


def test_amend_decrease_keeps_priority():
    book = book_with(limit("b1", "alice", BUY, 5, 100), limit("b2", "bob", BUY, 5, 100))
    result = run(book, amend("b1", "alice", quantity=3))
    assert result.events == [amended(3, "b1", "alice", 100, 3, 3, True)]
    assert resting(book) == [("b1", 100, 3), ("b2", 100, 5)]
    assert result.orders[0].quantity == 3


def test_amend_increase_loses_priority():
    book = book_with(limit("b1", "alice", BUY, 5, 100), limit("b2", "bob", BUY, 5, 100))
    assert run(book, amend("b1", "alice", quantity=8)).events == [amended(3, "b1", "alice", 100, 8, 8, False)]
    assert resting(book) == [("b2", 100, 5), ("b1", 100, 8)]


def test_amend_price_moves_the_order_to_the_back_of_the_new_level():
    book = book_with(limit("b1", "alice", BUY, 5, 100), limit("b2", "bob", BUY, 5, 99))
    assert run(book, amend("b1", "alice", price=99)).events == [amended(3, "b1", "alice", 99, 5, 5, False)]
    assert resting(book) == [("b2", 99, 5), ("b1", 99, 5)]
    assert book.depth() == (1, 0)


def test_amend_of_a_partially_filled_order_counts_the_new_total():
    book = book_with(limit("b", "alice", BUY, 5, 100), limit("s", "bob", SELL, 2, 100))
    assert run(book, amend("b", "alice", quantity=4)).events == [amended(4, "b", "alice", 100, 4, 2, True)]
    assert resting(book) == [("b", 100, 2)]


def test_amend_to_a_crossing_price_trades_as_taker_then_rests():
    book = book_with(limit("b", "alice", BUY, 5, 100), limit("s", "bob", SELL, 2, 101))
    result = run(book, amend("b", "alice", price=101))
    assert result.events == [
        amended(3, "b", "alice", 101, 5, 5, False),
        trade(4, 101, 2, BUY, "s", "bob", "b", "alice", 0, 3),
    ]
    assert resting(book) == [("b", 101, 3)]
    assert [s.order_id for s in result.orders] == ["b", "s"]


def test_amend_to_a_crossing_price_applies_the_orders_stp_mode():
    book = book_with(limit("b", "alice", BUY, 5, 100, stp=OLDEST), limit("s", "alice", SELL, 2, 101))
    assert run(book, amend("b", "alice", price=101)).events == [
        amended(3, "b", "alice", 101, 5, 5, False),
        cancelled(4, "s", "alice", CancelReason.SELF_TRADE, 2),
    ]
    assert resting(book) == [("b", 101, 5)]


def test_amend_to_filled_quantity_or_below_is_invalid():
    book = book_with(limit("b", "alice", BUY, 5, 100), limit("s", "bob", SELL, 2, 100))
    assert run(book, amend("b", "alice", quantity=2)) == Result(code=ResultCode.INVALID_AMEND)
    assert run(book, amend("b", "alice", quantity=0)).code == ResultCode.INVALID_AMEND


def test_amend_without_changes_is_invalid():
    book = book_with(limit("b", "alice", BUY, 5, 100))
    assert run(book, amend("b", "alice")).code == ResultCode.INVALID_AMEND
    assert run(book, amend("b", "alice", quantity=5, price=100)).code == ResultCode.INVALID_AMEND
    assert book.seq == 1


def test_amend_to_a_non_positive_price_is_invalid():
    book = book_with(limit("b", "alice", BUY, 5, 100))
    assert run(book, amend("b", "alice", price=0)).code == ResultCode.INVALID_AMEND


def test_amend_of_an_unknown_order():
    assert run(OrderBook(INSTRUMENT), amend("x", "alice", quantity=1)).code == ResultCode.UNKNOWN_ORDER


def test_amend_of_another_clients_order_is_refused():
    book = book_with(limit("b", "alice", BUY, 5, 100))
    assert run(book, amend("b", "mallory", quantity=1)).code == ResultCode.NOT_OWNER


def test_amend_of_a_pending_stop_is_invalid():
    book = book_with(stop_limit("st", "alice", BUY, 5, 100, 105))
    assert run(book, amend("st", "alice", quantity=1)).code == ResultCode.INVALID_AMEND


def test_post_only_amend_that_would_cross_is_refused_without_change():
    book = book_with(limit("b", "alice", BUY, 5, 100, post_only=True), limit("s", "bob", SELL, 1, 102))
    assert run(book, amend("b", "alice", price=102)) == Result(code=ResultCode.AMEND_WOULD_CROSS)
    assert resting(book) == [("b", 100, 5), ("s", 102, 1)]
    assert book.seq == 2


def test_post_only_amend_decrease_needs_no_cross_check():
    book = book_with(limit("b", "alice", BUY, 5, 100, post_only=True), limit("s", "bob", SELL, 1, 101))
    assert run(book, amend("b", "alice", quantity=1)).code == ResultCode.OK


# ------------------------------------------------------------------ cancel-all


def test_cancel_all_cancels_resting_orders_and_pending_stops_in_acceptance_order():
    book = book_with(
        limit("a1", "alice", BUY, 1, 100),
        limit("x", "bob", BUY, 1, 100),
        stop_market("a2", "alice", SELL, 2, 90),
        limit("a3", "alice", SELL, 3, 110),
        limit("a0", "alice", BUY, 4, 101),
    )
    result = run(book, cancel_all("alice"))
    assert result.code == ResultCode.OK
    assert result.events == [
        cancelled(6, "a1", "alice", CancelReason.CANCEL_ALL, 1),
        cancelled(7, "a2", "alice", CancelReason.CANCEL_ALL, 2),
        cancelled(8, "a3", "alice", CancelReason.CANCEL_ALL, 3),
        cancelled(9, "a0", "alice", CancelReason.CANCEL_ALL, 4),
    ]
    assert [s.order_id for s in result.orders] == ["a1", "a2", "a3", "a0"]
    assert resting(book) == [("x", 100, 1)] and len(book) == 1


def test_cancel_all_uses_acceptance_order_even_after_priority_changes():
    book = book_with(limit("a1", "alice", BUY, 1, 100), limit("a2", "alice", BUY, 1, 100))
    run(book, amend("a1", "alice", price=99))
    assert [e.order_id for e in run(book, cancel_all("alice")).events] == ["a1", "a2"]


def test_cancel_all_filtered_by_side():
    book = book_with(limit("b", "alice", BUY, 1, 100), limit("s", "alice", SELL, 1, 110))
    assert run(book, cancel_all("alice", side=SELL)).events == [
        cancelled(3, "s", "alice", CancelReason.CANCEL_ALL, 1)
    ]
    assert resting(book) == [("b", 100, 1)]


def test_cancel_all_with_nothing_to_cancel_is_ok():
    book = book_with(limit("b", "bob", BUY, 1, 100))
    assert run(book, cancel_all("alice")) == Result(code=ResultCode.OK)
    assert book.seq == 1
