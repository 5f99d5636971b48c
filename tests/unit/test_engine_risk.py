"""Pre-trade risk limits in the engine (issue 20): refusals are result codes with no events, and
the positions they judge by are rebuilt exactly by replay and by snapshot/restore."""

from __future__ import annotations

from contracts.enums import ResultCode
from engine import OrderBook
from tests.unit.test_engine_support import BUY, INSTRUMENT, IOC, SELL, amend, limit, market, run


def trades() -> tuple[OrderBook, list]:
    book = OrderBook(INSTRUMENT)
    events = []
    for cmd in (limit("s1", "erin", SELL, 5, 100), limit("s2", "dave", SELL, 3, 101), market("b1", "alice", BUY, 6),
                limit("b2", "bob", BUY, 4, 99), limit("s3", "alice", SELL, 1, 99)):
        events += run(book, cmd).events
    return book, events


def test_positions_follow_the_fills_and_survive_replay_and_snapshot():
    book, events = trades()
    assert book.positions == {"erin": -5, "dave": -1, "alice": 5, "bob": 1}
    replayed = OrderBook(INSTRUMENT)
    for e in events:
        replayed.apply(e)
    assert replayed.positions == book.positions
    assert OrderBook.restore(book.snapshot(), validate=True).positions == book.positions
    assert OrderBook.restore(book.snapshot()).snapshot() == book.snapshot()


def test_each_limit_refuses_with_its_code_and_no_events():
    book, _ = trades()
    seq = book.seq
    book.risk = (1000, 0, 0)  # notional: ticks x lots
    assert run(book, limit("n1", "zed", BUY, 11, 91)).code is ResultCode.RISK_MAX_ORDER_NOTIONAL
    assert run(book, market("n2", "zed", BUY, 10)).code is ResultCode.RISK_MAX_ORDER_NOTIONAL  # @ best ask 101
    book.risk = (0, 1, 0)  # one open order per client
    assert run(book, limit("o1", "bob", BUY, 1, 90)).code is ResultCode.RISK_MAX_OPEN_ORDERS  # bob rests b2
    assert run(book, limit("o2", "bob", BUY, 1, 90, tif=IOC)).code is ResultCode.OK  # never rests
    seq = book.seq
    book.risk = (0, 0, 5)
    assert run(book, limit("p1", "alice", BUY, 1, 90)).code is ResultCode.RISK_MAX_POSITION  # +5 -> +6
    assert run(book, limit("p2", "erin", SELL, 1, 200)).code is ResultCode.RISK_MAX_POSITION  # -5 -> -6
    assert run(book, limit("p3", "alice", SELL, 8, 200)).code is ResultCode.OK  # +5 -> -3: within the limit
    assert book.seq == seq + 1  # only p3 (allowed: it brings alice's position toward zero) made events


def test_an_amend_cannot_walk_around_the_limits():
    book, _ = trades()  # bob rests b2: buy 4 @ 99; bob's position +1
    book.risk = (500, 0, 4)
    seq = book.seq
    assert run(book, amend("b2", "bob", quantity=6)).code is ResultCode.RISK_MAX_ORDER_NOTIONAL  # 594 > 500
    assert run(book, amend("b2", "bob", quantity=5, price=80)).code is ResultCode.RISK_MAX_POSITION  # 1+5 > 4
    assert book.seq == seq
    assert run(book, amend("b2", "bob", quantity=3)).code is ResultCode.OK  # a decrease always passes
