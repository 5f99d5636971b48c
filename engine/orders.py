"""Internal, mutable order and price-level records of the engine.

Not part of any contract: the outside world sees OrderState / events from contracts.messages.
"""

from __future__ import annotations

from collections import deque
from typing import Iterator, Optional

import msgspec

from contracts.enums import OrderStatus, OrderType, Side, StpMode, TimeInForce


class Order(msgspec.Struct, gc=False, array_like=True):
    """One order inside the book (resting, pending stop, or the taker being processed).

    gc=False: an Order only refers to str/int/enum/None, so it can never be part of a
    reference cycle, and untracking it keeps the collector from rescanning the book.
    array_like: snapshots encode an order as a msgpack array (compact, deterministic).
    Construction is positional on the hot path; keep the field order in sync with
    engine.book.
    """

    order_id: str
    client_id: str
    side: Side
    order_type: OrderType
    price: Optional[int]  # limit price in ticks; None for market / stop_market
    quantity: int  # total quantity (lots), after amends
    filled: int
    remaining: int  # open quantity; 0 marks an entry that is no longer in its level
    tif: TimeInForce
    post_only: bool
    stp: StpMode
    stop_price: Optional[int]
    created_ts: int
    updated_ts: int
    accept_seq: int  # seq of its OrderAccepted (order of cancel-all and of stop triggering)
    prio: int  # seq of the event that gave it its place in the level (accepted/triggered/amended)
    cost: int  # sum of price * quantity over its fills
    status: OrderStatus  # PENDING, OPEN (also partially filled), FILLED, CANCELLED, REJECTED
    reject_reason: Optional[str] = None
    display: int = 0  # iceberg: display quantity (0 = not an iceberg)
    shown: int = 0  # iceberg at rest: its shown part, 0 < shown <= min(display, remaining)
    expire_ts: Optional[int] = None  # GTD: cancelled by an ExpireOrders with ts >= this
    # the owner's own id, carried into its states (last with a default: older snapshots decode)
    client_order_id: Optional[str] = None


class Level:
    """A FIFO price level.

    The queue may contain dead entries (orders cancelled or amended away, remaining == 0):
    removing from the middle of a deque is O(n), so a cancel only marks the order and
    fixes the totals; the dead entry is dropped when it reaches the head, or by a
    compaction once dead entries outnumber live ones, or with the whole level.
    `qty` and `count` always describe the live orders only; `qty` counts their whole
    remaining quantity and `hidden` the part of it icebergs do not show (public size =
    qty - hidden).
    """

    __slots__ = ("price", "qty", "hidden", "count", "dead", "queue")

    def __init__(self, price: int):
        self.price = price
        self.qty = 0
        self.hidden = 0
        self.count = 0
        self.dead = 0
        self.queue: deque[Order] = deque()

    def live(self) -> Iterator[Order]:
        for o in self.queue:
            if o.remaining:
                yield o


class BookSide:
    """One side of the book: levels by key plus the keys sorted ascending, best LAST.

    key = price for bids and -price for asks, so on both sides the best level is
    keys[-1] (O(1) pop when the best level empties during matching), and a taker with
    limit L accepts a level iff key >= (-L for a buy taker on asks, L for a sell taker
    on bids).
    """

    __slots__ = ("levels", "keys", "sign")

    def __init__(self, sign: int):
        self.levels: dict[int, Level] = {}
        self.keys: list[int] = []
        self.sign = sign
