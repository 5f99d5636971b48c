"""Snapshots are serialised by a forked child: the bytes are the book as it was at the fork,
whatever the sequencer does to the book meanwhile."""

import asyncio

from command_service.sequencer import collect_snapshot, fork_snapshot
from contracts.enums import OrderType, Side
from contracts.messages import CancelOrder, PlaceOrder
from engine import OrderBook


def book_with(n: int) -> OrderBook:
    b = OrderBook("BTC-USD")
    for i in range(n):
        side = Side.BUY if i % 2 else Side.SELL
        price = 7_000_000 + (-1 - i % 3000 if side == Side.BUY else 1 + i % 3000)
        b.execute(PlaceOrder(order_id=f"o{i}", client_id=f"c{i % 50}", instrument="BTC-USD", side=side,
                             order_type=OrderType.LIMIT, price=price, quantity=10 + i % 7, ts=i + 1))
    return b


async def test_the_snapshot_is_the_book_at_the_fork():
    book = book_with(100_000)
    expected = book.snapshot()
    child = fork_snapshot(book)
    assert child is not None
    # the sequencer goes on changing the book while the child serialises
    for i in range(0, 20_000, 2):
        book.execute(CancelOrder(f"o{i}", f"c{i % 50}", "BTC-USD", 200_000 + i))
        if i % 1000 == 0:
            await asyncio.sleep(0)
    data = await collect_snapshot(*child)
    assert data == expected
    assert OrderBook.restore(data, validate=True).snapshot() == expected
    assert book.snapshot() != expected


async def test_a_failing_child_is_reported_and_leaves_no_file():
    class Broken:
        instrument = "BTC-USD"

        def snapshot(self):
            raise RuntimeError("boom")

    pid, path = fork_snapshot(Broken())
    try:
        await collect_snapshot(pid, path)
    except RuntimeError as exc:
        assert "exited with 1" in str(exc)
    else:
        raise AssertionError("a failed child must not yield a snapshot")
    import os

    assert not os.path.exists(path)
