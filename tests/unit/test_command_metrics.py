"""The write side's per-batch counters (CommandMetrics.after_batch): what a dashboard shows after two
batches of real engine events, counted through children looked up once per label set."""

from prometheus_client import generate_latest

from command_service.metrics import CommandMetrics
from contracts.enums import OrderType, Side
from contracts.instruments import load_instruments
from contracts.messages import PlaceOrder
from engine import OrderBook

SYM = "BTC-USD"
TS = 1_700_000_000_000_000_000


def _run(book: OrderBook, *cmds: PlaceOrder) -> list:
    events = []
    for cmd in cmds:
        events += book.execute(cmd).events
    return events


def _sample(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{line_start} not exported")


def test_two_batches_add_up_per_type_side_and_instrument():
    instruments = load_instruments()
    metrics = CommandMetrics(instruments.symbols, instruments)
    book = OrderBook(SYM)

    def place(oid, side, qty, price, otype=OrderType.LIMIT):
        return PlaceOrder(oid, "c1" if side is Side.SELL else "c2", SYM, side, otype, qty, TS, price)

    first = _run(book, place("s1", Side.SELL, 5, 101), place("s2", Side.SELL, 5, 102), place("b1", Side.BUY, 3, 99))
    metrics.after_batch(SYM, first, book)
    # the second batch: a buy that takes all of s1 and part of s2, and a market buy that takes 1 more
    second = _run(book, place("b2", Side.BUY, 7, 102), place("m1", Side.BUY, 1, None, OrderType.MARKET))
    metrics.after_batch(SYM, second, book)

    text = generate_latest(metrics.registry).decode()
    assert _sample(text, 'orders_received_total{side="sell",type="limit"}') == 2
    assert _sample(text, 'orders_received_total{side="buy",type="limit"}') == 2
    assert _sample(text, 'orders_received_total{side="buy",type="market"}') == 1
    assert _sample(text, f'trades_total{{instrument="{SYM}"}}') == 3  # b2 x s1, b2 x s2, m1 x s2
    assert _sample(text, f'orders_matched_total{{instrument="{SYM}"}}') == 2  # takers b2 and m1
    assert _sample(text, f'resting_orders{{instrument="{SYM}"}}') == 2  # b1 and what is left of s2
    assert _sample(text, f'current_orderbook_depth{{instrument="{SYM}",side="buy"}}') == 1
    assert _sample(text, f'current_orderbook_depth{{instrument="{SYM}",side="sell"}}') == 1
    assert _sample(text, f'journal_seq{{instrument="{SYM}"}}') == book.seq
