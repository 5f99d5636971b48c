"""Commands into the engine and events out of it: integer ticks and lots only.

These are the journal records: the command service writes the events to PostgreSQL (the
journal is also the outbox), the relay forwards them to Kafka, and the query service
projects them. One definition, used by both sides.

Prices are integer ticks, quantities integer lots (see contracts.instruments for the
conversion at the edge). `ts` is an integer of nanoseconds since the epoch; it is
assigned by the sequencer, never read from a clock inside the engine.
"""

from __future__ import annotations

from typing import Any, Optional, Union, get_args

import msgspec

from contracts.enums import (
    CancelReason,
    OrderStatus,
    OrderType,
    RejectReason,
    ResultCode,
    Side,
    StpMode,
    TimeInForce,
)

# --------------------------------------------------------------------------- commands


class PlaceOrder(msgspec.Struct, frozen=True, tag="place", tag_field="type"):
    order_id: str
    client_id: str
    instrument: str
    side: Side
    order_type: OrderType
    quantity: int  # lots, > 0
    ts: int
    price: Optional[int] = None  # ticks; None for market / stop_market
    tif: TimeInForce = TimeInForce.GTC
    post_only: bool = False
    stp: StpMode = StpMode.CANCEL_NEWEST
    stop_price: Optional[int] = None  # ticks; stop orders only
    display_quantity: Optional[int] = None  # iceberg: lots shown at a time (GTC/GTD limit only)
    expire_ts: Optional[int] = None  # GTD only: ns since the epoch, > ts
    # The client's own id of this order (unique per client, checked by the command service;
    # the engine only carries it). Optional with a default, last: older journals decode.
    client_order_id: Optional[str] = None


class CancelOrder(msgspec.Struct, frozen=True, tag="cancel", tag_field="type"):
    order_id: str
    client_id: str
    instrument: str
    ts: int
    reason: CancelReason = CancelReason.USER


class AmendOrder(msgspec.Struct, frozen=True, tag="amend", tag_field="type"):
    """Change quantity (new total, must exceed the filled quantity) and/or price.
    A pure decrease keeps time priority; a price change or an increase loses it."""

    order_id: str
    client_id: str
    instrument: str
    ts: int
    quantity: Optional[int] = None
    price: Optional[int] = None


class CancelAll(msgspec.Struct, frozen=True, tag="cancel_all", tag_field="type"):
    client_id: str
    instrument: str
    ts: int
    side: Optional[Side] = None
    reason: CancelReason = CancelReason.CANCEL_ALL


class ExpireOrders(msgspec.Struct, frozen=True, tag="expire", tag_field="type"):
    """The time has come: cancel (reason expired) every GTD order whose expire_ts <= ts.
    Injected by the service, which owns the clock; the engine never reads one."""

    instrument: str
    ts: int


Command = Union[PlaceOrder, CancelOrder, AmendOrder, CancelAll, ExpireOrders]

# --------------------------------------------------------------------------- events
# Every event carries its instrument and a per-instrument, gap-free `seq`. Events, order
# states and results hold only scalars (a Result a list of them), so they can never be part
# of a reference cycle: gc=False spares the collector from tracking millions of them.


class OrderAccepted(msgspec.Struct, frozen=True, gc=False, tag="order_accepted", tag_field="type"):
    instrument: str
    seq: int
    ts: int
    order_id: str
    client_id: str
    side: Side
    order_type: OrderType
    price: Optional[int]
    quantity: int
    tif: TimeInForce
    post_only: bool
    stp: StpMode
    stop_price: Optional[int] = None
    display_quantity: Optional[int] = None  # iceberg
    expire_ts: Optional[int] = None  # GTD
    client_order_id: Optional[str] = None  # the owner's id; absent in journals before it existed


class OrderRejected(msgspec.Struct, frozen=True, gc=False, tag="order_rejected", tag_field="type"):
    instrument: str
    seq: int
    ts: int
    order_id: str
    client_id: str
    side: Side
    order_type: OrderType
    price: Optional[int]
    quantity: int
    tif: TimeInForce
    reason: RejectReason
    client_order_id: Optional[str] = None  # the owner's id; absent in journals before it existed


class TradeExecuted(msgspec.Struct, frozen=True, gc=False, tag="trade", tag_field="type"):
    """A fill at the maker's (resting order's) price."""

    instrument: str
    seq: int
    ts: int
    trade_id: str
    price: int
    quantity: int
    taker_side: Side
    maker_order_id: str
    maker_client_id: str
    taker_order_id: str
    taker_client_id: str
    maker_remaining: int  # maker's open quantity after this fill (0 = filled)
    taker_remaining: int  # taker's unfilled quantity after this fill


class OrderCancelled(msgspec.Struct, frozen=True, gc=False, tag="order_cancelled", tag_field="type"):
    instrument: str
    seq: int
    ts: int
    order_id: str
    client_id: str
    reason: CancelReason
    cancelled_quantity: int  # open quantity removed by this cancel
    filled_quantity: int  # the order's filled quantity at cancel time


class OrderAmended(msgspec.Struct, frozen=True, gc=False, tag="order_amended", tag_field="type"):
    instrument: str
    seq: int
    ts: int
    order_id: str
    client_id: str
    price: Optional[int]  # the price after the amend
    quantity: int  # the new total quantity
    remaining: int  # open quantity after the amend
    priority_kept: bool


class OrderTriggered(msgspec.Struct, frozen=True, gc=False, tag="order_triggered", tag_field="type"):
    """A stop order whose stop price was crossed now enters the book as limit/market."""

    instrument: str
    seq: int
    ts: int
    order_id: str
    client_id: str
    last_price: int


Event = Union[
    OrderAccepted,
    OrderRejected,
    TradeExecuted,
    OrderCancelled,
    OrderAmended,
    OrderTriggered,
]

# --------------------------------------------------------------------------- results


class OrderState(msgspec.Struct, frozen=True, gc=False):
    """An order's state after a command, for the orders table and the API response."""

    order_id: str
    client_id: str
    instrument: str
    side: Side
    order_type: OrderType
    price: Optional[int]
    quantity: int
    filled_quantity: int
    status: OrderStatus
    tif: TimeInForce
    post_only: bool
    created_ts: int
    updated_ts: int
    reject_reason: Optional[str] = None
    stop_price: Optional[int] = None
    cost: int = 0  # sum of price*quantity of its fills, in ticks*lots (for average price)
    display_quantity: Optional[int] = None  # iceberg: the owner sees it; public views show `shown`
    shown: int = 0  # iceberg: the part the book shows now (0 when not resting or not an iceberg)
    expire_ts: Optional[int] = None  # GTD
    client_order_id: Optional[str] = None  # the owner's id (private: never in public market data)


class Result(msgspec.Struct, frozen=True, gc=False):
    """Outcome of one command: a code, the events it produced (possibly none), and the
    states of every order it touched (the command's own order first)."""

    code: ResultCode
    events: list[Any] = []  # list[Event]
    orders: list[Any] = []  # list[OrderState]


# --------------------------------------------------------------------------- codec

_event_encoder = msgspec.json.Encoder()
_event_decoder = msgspec.json.Decoder(Event)
_command_decoder = msgspec.json.Decoder(Command)


def encode_event(event: Event) -> bytes:
    return _event_encoder.encode(event)


def decode_event(data: bytes | str) -> Event:
    event: Event = _event_decoder.decode(data)
    return event


def decode_command(data: bytes | str) -> Command:
    command: Command = _command_decoder.decode(data)
    return command


EVENT_TYPES = {cls.__struct_config__.tag: cls for cls in get_args(Event)}
