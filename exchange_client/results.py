"""Typed answers: `ExchangeClient(url, key, typed=True)` (or AsyncExchangeClient) returns these
msgspec Structs instead of dicts for the routes listed in RESULTS; the others stay dicts.

    with ExchangeClient(url, key, typed=True) as ex:
        r = ex.place_order("buy", Decimal("0.1"), price=Decimal("70000"))
        r.order.order_id, r.order.price          # str, Decimal('70000')

Every price and quantity is a Decimal; times are the API's ISO 8601 text. Fields the server adds
later are ignored (a newer server does not break an older client). The shapes are the
API documents' (contracts/schemas.py); tests/unit/test_client_routes.py checks they match."""

from __future__ import annotations

from decimal import Decimal
from typing import Optional

import msgspec


class _Result(msgspec.Struct, frozen=True, kw_only=True):
    pass


class Order(_Result):
    order_id: str  # the server's
    client_id: str
    instrument: str
    side: str
    type: str
    price: Optional[Decimal]
    quantity: Decimal
    filled_quantity: Decimal
    status: str
    time_in_force: str
    created_at: str
    updated_at: str
    client_order_id: Optional[str] = None  # the owner's own id (null when none)
    remaining_quantity: Optional[Decimal] = None
    average_price: Optional[Decimal] = None
    post_only: bool = False
    stop_price: Optional[Decimal] = None
    reject_reason: Optional[str] = None
    cancel_reason: Optional[str] = None  # read views: user, cancel_all, expired, cancel_after, ...
    display_quantity: Optional[Decimal] = None  # iceberg (the owner's view)
    shown_quantity: Optional[Decimal] = None
    expire_time: Optional[str] = None  # GTD
    seq: Optional[int] = None  # read views: seq of the order's last change


class Trade(_Result):
    trade_id: str
    buy_order_id: str
    sell_order_id: str
    instrument: str
    price: Decimal
    quantity: Decimal
    taker_side: str
    timestamp: str
    seq: int


class BookLevel(_Result):
    price: Decimal
    quantity: Decimal
    cumulative: Decimal


class BookTop(_Result):
    instrument: str
    bids: list[BookLevel]
    asks: list[BookLevel]
    seq: int


class OrderBook(BookTop):
    timestamp: str


class PlaceResult(_Result):
    """place_order and amend_order (over HTTP; over /ws the answer has no orderbook)."""

    order: Order
    trades: list[Trade]
    orderbook: Optional[BookTop] = None


class OrderResult(_Result):
    order: Order


class CancelAllResult(_Result):
    cancelled: list[str]
    unavailable_instruments: list[str] = []


class CancelAfterResult(_Result):
    timeout_ms: int
    current_time: str
    trigger_time: Optional[str]  # None: the switch is off


class ServerTime(_Result):
    time: str
    epoch_ms: int


class Trades(_Result):
    instrument: str
    trades: list[Trade]
    count: int


class Ticker(_Result):
    instrument: str
    last_price: Optional[Decimal]
    best_bid: Optional[Decimal]
    best_ask: Optional[Decimal]
    volume_24h: Decimal
    last_quantity: Optional[Decimal] = None
    last_trade_at: Optional[str] = None
    open_24h: Optional[Decimal] = None
    high_24h: Optional[Decimal] = None
    low_24h: Optional[Decimal] = None
    quote_volume_24h: Optional[Decimal] = None
    trade_count_24h: Optional[int] = None
    vwap_24h: Optional[Decimal] = None
    change_24h: Optional[Decimal] = None
    change_percent_24h: Optional[Decimal] = None
    seq: Optional[int] = None


class Instrument(_Result):
    symbol: str
    tick_size: Decimal
    lot_size: Decimal
    base: Optional[str] = None
    quote: Optional[str] = None
    min_quantity: Optional[Decimal] = None
    max_quantity: Optional[Decimal] = None
    max_price: Optional[Decimal] = None
    status: Optional[str] = None
    order_types: list[str] = []
    time_in_force: list[str] = []
    iceberg: bool = False
    post_only: bool = False


class Instruments(_Result):
    instruments: list[Instrument]


class Position(_Result):
    instrument: str
    net_quantity: Decimal
    total_cost: Decimal
    avg_price: Decimal
    realized_pnl: Decimal
    unrealized_pnl: Decimal
    mark_price: Optional[Decimal] = None
    last_updated: Optional[str] = None


class Positions(_Result):
    client_id: str
    positions: list[Position]


class Orders(_Result):
    orders: list[Order]
    client_id: Optional[str] = None
    count: Optional[int] = None
    next_cursor: Optional[str] = None


class Fill(_Result):
    trade_id: str
    order_id: str
    client_id: str
    instrument: str
    side: str
    role: str
    price: Decimal
    quantity: Decimal
    notional: Decimal
    timestamp: str
    seq: int


class Fills(_Result):
    fills: list[Fill]
    client_id: Optional[str] = None
    count: Optional[int] = None
    next_cursor: Optional[str] = None


# client method -> (its Struct, the schema name in contracts.schemas.COMPONENTS it mirrors)
RESULTS: dict[str, tuple[type[_Result], str]] = {
    "place_order": (PlaceResult, "PlaceOrderResponse"), "amend_order": (PlaceResult, "PlaceOrderResponse"),
    "cancel_order": (OrderResult, "OrderResponse"), "get_order": (OrderResult, "OrderResponse"),
    "cancel_all": (CancelAllResult, "CancelAllResponse"), "cancel_after": (CancelAfterResult, "CancelAfterResponse"),
    "server_time": (ServerTime, "ServerTime"), "orderbook": (OrderBook, "OrderBook"), "trades": (Trades, "Trades"),
    "ticker": (Ticker, "Ticker"), "instruments": (Instruments, "Instruments"), "positions": (Positions, "Positions"),
    "orders": (Orders, "Orders"), "fills": (Fills, "Fills"),
}


def convert(name: str, body):
    """The answer of client method `name` as its Struct (a dict when it has none)."""
    entry = RESULTS.get(name)
    return body if entry is None else msgspec.convert(body, entry[0])


__all__ = [name for name, v in list(globals().items()) if isinstance(v, type) and issubclass(v, _Result)
           and not name.startswith("_")] + ["RESULTS", "convert"]
