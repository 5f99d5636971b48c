"""The projector's pure core: journal events + the small state they touch -> view changes.

No I/O, no clock. `project(state, events)` returns the new state and a ViewDelta that the
store (query_service.store) turns into Redis commands, applied in ONE MULTI/EXEC together
with the instrument's last_seq. Because the result depends only on the state and the
events, and the events are applied one by one, the views after events 1..n are the same
however the events were split into batches (replay, journal rebuild, Kafka batches).

The book view. The engine's events say when an order is accepted and when it trades, but
not when its unfilled remainder starts to rest. Adding a crossing limit order to the book
at acceptance would show a crossed book until its trades arrive (and a batch may end
between them). Instead an accepted (or triggered, or amended) order is "taking" while its
price crosses the opposite side of the projected book; it rests - is added to its level -
as soon as it no longer crosses, which is exactly when price-time matching stops. Orders
that can never rest (market, IOC, FOK) stay taking until a trade fills them or the engine
cancels their remainder. So after every event the projected book is uncrossed and, at each
command boundary, equal to the engine's book.

Icebergs count with their shown part only (the engine's rules, issue 15): it starts at
min(display, remaining) when the order rests, shrinks with its fills, and is refreshed to
min(display, remaining) when a fill uses it up; a priority-keeping amend takes the hidden
part first. Public levels therefore equal the engine's l2 at every command boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

from sortedcontainers import SortedDict

from contracts.enums import CLOSED_STATUSES
from contracts.messages import (
    Event,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderRejected,
    OrderTriggered,
    TradeExecuted,
)
from query_service.records import (
    BOOK_OFF,
    BOOK_RESTING,
    BOOK_TAKING,
    LIMIT_TYPES,
    RESOLUTIONS,
    STOP_TYPES,
    Bucket,
    LastTrade,
    OrderRec,
    Position,
    bucket_start,
)


class GapError(Exception):
    """The events do not continue the state's last_seq: rebuild from the journal."""

    def __init__(self, instrument: str, last_seq: int, next_seq: int):
        super().__init__(f"{instrument}: have seq {last_seq}, next event has seq {next_seq}")
        self.instrument = instrument
        self.last_seq = last_seq
        self.next_seq = next_seq


# --------------------------------------------------------------------------- accounting


def div_round_half_even(a: int, b: int) -> int:
    """a / b (b > 0) rounded to the nearest integer, ties to even; exact for any sign of a."""
    q, r = divmod(a, b)
    twice = 2 * r
    if twice > b or (twice == b and q & 1):
        q += 1
    return q


def apply_fill(p: Position, signed_qty: int, price: int, ts: int) -> Position:
    """Average-cost accounting of one fill (signed_qty > 0 buys, < 0 sells; price in ticks).

    - Opening or adding (flat, or same direction): net += q, cost += price * q.
    - Reducing (opposite direction): the closed part c = min(|q|, |net|) takes its share of
      the basis, relieved = cost * c / |net| (all of it when the position closes; otherwise
      rounded half-even to the ticks*lots grid, the residual stays in the basis so that a
      position that ends flat has realized exactly proceeds - payments).
      realized += sign(net) * price * c - relieved.
    - Flipping: the part beyond |net| opens a new position at this price.
    All integers (ticks*lots): nothing is ever lost to rounding in sums.
    """
    net, cost, realized = p.net, p.cost, p.realized
    if net == 0 or (net > 0) == (signed_qty > 0):
        net += signed_qty
        cost += price * signed_qty
    else:
        q = abs(signed_qty)
        closing = min(q, abs(net))
        relieved = cost if closing == abs(net) else div_round_half_even(cost * closing, abs(net))
        sgn = 1 if net > 0 else -1
        realized += sgn * price * closing - relieved
        cost -= relieved
        net -= sgn * closing
        leftover = q - closing
        if leftover:
            d = 1 if signed_qty > 0 else -1
            net = d * leftover
            cost = price * d * leftover
    return Position(net=net, cost=cost, realized=realized, updated_ts=ts, volume=p.volume + abs(signed_qty))


def unrealized(p: Position, mark: int | None) -> int:
    """Mark-to-market PnL of the open position in ticks*lots (0 without a mark)."""
    if mark is None or p.net == 0:
        return 0
    return mark * p.net - p.cost


def add_to_bucket(b: Bucket | None, start: int, price: int, qty: int) -> Bucket:
    if b is None:
        return Bucket(start, 1, qty, price * qty, price, price, price, price, price)
    return Bucket(
        start,
        b.count + 1,
        b.qty + qty,
        b.notional + price * qty,
        b.sum_price + price,
        min(b.low, price),
        max(b.high, price),
        b.open,
        price,
    )


# --------------------------------------------------------------------------- state / delta


@dataclass
class ProjectionState:
    """What the projection of the next events needs: the whole L2 book (small: one entry
    per price level), the taking orders, and the records the events refer to (orders,
    positions of the clients that trade, buckets the trades fall in). Records missing
    from the dicts are new (flat position, empty bucket, unknown order)."""

    instrument: str
    last_seq: int = 0
    bids: SortedDict = field(default_factory=SortedDict)  # ticks -> lots
    asks: SortedDict = field(default_factory=SortedDict)
    taking: list = field(default_factory=list)  # order ids, in the order they became taking
    orders: dict = field(default_factory=dict)  # order_id -> OrderRec
    positions: dict = field(default_factory=dict)  # client_id -> Position
    buckets: dict = field(default_factory=dict)  # (resolution, start) -> Bucket
    last_trade: LastTrade | None = None

    def copy(self, *, book: bool = True, records: bool = True) -> "ProjectionState":
        return ProjectionState(
            instrument=self.instrument,
            last_seq=self.last_seq,
            bids=SortedDict(self.bids) if book else self.bids,
            asks=SortedDict(self.asks) if book else self.asks,
            taking=list(self.taking),
            # The dict is always new (project() compares it with the input's); the records only
            # when the caller keeps using the input's.
            orders={k: _copy_order(v) for k, v in self.orders.items()} if records else dict(self.orders),
            positions=dict(self.positions),  # Positions are replaced, never mutated
            buckets=dict(self.buckets),  # likewise
            last_trade=self.last_trade,
        )


def _copy_order(o: OrderRec) -> OrderRec:
    return OrderRec(*(getattr(o, f) for f in OrderRec.__struct_fields__))


@dataclass
class Fill:
    client_id: str
    order_id: str
    side: str
    role: str  # "maker" | "taker"
    trade: TradeExecuted


@dataclass
class ViewDelta:
    instrument: str
    prev_seq: int
    seq: int
    events: int = 0
    first_ts: int = 0
    last_ts: int = 0
    levels: dict = field(default_factory=dict)  # ("buy"|"sell", ticks) -> new total lots (0 = gone)
    old_levels: dict = field(default_factory=dict)  # the same keys -> total before the batch (0 = none)
    orders: dict = field(default_factory=dict)  # order_id -> final OrderRec of changed orders
    index_add: list = field(default_factory=list)  # (client_id, member, is_open) of new orders
    index_close: list = field(default_factory=list)  # (client_id, member) open -> closed
    positions: dict = field(default_factory=dict)  # client_id -> Position
    trades: list = field(default_factory=list)  # TradeExecuted, in seq order
    fills: list = field(default_factory=list)  # Fill
    buckets: dict = field(default_factory=dict)  # (resolution, start) -> Bucket
    old_buckets: dict = field(default_factory=dict)  # the same keys -> Bucket before the batch | None
    last_trade: LastTrade | None = None
    taking_changed: bool = False
    taking: list = field(default_factory=list)
    new_clients: set = field(default_factory=set)
    rendered: dict = field(default_factory=dict)  # memo of API renderings, shared by store and feed

    @property
    def empty(self) -> bool:
        return self.events == 0


def referenced_orders(events: Iterable[Event]) -> set[str]:
    """Order ids whose records the projection of these events needs."""
    ids: set[str] = set()
    for e in events:
        if isinstance(e, TradeExecuted):
            ids.add(e.maker_order_id)
            ids.add(e.taker_order_id)
        else:
            ids.add(e.order_id)
    return ids


def referenced_clients(events: Iterable[Event]) -> set[str]:
    """Clients whose positions the projection of these events needs."""
    out: set[str] = set()
    for e in events:
        if isinstance(e, TradeExecuted):
            out.add(e.maker_client_id)
            out.add(e.taker_client_id)
    return out


def referenced_buckets(events: Iterable[Event]) -> set[tuple[int, int]]:
    out: set[tuple[int, int]] = set()
    for e in events:
        if isinstance(e, TradeExecuted):
            for res in RESOLUTIONS:
                out.add((res, bucket_start(e.ts, res)))
    return out


# --------------------------------------------------------------------------- projection


def project(state: ProjectionState, events: Sequence[Event], *,
            consume_book: bool = False, consume_records: bool = False) -> tuple[ProjectionState, ViewDelta]:
    """Apply events (sorted by seq) to a copy of state. Events at or below state.last_seq
    are duplicates and skipped; the first new one must be last_seq + 1 (else GapError).

    consume_book=True: the new state takes over state.bids/asks and changes them in place
    instead of copying them first - a copy costs O(price levels) per batch, which grew to
    most of the projector's time as a long run's book widened. The caller must not use
    the input's book afterwards (the projector hands its cache over and keeps the result
    only when the batch commits).

    consume_records=True: the order records of the input are changed in place instead of copied
    (the projector's were just unpacked from Redis for this batch and are dropped after it; the
    copy was ~22 attribute reads per record read, issue 19)."""
    w = state.copy(book=not consume_book, records=not consume_records)
    d = ViewDelta(instrument=w.instrument, prev_seq=state.last_seq, seq=state.last_seq)
    before = {oid: o.status for oid, o in state.orders.items()}
    for e in events:
        if e.seq <= w.last_seq:
            continue
        if e.seq != w.last_seq + 1:
            raise GapError(w.instrument, w.last_seq, e.seq)
        if e.instrument != w.instrument:
            raise ValueError(f"event for {e.instrument} in the projection of {w.instrument}")
        _apply(w, d, e)
        w.last_seq = e.seq
        if d.events == 0:
            d.first_ts = e.ts
        d.events += 1
        d.last_ts = e.ts
        if w.taking:
            _settle_taking(w, d)
    d.seq = w.last_seq
    for oid in list(d.orders):
        o = w.orders[oid]
        d.orders[oid] = o
        was = before.get(oid)
        if oid not in state.orders:
            d.index_add.append((o.client_id, o.index_member, not o.closed))
        elif was not in CLOSED_STATUSES and o.closed:
            d.index_close.append((o.client_id, o.index_member))
    if d.taking_changed:
        d.taking = list(w.taking)
    return w, d


def _apply(w: ProjectionState, d: ViewDelta, e: Event) -> None:
    if isinstance(e, TradeExecuted):
        _trade(w, d, e)
    elif isinstance(e, OrderAccepted):
        _accepted(w, d, e)
    elif isinstance(e, OrderCancelled):
        _cancelled(w, d, e)
    elif isinstance(e, OrderRejected):
        _rejected(w, d, e)
    elif isinstance(e, OrderAmended):
        _amended(w, d, e)
    elif isinstance(e, OrderTriggered):
        _triggered(w, d, e)


def _level_add(w: ProjectionState, d: ViewDelta, side: str, price: int, lots: int) -> None:
    if lots == 0:
        return
    book = w.bids if side == "buy" else w.asks
    before = book.get(price, 0)
    d.old_levels.setdefault((side, price), before)
    total = before + lots
    if total > 0:
        book[price] = total
    else:
        # < 0 would mean the views disagree with the journal; never show a negative level.
        book.pop(price, None)
        total = 0
    d.levels[(side, price)] = total


def _crosses(w: ProjectionState, side: str, price: int) -> bool:
    if side == "buy":
        return bool(w.asks) and w.asks.peekitem(0)[0] <= price
    return bool(w.bids) and w.bids.peekitem(-1)[0] >= price


def _can_rest(o: OrderRec) -> bool:
    return o.order_type in LIMIT_TYPES and (o.tif == "GTC" or o.tif == "GTD") and o.price is not None


def _rest(w: ProjectionState, d: ViewDelta, o: OrderRec) -> None:
    o.book = BOOK_RESTING
    if o.display_quantity:
        o.shown = min(o.display_quantity, o.remaining)
    _level_add(w, d, o.side, o.price, o.visible)


def _activate(w: ProjectionState, d: ViewDelta, o: OrderRec) -> None:
    """An order enters matching: rest it now, or let it take until it no longer crosses."""
    if o.remaining <= 0:
        o.book = BOOK_OFF
        return
    if _can_rest(o) and not _crosses(w, o.side, o.price):
        _rest(w, d, o)
    else:
        o.book = BOOK_TAKING
        w.taking.append(o.order_id)
        d.taking_changed = True


def _leave_book(w: ProjectionState, d: ViewDelta, o: OrderRec) -> None:
    if o.book == BOOK_RESTING:
        _level_add(w, d, o.side, o.price, -o.visible)
    elif o.book == BOOK_TAKING:
        _drop_taking(w, d, o.order_id)
    o.book = BOOK_OFF
    o.shown = 0


def _drop_taking(w: ProjectionState, d: ViewDelta, order_id: str) -> None:
    if order_id in w.taking:
        w.taking.remove(order_id)
        d.taking_changed = True


def _settle_taking(w: ProjectionState, d: ViewDelta) -> None:
    for oid in list(w.taking):
        o = w.orders.get(oid)
        if o is None or o.closed or o.remaining <= 0 or o.book != BOOK_TAKING:
            _drop_taking(w, d, oid)
            if o is not None and o.book == BOOK_TAKING:
                o.book = BOOK_OFF
            continue
        if _can_rest(o) and not _crosses(w, o.side, o.price):
            _drop_taking(w, d, oid)
            _rest(w, d, o)
            d.orders[oid] = o


def _touch(d: ViewDelta, o: OrderRec, e: Event) -> None:
    o.updated_ts = e.ts
    o.seq = e.seq
    d.orders[o.order_id] = o


def _accepted(w: ProjectionState, d: ViewDelta, e: OrderAccepted) -> None:
    if e.order_id in w.orders:
        return  # the journal never accepts an id twice; ignore rather than corrupt the book
    stop = e.order_type.value in STOP_TYPES
    o = OrderRec(
        order_id=e.order_id,
        client_id=e.client_id,
        instrument=e.instrument,
        side=e.side.value,
        order_type=e.order_type.value,
        price=e.price,
        quantity=e.quantity,
        filled_quantity=0,
        cost=0,
        status="pending" if stop else "open",
        tif=e.tif.value,
        post_only=e.post_only,
        created_ts=e.ts,
        updated_ts=e.ts,
        seq=e.seq,
        remaining=e.quantity,
        book=BOOK_OFF,
        stop_price=e.stop_price,
        display_quantity=e.display_quantity,
        expire_ts=e.expire_ts,
        client_order_id=e.client_order_id,
    )
    w.orders[o.order_id] = o
    d.orders[o.order_id] = o
    d.new_clients.add(o.client_id)
    if not stop:
        _activate(w, d, o)


def _rejected(w: ProjectionState, d: ViewDelta, e: OrderRejected) -> None:
    o = w.orders.get(e.order_id)
    if o is None:
        o = OrderRec(
            order_id=e.order_id,
            client_id=e.client_id,
            instrument=e.instrument,
            side=e.side.value,
            order_type=e.order_type.value,
            price=e.price,
            quantity=e.quantity,
            filled_quantity=0,
            cost=0,
            status="rejected",
            tif=e.tif.value,
            post_only=False,
            created_ts=e.ts,
            updated_ts=e.ts,
            seq=e.seq,
            remaining=0,
            reject_reason=e.reason.value,
            client_order_id=e.client_order_id,
        )
        w.orders[o.order_id] = o
        d.new_clients.add(o.client_id)
    else:
        _leave_book(w, d, o)
        o.status = "rejected"
        o.remaining = 0
        o.reject_reason = e.reason.value
    _touch(d, o, e)


def _fill(w: ProjectionState, d: ViewDelta, o: OrderRec, t: TradeExecuted, remaining_after: int) -> None:
    o.filled_quantity += t.quantity
    o.cost += t.price * t.quantity
    if o.book == BOOK_RESTING:
        if o.display_quantity:
            # only a resting iceberg's shown part trades; used up, a new one is shown
            shown = o.shown - t.quantity
            if shown <= 0 and remaining_after > 0:
                shown = min(o.display_quantity, remaining_after)
            shown = max(shown, 0) if remaining_after > 0 else 0
            _level_add(w, d, o.side, o.price, shown - o.shown)
            o.shown = shown
        else:
            _level_add(w, d, o.side, o.price, remaining_after - o.remaining)
    o.remaining = remaining_after
    if remaining_after <= 0:
        o.remaining = 0
        o.status = "filled"
        if o.book == BOOK_TAKING:
            _drop_taking(w, d, o.order_id)
        o.book = BOOK_OFF
    else:
        o.status = "partially_filled"
    _touch(d, o, t)


def _trade(w: ProjectionState, d: ViewDelta, t: TradeExecuted) -> None:
    taker_side = t.taker_side.value
    maker_side = "sell" if taker_side == "buy" else "buy"
    maker = w.orders.get(t.maker_order_id)
    if maker is not None:
        _fill(w, d, maker, t, t.maker_remaining)
    else:
        # An order we never saw (views older than the journal they claim): keep the book right.
        _level_add(w, d, maker_side, t.price, -t.quantity)
    taker = w.orders.get(t.taker_order_id)
    if taker is not None:
        _fill(w, d, taker, t, t.taker_remaining)

    buyer = t.taker_client_id if taker_side == "buy" else t.maker_client_id
    seller = t.maker_client_id if taker_side == "buy" else t.taker_client_id
    for client, signed in ((buyer, t.quantity), (seller, -t.quantity)):
        pos = w.positions.get(client) or Position()
        pos = apply_fill(pos, signed, t.price, t.ts)
        w.positions[client] = pos
        d.positions[client] = pos

    d.trades.append(t)
    d.fills.append(Fill(t.maker_client_id, t.maker_order_id, maker_side, "maker", t))
    d.fills.append(Fill(t.taker_client_id, t.taker_order_id, taker_side, "taker", t))
    for res in RESOLUTIONS:
        key = (res, bucket_start(t.ts, res))
        old = w.buckets.get(key)
        if key not in d.old_buckets:
            d.old_buckets[key] = old
        b = add_to_bucket(old, key[1], t.price, t.quantity)
        w.buckets[key] = b
        d.buckets[key] = b
    w.last_trade = LastTrade(t.price, t.quantity, t.ts, t.seq, taker_side)
    d.last_trade = w.last_trade


def _cancelled(w: ProjectionState, d: ViewDelta, e: OrderCancelled) -> None:
    o = w.orders.get(e.order_id)
    if o is None or o.closed:
        return
    _leave_book(w, d, o)
    o.remaining = 0
    o.status = "cancelled"
    o.cancel_reason = e.reason.value
    _touch(d, o, e)


def _amended(w: ProjectionState, d: ViewDelta, e: OrderAmended) -> None:
    o = w.orders.get(e.order_id)
    if o is None or o.closed:
        return
    if e.priority_kept and o.book == BOOK_RESTING:
        # a decrease in place: an iceberg loses hidden quantity first
        old_visible = o.visible
        o.quantity = e.quantity
        o.remaining = e.remaining
        if o.display_quantity:
            o.shown = min(o.shown, e.remaining)
        _level_add(w, d, o.side, o.price, o.visible - old_visible)
        _touch(d, o, e)
        return
    was_in_book = o.book != BOOK_OFF
    _leave_book(w, d, o)
    if e.price is not None:
        o.price = e.price
    o.quantity = e.quantity
    o.remaining = e.remaining
    if was_in_book and o.status != "pending":
        _activate(w, d, o)
    _touch(d, o, e)


def _triggered(w: ProjectionState, d: ViewDelta, e: OrderTriggered) -> None:
    o = w.orders.get(e.order_id)
    if o is None or o.status != "pending":
        return
    o.status = "open"
    _activate(w, d, o)
    _touch(d, o, e)
