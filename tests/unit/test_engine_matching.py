"""Placing orders: acceptance, validation, price-time priority, order types, time in
force, post-only and self-trade prevention. One behaviour per test, exact events."""

from __future__ import annotations

import pytest

from contracts.enums import (
    CancelReason,
    OrderStatus,
    OrderType,
    RejectReason,
    ResultCode,
)
from contracts.messages import OrderState, PlaceOrder
from engine import OrderBook
from tests.unit.test_engine_support import (
    BOTH,
    BUY,
    FOK,
    GTC,
    INSTRUMENT,
    IOC,
    NEWEST,
    OLDEST,
    SELL,
    TS,
    accepted,
    book_with,
    cancelled,
    limit,
    market,
    rejected,
    resting,
    run,
    stop_limit,
    stop_market,
    trade,
)

# ------------------------------------------------------------------ acceptance


def test_limit_order_rests_with_one_accepted_event():
    book = OrderBook(INSTRUMENT)
    cmd = limit("b1", "alice", BUY, 5, 100)
    result = run(book, cmd)
    assert result.code == ResultCode.OK
    assert result.events == [accepted(1, cmd)]
    assert result.orders == [
        OrderState(
            order_id="b1", client_id="alice", instrument=INSTRUMENT, side=BUY, order_type=OrderType.LIMIT,
            price=100, quantity=5, filled_quantity=0, status=OrderStatus.OPEN, tif=GTC, post_only=False,
            created_ts=TS, updated_ts=TS, reject_reason=None, stop_price=None, cost=0,
        )
    ]
    assert resting(book) == [("b1", 100, 5)]


def test_seq_starts_at_one_and_is_gap_free_across_commands():
    book = OrderBook(INSTRUMENT)
    assert book.seq == 0
    r1 = run(book, limit("s1", "alice", SELL, 2, 100))
    r2 = run(book, limit("b1", "bob", BUY, 5, 100))
    assert [e.seq for e in r1.events + r2.events] == [1, 2, 3]
    assert book.seq == 3


def test_duplicate_id_of_a_resting_order_returns_code_without_events():
    book = book_with(limit("x", "alice", BUY, 5, 100))
    result = run(book, limit("x", "bob", SELL, 1, 200))
    assert result.code == ResultCode.DUPLICATE_ORDER_ID
    assert result.events == [] and result.orders == []
    assert book.seq == 1


def test_duplicate_id_of_a_pending_stop_returns_code_without_events():
    book = book_with(stop_market("x", "alice", BUY, 5, 110))
    assert run(book, limit("x", "alice", BUY, 1, 90)).code == ResultCode.DUPLICATE_ORDER_ID


def test_id_of_a_closed_order_can_be_used_again():
    book = book_with(limit("x", "alice", BUY, 5, 100), limit("s", "bob", SELL, 5, 100))
    cmd = limit("x", "alice", BUY, 1, 99)
    assert run(book, cmd).events == [accepted(4, cmd)]


INVALID = {
    "zero quantity": limit("o", "a", BUY, 0, 100),
    "negative quantity": limit("o", "a", BUY, -3, 100),
    "limit without price": limit("o", "a", BUY, 1, None),
    "limit with zero price": limit("o", "a", BUY, 1, 0),
    "limit with negative price": limit("o", "a", SELL, 1, -5),
    "limit with stop price": limit("o", "a", BUY, 1, 100, stop_price=90),
    "market with price": market("o", "a", BUY, 1, price=100),
    "post-only market": market("o", "a", BUY, 1, post_only=True),
    "post-only IOC": limit("o", "a", BUY, 1, 100, tif=IOC, post_only=True),
    "post-only FOK": limit("o", "a", BUY, 1, 100, tif=FOK, post_only=True),
    "post-only stop limit": stop_limit("o", "a", BUY, 1, 100, 90, post_only=True),
    "stop limit without stop price": stop_limit("o", "a", BUY, 1, 100, None),
    "stop limit without price": stop_limit("o", "a", BUY, 1, None, 90),
    "stop market without stop price": stop_market("o", "a", BUY, 1, None),
    "stop market with price": stop_market("o", "a", BUY, 1, 90, price=100),
    "zero stop price": stop_market("o", "a", SELL, 1, 0),
    "float quantity": limit("o", "a", BUY, 1.5, 100),
    "bool quantity": limit("o", "a", BUY, True, 100),
    "other instrument": PlaceOrder(
        order_id="o", client_id="a", instrument="ETH-USD", side=BUY, order_type=OrderType.LIMIT,
        quantity=1, ts=TS, price=100,
    ),
    "tif as a plain string": limit("o", "a", BUY, 1, 100, tif="GTC"),
    "side as a plain string": limit("o", "a", "buy", 1, 100),
}


@pytest.mark.parametrize("cmd", list(INVALID.values()), ids=list(INVALID))
def test_malformed_order_is_rejected_as_invalid_order(cmd):
    book = book_with(limit("resting", "z", SELL, 1, 150))
    result = run(book, cmd)
    assert result.code == ResultCode.REJECTED
    assert result.events == [rejected(2, cmd, RejectReason.INVALID_ORDER)]
    [state] = result.orders
    assert state.status == OrderStatus.REJECTED and state.reject_reason == "invalid_order"
    assert resting(book) == [("resting", 150, 1)]


# ------------------------------------------------------------------ price-time priority


def test_trade_happens_at_the_resting_orders_price():
    book = book_with(limit("s1", "alice", SELL, 5, 100))
    cmd = limit("b1", "bob", BUY, 5, 105)
    assert run(book, cmd).events == [
        accepted(2, cmd),
        trade(3, 100, 5, BUY, "s1", "alice", "b1", "bob", 0, 0),
    ]
    assert book.last_price == 100


def test_better_price_matches_first():
    book = book_with(limit("s101", "alice", SELL, 1, 101), limit("s100", "carol", SELL, 1, 100))
    events = run(book, limit("b", "bob", BUY, 1, 101)).events
    assert events[1] == trade(4, 100, 1, BUY, "s100", "carol", "b", "bob", 0, 0)
    assert resting(book) == [("s101", 101, 1)]


def test_earlier_order_at_the_same_price_matches_first():
    book = book_with(limit("first", "alice", BUY, 2, 100), limit("second", "carol", BUY, 2, 100))
    events = run(book, limit("s", "bob", SELL, 3, 100)).events
    assert events[1:] == [
        trade(4, 100, 2, SELL, "first", "alice", "s", "bob", 0, 1),
        trade(5, 100, 1, SELL, "second", "carol", "s", "bob", 1, 0),
    ]
    assert resting(book) == [("second", 100, 1)]


def test_taker_sweeps_levels_up_to_its_limit_then_rests_the_remainder():
    book = book_with(
        limit("a1", "alice", SELL, 2, 100),
        limit("a2", "alice", SELL, 2, 101),
        limit("a3", "alice", SELL, 2, 103),
    )
    cmd = limit("b", "bob", BUY, 6, 102)
    assert run(book, cmd).events == [
        accepted(4, cmd),
        trade(5, 100, 2, BUY, "a1", "alice", "b", "bob", 0, 4),
        trade(6, 101, 2, BUY, "a2", "alice", "b", "bob", 0, 2),
    ]
    assert resting(book) == [("b", 102, 2), ("a3", 103, 2)]


def test_partially_filled_maker_keeps_its_place_at_the_head():
    book = book_with(limit("m1", "alice", SELL, 5, 100), limit("m2", "carol", SELL, 5, 100))
    run(book, limit("t", "bob", BUY, 2, 100))
    assert resting(book) == [("m1", 100, 3), ("m2", 100, 5)]
    assert book.get("m1").status == OrderStatus.PARTIALLY_FILLED


def test_resting_remainder_joins_the_back_of_its_level():
    book = book_with(limit("s", "alice", SELL, 1, 100), limit("b_old", "carol", BUY, 1, 99))
    run(book, limit("b_new", "bob", BUY, 3, 99))
    assert resting(book)[:2] == [("b_old", 99, 1), ("b_new", 99, 3)]


# ------------------------------------------------------------------ market orders


def test_market_order_walks_the_book_without_price_limit():
    book = book_with(limit("a1", "alice", SELL, 1, 100), limit("a2", "alice", SELL, 1, 5000))
    cmd = market("m", "bob", BUY, 2)
    assert run(book, cmd).events == [
        accepted(3, cmd),
        trade(4, 100, 1, BUY, "a1", "alice", "m", "bob", 0, 1),
        trade(5, 5000, 1, BUY, "a2", "alice", "m", "bob", 0, 0),
    ]


def test_market_order_remainder_is_cancelled():
    book = book_with(limit("a1", "alice", SELL, 1, 100))
    cmd = market("m", "bob", BUY, 3)
    result = run(book, cmd)
    assert result.events == [
        accepted(2, cmd),
        trade(3, 100, 1, BUY, "a1", "alice", "m", "bob", 0, 2),
        cancelled(4, "m", "bob", CancelReason.MARKET_REMAINDER, 2, 1),
    ]
    assert result.orders[0].status == OrderStatus.CANCELLED
    assert resting(book) == []


def test_market_order_on_an_empty_side_is_cancelled_whole():
    book = book_with(limit("b", "alice", BUY, 1, 100))
    cmd = market("m", "bob", BUY, 3, tif=GTC)
    assert run(book, cmd).events == [accepted(2, cmd), cancelled(3, "m", "bob", CancelReason.MARKET_REMAINDER, 3)]


def test_market_ioc_remainder_is_a_market_remainder():
    book = OrderBook(INSTRUMENT)
    cmd = market("m", "bob", SELL, 3, tif=IOC)
    assert run(book, cmd).events[-1] == cancelled(2, "m", "bob", CancelReason.MARKET_REMAINDER, 3)


# ------------------------------------------------------------------ IOC / FOK


def test_ioc_remainder_is_cancelled():
    book = book_with(limit("a", "alice", SELL, 1, 100))
    cmd = limit("i", "bob", BUY, 3, 100, tif=IOC)
    assert run(book, cmd).events == [
        accepted(2, cmd),
        trade(3, 100, 1, BUY, "a", "alice", "i", "bob", 0, 2),
        cancelled(4, "i", "bob", CancelReason.IOC_REMAINDER, 2, 1),
    ]
    assert resting(book) == []


def test_ioc_filled_completely_has_no_cancel():
    book = book_with(limit("a", "alice", SELL, 5, 100))
    cmd = limit("i", "bob", BUY, 3, 100, tif=IOC)
    result = run(book, cmd)
    assert result.events == [accepted(2, cmd), trade(3, 100, 3, BUY, "a", "alice", "i", "bob", 2, 0)]
    assert result.orders[0].status == OrderStatus.FILLED


def test_fok_that_can_fill_fills_completely():
    book = book_with(limit("a1", "alice", SELL, 2, 100), limit("a2", "carol", SELL, 2, 101))
    cmd = limit("f", "bob", BUY, 3, 101, tif=FOK)
    assert run(book, cmd).events == [
        accepted(3, cmd),
        trade(4, 100, 2, BUY, "a1", "alice", "f", "bob", 0, 1),
        trade(5, 101, 1, BUY, "a2", "carol", "f", "bob", 1, 0),
    ]


def test_fok_that_cannot_fill_is_rejected_and_nothing_changes():
    book = book_with(limit("a1", "alice", SELL, 2, 100))
    before = book.snapshot()
    cmd = limit("f", "bob", BUY, 3, 100, tif=FOK)
    result = run(book, cmd)
    assert result.code == ResultCode.REJECTED
    assert result.events == [rejected(2, cmd, RejectReason.FOK_UNFILLABLE)]
    assert resting(book) == [("a1", 100, 2)]
    assert book.snapshot() != before and book.seq == 2  # only the seq moved
    assert book.last_price is None


def test_fok_counts_only_quantity_at_acceptable_prices():
    book = book_with(limit("a1", "alice", SELL, 2, 100), limit("a2", "alice", SELL, 5, 102))
    cmd = limit("f", "bob", BUY, 3, 101, tif=FOK)
    assert run(book, cmd).events == [rejected(3, cmd, RejectReason.FOK_UNFILLABLE)]


def test_market_fok_is_rejected_when_the_side_is_too_thin():
    book = book_with(limit("a1", "alice", SELL, 2, 100))
    cmd = market("f", "bob", BUY, 3, tif=FOK)
    assert run(book, cmd).events == [rejected(2, cmd, RejectReason.FOK_UNFILLABLE)]


def test_fok_walk_ends_at_an_own_order_with_cancel_newest():
    book = book_with(limit("mine", "bob", SELL, 5, 100), limit("other", "alice", SELL, 5, 100))
    cmd = limit("f", "bob", BUY, 3, 100, tif=FOK, stp=NEWEST)
    assert run(book, cmd).events == [rejected(3, cmd, RejectReason.FOK_UNFILLABLE)]


def test_fok_walk_skips_own_orders_with_cancel_oldest_and_they_are_cancelled():
    book = book_with(limit("mine", "bob", SELL, 5, 100), limit("other", "alice", SELL, 5, 100))
    cmd = limit("f", "bob", BUY, 3, 100, tif=FOK, stp=OLDEST)
    assert run(book, cmd).events == [
        accepted(3, cmd),
        cancelled(4, "mine", "bob", CancelReason.SELF_TRADE, 5),
        trade(5, 100, 3, BUY, "other", "alice", "f", "bob", 2, 0),
    ]


def test_fok_own_order_after_enough_quantity_does_not_matter():
    book = book_with(limit("other", "alice", SELL, 5, 100), limit("mine", "bob", SELL, 5, 100))
    cmd = limit("f", "bob", BUY, 3, 100, tif=FOK, stp=BOTH)
    assert run(book, cmd).events == [accepted(3, cmd), trade(4, 100, 3, BUY, "other", "alice", "f", "bob", 2, 0)]


# ------------------------------------------------------------------ post-only


def test_post_only_that_does_not_cross_rests():
    book = book_with(limit("a", "alice", SELL, 1, 101))
    cmd = limit("p", "bob", BUY, 1, 100, post_only=True)
    assert run(book, cmd).events == [accepted(2, cmd)]
    assert book.best_bid() == 100


def test_post_only_that_would_cross_is_rejected():
    book = book_with(limit("a", "alice", SELL, 1, 101))
    cmd = limit("p", "bob", BUY, 1, 102, post_only=True)
    result = run(book, cmd)
    assert result.code == ResultCode.REJECTED
    assert result.events == [rejected(2, cmd, RejectReason.POST_ONLY_WOULD_CROSS)]
    assert result.orders[0].reject_reason == "post_only_would_cross"


def test_post_only_at_the_opposite_best_price_counts_as_crossing():
    book = book_with(limit("b", "alice", BUY, 1, 100))
    cmd = limit("p", "bob", SELL, 1, 100, post_only=True)
    assert run(book, cmd).events == [rejected(2, cmd, RejectReason.POST_ONLY_WOULD_CROSS)]


def test_post_only_crossing_an_own_order_is_still_rejected():
    book = book_with(limit("b", "bob", BUY, 1, 100))
    cmd = limit("p", "bob", SELL, 1, 99, post_only=True)
    assert run(book, cmd).events == [rejected(2, cmd, RejectReason.POST_ONLY_WOULD_CROSS)]


# ------------------------------------------------------------------ self-trade prevention


def test_stp_default_cancel_newest_cancels_the_incoming_remainder():
    book = book_with(limit("other", "alice", SELL, 1, 100), limit("mine", "bob", SELL, 5, 100))
    cmd = limit("t", "bob", BUY, 4, 100)
    assert cmd.stp == NEWEST
    assert run(book, cmd).events == [
        accepted(3, cmd),
        trade(4, 100, 1, BUY, "other", "alice", "t", "bob", 0, 3),
        cancelled(5, "t", "bob", CancelReason.SELF_TRADE, 3, 1),
    ]
    assert resting(book) == [("mine", 100, 5)]


def test_stp_cancel_oldest_cancels_the_resting_order_and_keeps_matching():
    book = book_with(limit("mine", "bob", SELL, 5, 100), limit("other", "alice", SELL, 2, 101))
    cmd = limit("t", "bob", BUY, 4, 101, stp=OLDEST)
    result = run(book, cmd)
    assert result.events == [
        accepted(3, cmd),
        cancelled(4, "mine", "bob", CancelReason.SELF_TRADE, 5),
        trade(5, 101, 2, BUY, "other", "alice", "t", "bob", 0, 2),
    ]
    assert resting(book) == [("t", 101, 2)]
    assert [s.order_id for s in result.orders] == ["t", "mine", "other"]


def test_stp_cancel_both_cancels_resting_then_incoming():
    book = book_with(limit("mine", "bob", SELL, 5, 100), limit("other", "alice", SELL, 2, 100))
    cmd = limit("t", "bob", BUY, 4, 100, stp=BOTH)
    assert run(book, cmd).events == [
        accepted(3, cmd),
        cancelled(4, "mine", "bob", CancelReason.SELF_TRADE, 5),
        cancelled(5, "t", "bob", CancelReason.SELF_TRADE, 4),
    ]
    assert resting(book) == [("other", 100, 2)]


def test_stp_applies_to_market_orders():
    book = book_with(limit("mine", "bob", BUY, 5, 100))
    cmd = market("m", "bob", SELL, 2)
    assert run(book, cmd).events == [accepted(2, cmd), cancelled(3, "m", "bob", CancelReason.SELF_TRADE, 2)]


def test_own_orders_on_the_same_side_do_not_interfere():
    book = book_with(limit("b1", "bob", BUY, 1, 100), limit("a", "alice", SELL, 1, 100))
    assert book.best_bid() is None and book.best_ask() is None


# ------------------------------------------------------------------ result orders


def test_result_lists_own_order_first_then_makers_in_touch_order_with_cost():
    book = book_with(limit("a1", "alice", SELL, 1, 100), limit("a2", "carol", SELL, 4, 101))
    result = run(book, limit("b", "bob", BUY, 3, 101))
    assert [(s.order_id, s.status, s.filled_quantity, s.cost) for s in result.orders] == [
        ("b", OrderStatus.FILLED, 3, 100 + 2 * 101),
        ("a1", OrderStatus.FILLED, 1, 100),
        ("a2", OrderStatus.PARTIALLY_FILLED, 2, 202),
    ]
    assert all(s.updated_ts == TS for s in result.orders)


def test_updated_ts_is_the_commands_ts_and_created_ts_is_kept():
    book = book_with(limit("a", "alice", SELL, 5, 100, ts=10))
    result = run(book, limit("b", "bob", BUY, 1, 100, ts=20))
    maker = result.orders[1]
    assert (maker.created_ts, maker.updated_ts) == (10, 20)
    assert book.get("a").updated_ts == 20
