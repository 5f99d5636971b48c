"""Views (L2, L3, best prices, depth, open orders), snapshot/restore, replay from events,
command dispatch and validate()'s detection of every broken invariant."""

from __future__ import annotations

import pytest

from contracts.enums import OrderStatus, OrderType, Side
from contracts.messages import OrderAccepted, PlaceOrder, decode_event, encode_event
from engine import OrderBook
from tests.unit.test_engine_support import (
    BUY,
    INSTRUMENT,
    SELL,
    TS,
    amend,
    book_with,
    cancel,
    cancel_all,
    limit,
    market,
    run,
    stop_limit,
    stop_market,
)


def sample_book() -> OrderBook:
    return book_with(
        limit("b1", "alice", BUY, 2, 99),
        limit("b2", "bob", BUY, 3, 99),
        limit("b3", "carol", BUY, 1, 97),
        limit("a1", "alice", SELL, 4, 101),
        limit("a2", "bob", SELL, 1, 102),
        limit("a3", "carol", SELL, 6, 105),
        stop_market("st", "alice", SELL, 1, 90),
    )


# ------------------------------------------------------------------ views


def test_best_prices_depth_and_length():
    book = sample_book()
    assert (book.best_bid(), book.best_ask()) == (99, 101)
    assert book.depth() == (2, 3)
    assert len(book) == 7  # six resting + one pending stop


def test_empty_book_views():
    book = OrderBook(INSTRUMENT)
    assert (book.best_bid(), book.best_ask(), book.depth(), len(book)) == (None, None, (0, 0), 0)
    assert book.l2(10) == ([], []) and list(book.l3()) == [] and book.last_price is None


def test_l2_aggregates_levels_best_first_and_limits_the_count():
    book = sample_book()
    assert book.l2(10) == ([(99, 5), (97, 1)], [(101, 4), (102, 1), (105, 6)])
    assert book.l2(2) == ([(99, 5), (97, 1)], [(101, 4), (102, 1)])
    assert book.l2(0) == ([], [])


def test_l2_cumulative_adds_up_from_the_best_level():
    assert sample_book().l2_cumulative(2) == ([(99, 5, 5), (97, 1, 6)], [(101, 4, 4), (102, 1, 5)])


def test_l3_lists_bids_then_asks_best_first_fifo_within_levels():
    assert [s.order_id for s in sample_book().l3()] == ["b1", "b2", "b3", "a1", "a2", "a3"]


def test_get_returns_resting_and_pending_orders_only():
    book = sample_book()
    assert book.get("b2").status == OrderStatus.OPEN
    assert book.get("st").status == OrderStatus.PENDING
    run(book, cancel("b2", "bob"))
    assert book.get("b2") is None and book.get("nope") is None


def test_open_orders_per_client_in_acceptance_order():
    book = sample_book()
    assert [s.order_id for s in book.open_orders("alice")] == ["b1", "a1", "st"]
    assert [s.order_id for s in book.open_orders()] == ["b1", "b2", "b3", "a1", "a2", "a3", "st"]
    assert book.open_orders("nobody") == []


# ------------------------------------------------------------------ snapshot / restore


def test_restore_of_a_snapshot_gives_the_same_book():
    book = sample_book()
    run(book, limit("t", "dave", BUY, 1, 101))  # a trade sets last_price
    restored = OrderBook.restore(book.snapshot(), validate=True)
    assert (restored.seq, restored.last_price) == (book.seq, book.last_price)
    assert list(restored.l3()) == list(book.l3())
    assert restored.pending_stops() == book.pending_stops()
    assert restored.snapshot() == book.snapshot()


def test_restored_book_behaves_identically():
    book = sample_book()
    restored = OrderBook.restore(book.snapshot())
    later = [market("m", "dave", SELL, 6), limit("x", "erin", BUY, 2, 104), cancel_all("carol")]
    for cmd in later:
        assert restored.execute(cmd) == book.execute(cmd)
    assert restored.snapshot() == book.snapshot()


def test_snapshot_bytes_do_not_depend_on_dead_entries_inside_levels():
    # Same orders, same priority: one book has cancelled entries inside its level.
    churned = book_with(*[limit(f"b{i}", "alice", BUY, 1, 100, ts=TS) for i in range(6)])
    for i in (1, 2, 3, 4):
        run(churned, cancel(f"b{i}", "alice"))
    rebuilt = OrderBook.restore(churned.snapshot())
    assert rebuilt.snapshot() == churned.snapshot()
    assert [s.order_id for s in rebuilt.l3()] == ["b0", "b5"]


def test_snapshot_is_deterministic_for_equal_books_built_the_same_way():
    assert sample_book().snapshot() == sample_book().snapshot()


def test_restore_refuses_an_unknown_snapshot_version():
    import msgspec

    data = msgspec.json.decode(OrderBook(INSTRUMENT).snapshot())
    data[0] = 99
    with pytest.raises(ValueError, match="version"):
        OrderBook.restore(msgspec.json.encode(data))


def test_restore_reads_a_version_1_msgpack_snapshot():
    import msgspec

    book = OrderBook(INSTRUMENT)
    book.execute(PlaceOrder(order_id="v1", client_id="c", instrument=INSTRUMENT, side=Side.BUY,
                            order_type=OrderType.LIMIT, quantity=5, ts=1, price=100))
    data = msgspec.json.decode(book.snapshot())
    data[0] = 1
    restored = OrderBook.restore(msgspec.msgpack.encode(data), validate=True)
    assert [o.order_id for o in restored.l3()] == ["v1"]


# ------------------------------------------------------------------ replay


def replay(events) -> OrderBook:
    book = OrderBook(INSTRUMENT)
    for ev in events:
        book.apply(decode_event(encode_event(ev)))
    return book


def test_replay_of_all_events_rebuilds_the_same_book():
    book = OrderBook(INSTRUMENT)
    cmds = [
        limit("b1", "alice", BUY, 5, 100),
        limit("b2", "bob", BUY, 5, 100),
        stop_limit("st", "carol", SELL, 2, 95, 100),
        limit("s1", "dave", SELL, 3, 100),  # trades with b1, triggers st which trades with b1/b2
        amend("b2", "bob", quantity=2),
        amend("b1", "alice", price=101),
        market("m", "erin", SELL, 1),
        cancel("b2", "bob"),
    ]
    events = []
    for cmd in cmds:
        events += run(book, cmd).events
    replayed = replay(events)
    replayed.validate()
    assert replayed.snapshot() == book.snapshot()
    assert replayed.seq == book.seq == len(events)


def test_apply_refuses_a_gap_in_seq():
    book = OrderBook(INSTRUMENT)
    ev = run(OrderBook(INSTRUMENT), limit("b", "a", BUY, 1, 100)).events[0]
    with pytest.raises(ValueError, match="seq"):
        book.apply(OrderAccepted(**{**{f: getattr(ev, f) for f in ev.__struct_fields__}, "seq": 2}))


def test_apply_refuses_another_instrument():
    ev = run(OrderBook(INSTRUMENT), limit("b", "a", BUY, 1, 100)).events[0]
    with pytest.raises(ValueError, match="instrument|applied"):
        OrderBook("ETH-USD").apply(ev)


def test_apply_refuses_an_already_applied_event():
    events = run(OrderBook(INSTRUMENT), limit("b", "a", BUY, 1, 100)).events
    book = replay(events)
    with pytest.raises(ValueError):
        book.apply(events[0])


# ------------------------------------------------------------------ dispatch


def test_execute_dispatches_every_command_type():
    book = OrderBook(INSTRUMENT)
    assert book.execute(limit("b", "a", BUY, 2, 100)).events[0].order_id == "b"
    assert book.execute(amend("b", "a", quantity=1)).events[0].priority_kept is True
    assert book.execute(cancel("b", "a")).events[0].order_id == "b"
    assert book.execute(cancel_all("a")).events == []


def test_execute_refuses_something_that_is_not_a_command():
    with pytest.raises(TypeError):
        OrderBook(INSTRUMENT).execute("place")


# ------------------------------------------------------------------ validate


def corrupted(mutate) -> OrderBook:
    book = sample_book()
    book.validate()
    mutate(book)
    return book


@pytest.mark.parametrize(
    "mutate, invariant",
    [
        (lambda b: setattr(b._bids.levels[99], "qty", 6), "total equals the sum"),
        (lambda b: b._bids.levels[99].queue.rotate(1), "FIFO"),
        (lambda b: b._orders.pop("b3"), "id index agrees"),
        (lambda b: setattr(b._bids.levels[99].queue[0], "remaining", 0), "count equals"),
        (lambda b: b._bids.keys.append(1000), "sorted and unique|match the levels"),
        (lambda b: b._asks.keys.reverse(), "sorted"),
        (lambda b: b._clients["alice"].pop("b1"), "client index"),
        (lambda b: setattr(b._bids.levels[97].queue[0], "filled", 1), "remaining = quantity - filled"),
        (lambda b: setattr(b, "last_price", 80), "not triggerable"),
        (lambda b: b._sell_stops.clear(), "stop lists"),
    ],
)
def test_validate_names_the_broken_invariant(mutate, invariant):
    book = corrupted(mutate)
    with pytest.raises(AssertionError, match=invariant):
        book.validate()


def test_validate_detects_a_crossed_book():
    book = sample_book()
    # move the best ask below the best bid behind the engine's back
    level = book._asks.levels.pop(-101)
    level.price = 98
    for o in level.queue:
        o.price = 98
    book._asks.levels[-98] = level
    book._asks.keys.remove(-101)
    book._asks.keys.append(-98)
    book._asks.keys.sort()
    with pytest.raises(AssertionError, match="crossed"):
        book.validate()


def test_validate_detects_a_zero_quantity_level():
    book = sample_book()
    lvl = book._bids.levels[97]
    o = lvl.queue[0]
    o.quantity = o.filled = 1
    o.remaining = 0
    lvl.qty = 0
    lvl.count = 0
    lvl.dead = 1
    with pytest.raises(AssertionError, match="not empty"):
        book.validate()
