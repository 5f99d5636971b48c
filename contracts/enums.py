"""Enumerations shared by the engine, both services and the tests.

They are `str` enums so that they encode to JSON/msgpack as their plain value.
"""

from enum import Enum


class Side(str, Enum):
    BUY = "buy"
    SELL = "sell"


class OrderType(str, Enum):
    LIMIT = "limit"
    MARKET = "market"
    STOP_LIMIT = "stop_limit"
    STOP_MARKET = "stop_market"


class TimeInForce(str, Enum):
    GTC = "GTC"
    IOC = "IOC"
    FOK = "FOK"
    GTD = "GTD"  # good till date: rests like GTC until its expire time


class OrderStatus(str, Enum):
    PENDING = "pending"  # untriggered stop order
    OPEN = "open"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    REJECTED = "rejected"


CLOSED_STATUSES = frozenset({OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED})


class StpMode(str, Enum):
    """Self-trade prevention: what happens when an incoming order meets a resting
    order of the same client. The two never trade."""

    CANCEL_NEWEST = "cancel_newest"  # cancel the incoming remainder (default)
    CANCEL_OLDEST = "cancel_oldest"  # cancel the resting order, keep matching
    CANCEL_BOTH = "cancel_both"  # cancel both


class RejectReason(str, Enum):
    """Why an order was rejected by the engine (an OrderRejected event)."""

    FOK_UNFILLABLE = "fok_unfillable"
    POST_ONLY_WOULD_CROSS = "post_only_would_cross"
    INVALID_ORDER = "invalid_order"


class CancelReason(str, Enum):
    """Why (part of) an order was cancelled (an OrderCancelled event)."""

    USER = "user"  # cancel request from the owner
    CANCEL_ALL = "cancel_all"
    IOC_REMAINDER = "ioc_remainder"  # unfilled rest of an IOC order
    MARKET_REMAINDER = "market_remainder"  # unfilled rest of a market order
    SELF_TRADE = "self_trade"  # self-trade prevention
    EXPIRED = "expired"  # a GTD order reached its expire time (ExpireOrders)
    CANCEL_AFTER = "cancel_after"  # the client's dead man's switch ran out
    DISCONNECT = "cancel_on_disconnect"  # its /ws session closed with cancel_on_disconnect


class ResultCode(str, Enum):
    """Outcome of one engine command. Rejections are values, never exceptions."""

    OK = "ok"
    REJECTED = "rejected"  # order rejected: an OrderRejected event carries the reason
    UNKNOWN_ORDER = "unknown_order"  # cancel/amend of an order the book does not hold
    NOT_OWNER = "not_owner"  # cancel/amend of another client's order
    DUPLICATE_ORDER_ID = "duplicate_order_id"  # place with an id already resting
    INVALID_AMEND = "invalid_amend"  # amend to <= filled quantity, or nothing to change
    AMEND_WOULD_CROSS = "amend_would_cross"  # post-only amend to a crossing price
    # Pre-trade risk (OrderBook.risk): the order is refused, nothing changes; the value names the limit.
    RISK_MAX_ORDER_NOTIONAL = "max_order_notional"  # price x quantity above the instrument's limit
    RISK_MAX_OPEN_ORDERS = "max_open_orders"  # the client already has this many open orders here
    RISK_MAX_POSITION = "max_position"  # filled, it would take the client's net position past the limit
