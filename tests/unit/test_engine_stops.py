"""Stop-limit and stop-market orders: pending, triggering on the last trade price,
deterministic cascades. One behaviour per test, exact events."""

from __future__ import annotations

from contracts.enums import CancelReason, OrderStatus, RejectReason, ResultCode
from tests.unit.test_engine_support import (
    BUY,
    FOK,
    IOC,
    SELL,
    accepted,
    book_with,
    cancel_all,
    cancelled,
    limit,
    market,
    rejected,
    resting,
    run,
    stop_limit,
    stop_market,
    trade,
    triggered,
)


def trade_at(price: int, qty: int = 1, maker="mk", taker="tk"):
    """A resting sell from 'mm' and a buy from 'tt' that trade qty at price."""
    return [limit(maker, "mm", SELL, qty, price), limit(taker, "tt", BUY, qty, price)]


def test_stop_is_accepted_as_pending_and_does_not_rest():
    book = book_with()
    cmd = stop_limit("st", "alice", BUY, 2, 106, 105)
    result = run(book, cmd)
    assert result.code == ResultCode.OK
    assert result.events == [accepted(1, cmd)]
    assert result.orders[0].status == OrderStatus.PENDING
    assert book.get("st").status == OrderStatus.PENDING
    assert resting(book) == [] and len(book) == 1
    assert [s.order_id for s in book.pending_stops()] == ["st"]


def test_no_trigger_without_a_last_trade_price():
    book = book_with(limit("a", "mm", SELL, 5, 100))
    cmd = stop_market("st", "alice", BUY, 2, 1)
    assert run(book, cmd).events == [accepted(2, cmd)]


def test_buy_stop_triggers_when_last_price_reaches_the_stop():
    book = book_with(stop_market("st", "alice", BUY, 2, 100), limit("a", "mm", SELL, 5, 100))
    taker = limit("t", "tt", BUY, 1, 100)
    assert run(book, taker).events == [
        accepted(3, taker),
        trade(4, 100, 1, BUY, "a", "mm", "t", "tt", 4, 0),
        triggered(5, "st", "alice", 100),
        trade(6, 100, 2, BUY, "a", "mm", "st", "alice", 2, 0),
    ]
    assert book.get("st") is None


def test_buy_stop_does_not_trigger_below_its_stop():
    book = book_with(stop_market("st", "alice", BUY, 2, 101), *trade_at(100))
    assert book.get("st").status == OrderStatus.PENDING


def test_sell_stop_triggers_when_last_price_falls_to_the_stop():
    book = book_with(stop_market("st", "alice", SELL, 2, 100), limit("b", "mm", BUY, 5, 99))
    taker = limit("t", "tt", SELL, 1, 99)
    events = run(book, taker).events
    assert events[2:] == [
        triggered(5, "st", "alice", 99),
        trade(6, 99, 2, SELL, "b", "mm", "st", "alice", 2, 0),
    ]


def test_sell_stop_does_not_trigger_above_its_stop():
    book = book_with(stop_market("st", "alice", SELL, 2, 99), *trade_at(100))
    assert book.get("st").status == OrderStatus.PENDING


def test_stop_triggers_right_after_acceptance_when_the_condition_already_holds():
    book = book_with(*trade_at(100), limit("a", "mm", SELL, 5, 101))
    cmd = stop_limit("st", "alice", BUY, 2, 101, 99)
    result = run(book, cmd)
    assert result.events == [
        accepted(5, cmd),
        triggered(6, "st", "alice", 100),
        trade(7, 101, 2, BUY, "a", "mm", "st", "alice", 3, 0),
    ]
    assert result.orders[0].status == OrderStatus.FILLED


def test_triggered_stop_limit_rests_behind_orders_already_at_its_price():
    book = book_with(*trade_at(100), limit("b_old", "carol", BUY, 1, 98))
    run(book, stop_limit("st", "alice", BUY, 2, 98, 100))
    assert resting(book) == [("b_old", 98, 1), ("st", 98, 2)]
    assert book.get("st").status == OrderStatus.OPEN


def test_triggered_stops_enter_in_acceptance_order_not_stop_price_order():
    book = book_with(
        stop_limit("late_stop_first", "alice", BUY, 1, 90, 100),
        stop_limit("low_stop_second", "bob", BUY, 1, 90, 95),
        limit("a", "mm", SELL, 1, 100),
    )
    events = run(book, limit("t", "tt", BUY, 1, 100)).events
    assert [(type(e).__name__, getattr(e, "order_id", None)) for e in events[2:]] == [
        ("OrderTriggered", "late_stop_first"),
        ("OrderTriggered", "low_stop_second"),
    ]
    assert resting(book) == [("late_stop_first", 90, 1), ("low_stop_second", 90, 1)]


def test_cascade_a_triggered_stop_trades_and_triggers_the_next():
    book = book_with(
        limit("b100", "mm", BUY, 1, 100),
        limit("b98", "mm", BUY, 1, 98),
        stop_market("s1", "alice", SELL, 1, 100),
        stop_market("s2", "bob", SELL, 1, 98),
    )
    taker = market("t", "tt", SELL, 1)
    assert run(book, taker).events == [
        accepted(5, taker),
        trade(6, 100, 1, SELL, "b100", "mm", "t", "tt", 0, 0),
        triggered(7, "s1", "alice", 100),
        trade(8, 98, 1, SELL, "b98", "mm", "s1", "alice", 0, 0),
        triggered(9, "s2", "bob", 98),
        cancelled(10, "s2", "bob", CancelReason.MARKET_REMAINDER, 1),
    ]
    assert book.last_price == 98 and len(book) == 0


def test_cascade_re_evaluates_after_each_trigger():
    # Both stops hold at 100. s_up (buy, accepted first) triggers, trades at 103 and moves
    # the last price to 103, where the sell stop at 100 no longer holds.
    book = book_with(
        limit("b100", "mm", BUY, 1, 100),
        limit("a103", "mm", SELL, 1, 103),
        stop_market("s_up", "alice", BUY, 1, 100),
        stop_market("s_down", "bob", SELL, 1, 100),
    )
    events = run(book, market("t", "tt", SELL, 1)).events
    assert events[2:] == [
        triggered(7, "s_up", "alice", 100),
        trade(8, 103, 1, BUY, "a103", "mm", "s_up", "alice", 0, 0),
    ]
    assert book.get("s_down").status == OrderStatus.PENDING


def test_stop_market_with_no_liquidity_is_cancelled_as_market_remainder():
    book = book_with(*trade_at(100), stop_market("st", "alice", SELL, 3, 100))
    assert book.get("st") is None
    assert book.seq == 6  # accepted, triggered, cancelled


def test_triggered_ioc_stop_limit_cancels_its_remainder():
    book = book_with(*trade_at(100), limit("a", "mm", SELL, 1, 101))
    cmd = stop_limit("st", "alice", BUY, 3, 101, 100, tif=IOC)
    assert run(book, cmd).events[1:] == [
        triggered(6, "st", "alice", 100),
        trade(7, 101, 1, BUY, "a", "mm", "st", "alice", 0, 2),
        cancelled(8, "st", "alice", CancelReason.IOC_REMAINDER, 2, 1),
    ]


def test_triggered_fok_stop_that_cannot_fill_is_rejected_after_triggering():
    book = book_with(*trade_at(100), limit("a", "mm", SELL, 1, 101))
    cmd = stop_limit("st", "alice", BUY, 3, 101, 100, tif=FOK)
    result = run(book, cmd)
    assert result.code == ResultCode.OK
    assert result.events[1:] == [
        triggered(6, "st", "alice", 100),
        rejected(7, cmd, RejectReason.FOK_UNFILLABLE),
    ]
    assert result.orders[0].status == OrderStatus.REJECTED
    assert result.orders[0].reject_reason == "fok_unfillable"
    assert resting(book) == [("a", 101, 1)] and len(book) == 1


def test_cancel_all_includes_pending_stops():
    book = book_with(stop_market("st", "alice", BUY, 1, 200))
    events = run(book, cancel_all("alice")).events
    assert events == [cancelled(2, "st", "alice", CancelReason.CANCEL_ALL, 1)]


def test_maker_touched_by_taker_and_triggered_stop_is_listed_once_with_its_final_state():
    book = book_with(limit("a", "mm", SELL, 3, 100), stop_market("st", "alice", BUY, 1, 100))
    result = run(book, limit("t", "tt", BUY, 1, 100))
    assert [(s.order_id, s.status, s.filled_quantity) for s in result.orders] == [
        ("t", OrderStatus.FILLED, 1),
        ("a", OrderStatus.PARTIALLY_FILLED, 2),
        ("st", OrderStatus.FILLED, 1),
    ]
