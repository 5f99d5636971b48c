"""Builders shared by the engine unit tests (no tests in here).

Commands and expected events are spelled out field by field so that every unit test can
compare the engine's output with `==` against exact events.
"""

from __future__ import annotations

from contracts.enums import (
    CancelReason,
    OrderType,
    RejectReason,
    Side,
    StpMode,
    TimeInForce,
)
from contracts.messages import (
    AmendOrder,
    CancelAll,
    CancelOrder,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderRejected,
    OrderTriggered,
    PlaceOrder,
    Result,
    TradeExecuted,
)
from engine import OrderBook

INSTRUMENT = "BTC-USD"
TS = 1_700_000_000_000_000_000
BUY = Side.BUY
SELL = Side.SELL
GTC = TimeInForce.GTC
IOC = TimeInForce.IOC
FOK = TimeInForce.FOK
NEWEST = StpMode.CANCEL_NEWEST
OLDEST = StpMode.CANCEL_OLDEST
BOTH = StpMode.CANCEL_BOTH


def limit(oid, client, side, qty, price, ts=TS, **kw) -> PlaceOrder:
    return PlaceOrder(
        order_id=oid, client_id=client, instrument=INSTRUMENT, side=side, order_type=OrderType.LIMIT,
        quantity=qty, ts=ts, price=price, **kw,
    )


def market(oid, client, side, qty, ts=TS, **kw) -> PlaceOrder:
    return PlaceOrder(
        order_id=oid, client_id=client, instrument=INSTRUMENT, side=side, order_type=OrderType.MARKET,
        quantity=qty, ts=ts, **kw,
    )


def stop_limit(oid, client, side, qty, price, stop, ts=TS, **kw) -> PlaceOrder:
    return PlaceOrder(
        order_id=oid, client_id=client, instrument=INSTRUMENT, side=side, order_type=OrderType.STOP_LIMIT,
        quantity=qty, ts=ts, price=price, stop_price=stop, **kw,
    )


def stop_market(oid, client, side, qty, stop, ts=TS, **kw) -> PlaceOrder:
    return PlaceOrder(
        order_id=oid, client_id=client, instrument=INSTRUMENT, side=side, order_type=OrderType.STOP_MARKET,
        quantity=qty, ts=ts, stop_price=stop, **kw,
    )


def cancel(oid, client, ts=TS) -> CancelOrder:
    return CancelOrder(order_id=oid, client_id=client, instrument=INSTRUMENT, ts=ts)


def amend(oid, client, quantity=None, price=None, ts=TS) -> AmendOrder:
    return AmendOrder(order_id=oid, client_id=client, instrument=INSTRUMENT, ts=ts, quantity=quantity, price=price)


def cancel_all(client, side=None, ts=TS) -> CancelAll:
    return CancelAll(client_id=client, instrument=INSTRUMENT, ts=ts, side=side)


# ------------------------------------------------------------------ expected events


def accepted(seq: int, cmd: PlaceOrder) -> OrderAccepted:
    return OrderAccepted(
        instrument=INSTRUMENT, seq=seq, ts=cmd.ts, order_id=cmd.order_id, client_id=cmd.client_id,
        side=cmd.side, order_type=cmd.order_type, price=cmd.price, quantity=cmd.quantity, tif=cmd.tif,
        post_only=cmd.post_only, stp=cmd.stp, stop_price=cmd.stop_price,
        display_quantity=cmd.display_quantity, expire_ts=cmd.expire_ts,
    )


def rejected(seq: int, cmd: PlaceOrder, reason: RejectReason) -> OrderRejected:
    return OrderRejected(
        instrument=INSTRUMENT, seq=seq, ts=cmd.ts, order_id=cmd.order_id, client_id=cmd.client_id,
        side=cmd.side, order_type=cmd.order_type, price=cmd.price, quantity=cmd.quantity, tif=cmd.tif,
        reason=reason,
    )


def trade(seq, price, qty, taker_side, maker, maker_client, taker, taker_client, maker_rem, taker_rem, ts=TS):
    return TradeExecuted(
        instrument=INSTRUMENT, seq=seq, ts=ts, trade_id=f"{INSTRUMENT}:{seq}", price=price, quantity=qty,
        taker_side=taker_side, maker_order_id=maker, maker_client_id=maker_client, taker_order_id=taker,
        taker_client_id=taker_client, maker_remaining=maker_rem, taker_remaining=taker_rem,
    )


def cancelled(seq, oid, client, reason: CancelReason, qty, filled=0, ts=TS) -> OrderCancelled:
    return OrderCancelled(
        instrument=INSTRUMENT, seq=seq, ts=ts, order_id=oid, client_id=client, reason=reason,
        cancelled_quantity=qty, filled_quantity=filled,
    )


def amended(seq, oid, client, price, qty, remaining, kept: bool, ts=TS) -> OrderAmended:
    return OrderAmended(
        instrument=INSTRUMENT, seq=seq, ts=ts, order_id=oid, client_id=client, price=price, quantity=qty,
        remaining=remaining, priority_kept=kept,
    )


def triggered(seq, oid, client, last_price, ts=TS) -> OrderTriggered:
    return OrderTriggered(instrument=INSTRUMENT, seq=seq, ts=ts, order_id=oid, client_id=client, last_price=last_price)


# ------------------------------------------------------------------ running


def run(book: OrderBook, cmd) -> Result:
    """Execute one command and check every invariant afterwards."""
    result = book.execute(cmd)
    book.validate()
    return result


def book_with(*cmds) -> OrderBook:
    book = OrderBook(INSTRUMENT)
    for cmd in cmds:
        run(book, cmd)
    return book


def resting(book: OrderBook) -> list[tuple[str, int, int]]:
    """(order_id, price, open quantity) of the resting orders, in l3 order."""
    return [(s.order_id, s.price, s.quantity - s.filled_quantity) for s in book.l3()]
