"""A deliberately naive reference matcher for the property tests.

Written separately from engine/ and sharing nothing with it but contracts/: one flat list
of resting orders, one list of pending stops, linear scans and re-sorting at every step.
Slow and obviously correct is the point; the engine must produce exactly the same events,
results and book for any command sequence.
"""

from __future__ import annotations

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
from contracts.messages import (
    AmendOrder,
    CancelAll,
    CancelOrder,
    ExpireOrders,
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderRejected,
    OrderState,
    OrderTriggered,
    PlaceOrder,
    Result,
    TradeExecuted,
)

BIG = (1 << 62) - 1


class Rec:
    """One order as the reference sees it."""

    def __init__(self, cmd: PlaceOrder, seq: int):
        self.order_id = cmd.order_id
        self.client_id = cmd.client_id
        self.side = cmd.side
        self.order_type = cmd.order_type
        self.price = cmd.price
        self.quantity = cmd.quantity
        self.filled = 0
        self.tif = cmd.tif
        self.post_only = cmd.post_only
        self.stp = cmd.stp
        self.stop_price = cmd.stop_price
        self.created_ts = cmd.ts
        self.updated_ts = cmd.ts
        self.accept_seq = seq
        self.time = seq  # time priority: seq of the event that put it where it is
        self.cost = 0
        self.status = OrderStatus.PENDING if cmd.stop_price is not None else OrderStatus.OPEN
        self.reject_reason = None
        self.closed = False  # cancelled / rejected: no open quantity whatever filled says
        self.display_raw = cmd.display_quantity
        self.display = cmd.display_quantity or 0  # iceberg when > 0
        self.shown = 0  # iceberg at rest: the part the book shows
        self.expire_ts = cmd.expire_ts

    def visible(self) -> int:
        """What the public book shows of it (rule 1) and what a taker can hit at once."""
        return self.shown if self.display else self.open_qty()

    def open_qty(self) -> int:
        return 0 if self.closed else self.quantity - self.filled

    def is_market(self) -> bool:
        return self.order_type in (OrderType.MARKET, OrderType.STOP_MARKET)

    def state(self, instrument: str) -> OrderState:
        status = self.status
        if status == OrderStatus.OPEN and self.filled > 0:
            status = OrderStatus.PARTIALLY_FILLED
        return OrderState(
            order_id=self.order_id,
            client_id=self.client_id,
            instrument=instrument,
            side=self.side,
            order_type=self.order_type,
            price=self.price,
            quantity=self.quantity,
            filled_quantity=self.filled,
            status=status,
            tif=self.tif,
            post_only=self.post_only,
            created_ts=self.created_ts,
            updated_ts=self.updated_ts,
            reject_reason=self.reject_reason,
            stop_price=self.stop_price,
            cost=self.cost,
            display_quantity=self.display_raw,
            shown=self.shown if self.display and self.open_qty() else 0,
            expire_ts=self.expire_ts,
        )


def _is_int(v) -> bool:
    return type(v) is int


class ReferenceBook:
    def __init__(self, instrument: str):
        self.instrument = instrument
        self.seq = 0
        self.last_price = None
        self.resting: list[Rec] = []
        self.stops: list[Rec] = []  # pending, in acceptance order

    # ---------------------------------------------------------------- helpers

    def _begin(self, ts: int) -> None:
        self.ts = ts
        self.events: list = []
        self.touched: list[str] = []
        self.touched_recs: dict[str, Rec] = {}

    def _emit(self, cls, **fields):
        self.seq += 1
        ev = cls(instrument=self.instrument, seq=self.seq, ts=self.ts, **fields)
        self.events.append(ev)
        return ev

    def _touch(self, rec: Rec) -> None:
        rec.updated_ts = self.ts
        if rec.order_id not in self.touched_recs:
            self.touched.append(rec.order_id)
        self.touched_recs[rec.order_id] = rec

    def _result(self, code) -> Result:
        return Result(
            code=code,
            events=self.events,
            orders=[self.touched_recs[i].state(self.instrument) for i in self.touched],
        )

    def live(self) -> list[Rec]:
        return self.resting + self.stops

    def find(self, order_id):
        for r in self.live():
            if r.order_id == order_id:
                return r
        return None

    def bids(self) -> list[Rec]:
        return sorted((r for r in self.resting if r.side == Side.BUY), key=lambda r: (-r.price, r.time))

    def asks(self) -> list[Rec]:
        return sorted((r for r in self.resting if r.side == Side.SELL), key=lambda r: (r.price, r.time))

    def opposite(self, side) -> list[Rec]:
        return self.asks() if side == Side.BUY else self.bids()

    @staticmethod
    def acceptable(side, limit, maker_price) -> bool:
        if limit is None:
            return True
        return maker_price <= limit if side == Side.BUY else maker_price >= limit

    def would_cross(self, side, price) -> bool:
        opp = self.opposite(side)
        return bool(opp) and self.acceptable(side, price, opp[0].price)

    def fok_fillable(self, side, price, qty, client_id, stp) -> bool:
        total = 0
        for m in self.opposite(side):
            if not self.acceptable(side, price, m.price):
                break
            if m.client_id == client_id:
                if stp == StpMode.CANCEL_OLDEST:
                    continue
                break
            total += m.open_qty()
            if total >= qty:
                return True
        return total >= qty

    def _cancel(self, rec: Rec, reason) -> None:
        self._emit(
            OrderCancelled,
            order_id=rec.order_id,
            client_id=rec.client_id,
            reason=reason,
            cancelled_quantity=rec.open_qty(),
            filled_quantity=rec.filled,
        )
        if rec in self.resting:
            self.resting.remove(rec)
        if rec in self.stops:
            self.stops.remove(rec)
        rec.closed = True
        rec.status = OrderStatus.CANCELLED
        self._touch(rec)

    def _reject_event(self, rec_or_cmd, reason) -> None:
        self._emit(
            OrderRejected,
            order_id=rec_or_cmd.order_id,
            client_id=rec_or_cmd.client_id,
            side=rec_or_cmd.side,
            order_type=rec_or_cmd.order_type,
            price=rec_or_cmd.price,
            quantity=rec_or_cmd.quantity,
            tif=rec_or_cmd.tif,
            reason=reason,
        )

    # ---------------------------------------------------------------- processing

    def incoming(self, t: Rec) -> None:
        """Match an incoming order, then cancel or rest its remainder."""
        while t.open_qty() > 0:
            opp = self.opposite(t.side)
            if not opp or not self.acceptable(t.side, t.price, opp[0].price):
                break
            m = opp[0]
            if m.client_id == t.client_id:
                if t.stp == StpMode.CANCEL_NEWEST:
                    self._cancel(t, CancelReason.SELF_TRADE)
                    return
                if t.stp == StpMode.CANCEL_OLDEST:
                    self._cancel(m, CancelReason.SELF_TRADE)
                    continue
                self._cancel(m, CancelReason.SELF_TRADE)
                self._cancel(t, CancelReason.SELF_TRADE)
                return
            qty = min(m.visible(), t.open_qty())
            m.filled += qty
            t.filled += qty
            m.cost += qty * m.price
            t.cost += qty * m.price
            self._emit(
                TradeExecuted,
                trade_id=f"{self.instrument}:{self.seq + 1}",
                price=m.price,
                quantity=qty,
                taker_side=t.side,
                maker_order_id=m.order_id,
                maker_client_id=m.client_id,
                taker_order_id=t.order_id,
                taker_client_id=t.client_id,
                maker_remaining=m.open_qty(),
                taker_remaining=t.open_qty(),
            )
            self.last_price = m.price
            self._touch(m)
            if m.open_qty() == 0:
                m.status = OrderStatus.FILLED
                self.resting.remove(m)
            elif m.display:
                m.shown -= qty
                if m.shown == 0:  # rule 2: a fresh shown part at the back of the level
                    m.shown = min(m.display, m.open_qty())
                    m.time = self.seq
        self._touch(t)
        if t.open_qty() == 0:
            t.status = OrderStatus.FILLED
        elif t.is_market():
            self._cancel(t, CancelReason.MARKET_REMAINDER)
        elif t.tif == TimeInForce.IOC:
            self._cancel(t, CancelReason.IOC_REMAINDER)
        else:
            assert t.tif in (TimeInForce.GTC, TimeInForce.GTD), "a FOK was checked to be fillable"
            if t.display:
                t.shown = min(t.display, t.open_qty())
            self.resting.append(t)

    def triggerable(self, s: Rec) -> bool:
        if self.last_price is None:
            return False
        if s.side == Side.BUY:
            return self.last_price >= s.stop_price
        return self.last_price <= s.stop_price

    def cascade(self) -> None:
        while True:
            ready = [s for s in self.stops if self.triggerable(s)]
            if not ready:
                return
            s = min(ready, key=lambda r: r.accept_seq)
            self.stops.remove(s)
            self._emit(OrderTriggered, order_id=s.order_id, client_id=s.client_id, last_price=self.last_price)
            s.status = OrderStatus.OPEN
            s.time = self.seq
            self._touch(s)
            if s.tif == TimeInForce.FOK and not self.fok_fillable(
                s.side, s.price, s.quantity, s.client_id, s.stp
            ):
                self._reject_event(s, RejectReason.FOK_UNFILLABLE)
                s.closed = True
                s.status = OrderStatus.REJECTED
                s.reject_reason = RejectReason.FOK_UNFILLABLE.value
                continue
            self.incoming(s)

    # ---------------------------------------------------------------- commands

    def execute(self, cmd) -> Result:
        if isinstance(cmd, PlaceOrder):
            return self.place(cmd)
        if isinstance(cmd, CancelOrder):
            return self.cancel(cmd)
        if isinstance(cmd, AmendOrder):
            return self.amend(cmd)
        if isinstance(cmd, CancelAll):
            return self.cancel_all(cmd)
        if isinstance(cmd, ExpireOrders):
            return self.expire(cmd)
        raise TypeError(cmd)

    def valid(self, cmd: PlaceOrder) -> bool:
        def positive(v):
            return _is_int(v) and 0 < v <= BIG

        t = cmd.order_type
        if t == OrderType.LIMIT:
            shape = positive(cmd.price) and cmd.stop_price is None
        elif t == OrderType.MARKET:
            shape = cmd.price is None and cmd.stop_price is None
        elif t == OrderType.STOP_LIMIT:
            shape = positive(cmd.price) and positive(cmd.stop_price)
        elif t == OrderType.STOP_MARKET:
            shape = cmd.price is None and positive(cmd.stop_price)
        else:
            shape = False
        resting_tif = cmd.tif in (TimeInForce.GTC, TimeInForce.GTD)
        if cmd.post_only and not (t == OrderType.LIMIT and resting_tif):
            return False
        d = cmd.display_quantity
        if d is not None and not (
            _is_int(d) and _is_int(cmd.quantity) and 0 < d < cmd.quantity and t == OrderType.LIMIT and resting_tif
        ):
            return False
        if cmd.tif == TimeInForce.GTD:
            e = cmd.expire_ts
            if not (_is_int(e) and cmd.ts < e <= BIG and t != OrderType.MARKET):
                return False
        elif cmd.expire_ts is not None:
            return False
        return (
            shape
            and positive(cmd.quantity)
            and type(cmd.post_only) is bool
            and isinstance(cmd.side, Side)
            and isinstance(cmd.tif, TimeInForce)
            and isinstance(cmd.stp, StpMode)
            and cmd.instrument == self.instrument
        )

    def place(self, cmd: PlaceOrder) -> Result:
        self._begin(cmd.ts)
        if self.find(cmd.order_id) is not None:
            return Result(code=ResultCode.DUPLICATE_ORDER_ID, events=[], orders=[])
        reason = None
        if not self.valid(cmd):
            reason = RejectReason.INVALID_ORDER
        elif cmd.post_only and self.would_cross(cmd.side, cmd.price):
            reason = RejectReason.POST_ONLY_WOULD_CROSS
        elif (
            cmd.tif == TimeInForce.FOK
            and cmd.order_type in (OrderType.LIMIT, OrderType.MARKET)
            and not self.fok_fillable(cmd.side, cmd.price, cmd.quantity, cmd.client_id, cmd.stp)
        ):
            reason = RejectReason.FOK_UNFILLABLE
        if reason is not None:
            self._reject_event(cmd, reason)
            rec = Rec(cmd, self.seq)
            rec.closed = True
            rec.status = OrderStatus.REJECTED
            rec.reject_reason = reason.value
            self._touch(rec)
            return self._result(ResultCode.REJECTED)
        self._emit(
            OrderAccepted,
            order_id=cmd.order_id,
            client_id=cmd.client_id,
            side=cmd.side,
            order_type=cmd.order_type,
            price=cmd.price,
            quantity=cmd.quantity,
            tif=cmd.tif,
            post_only=cmd.post_only,
            stp=cmd.stp,
            stop_price=cmd.stop_price,
            display_quantity=cmd.display_quantity,
            expire_ts=cmd.expire_ts,
        )
        rec = Rec(cmd, self.seq)
        self._touch(rec)
        if cmd.stop_price is not None:
            self.stops.append(rec)
        else:
            self.incoming(rec)
        self.cascade()
        return self._result(ResultCode.OK)

    def cancel(self, cmd: CancelOrder) -> Result:
        self._begin(cmd.ts)
        rec = self.find(cmd.order_id) if cmd.instrument == self.instrument else None
        if rec is None:
            return Result(code=ResultCode.UNKNOWN_ORDER, events=[], orders=[])
        if rec.client_id != cmd.client_id:
            return Result(code=ResultCode.NOT_OWNER, events=[], orders=[])
        self._cancel(rec, cmd.reason)
        return self._result(ResultCode.OK)

    def cancel_all(self, cmd: CancelAll) -> Result:
        self._begin(cmd.ts)
        if cmd.instrument != self.instrument:
            return Result(code=ResultCode.OK, events=[], orders=[])
        mine = [
            r
            for r in self.live()
            if r.client_id == cmd.client_id and (cmd.side is None or r.side == cmd.side)
        ]
        for r in sorted(mine, key=lambda r: r.accept_seq):
            self._cancel(r, cmd.reason)
        return self._result(ResultCode.OK)

    def expire(self, cmd: ExpireOrders) -> Result:
        self._begin(cmd.ts)
        if cmd.instrument != self.instrument:
            return Result(code=ResultCode.OK, events=[], orders=[])
        due = [r for r in self.live() if r.expire_ts is not None and r.expire_ts <= cmd.ts]
        for r in sorted(due, key=lambda r: (r.expire_ts, r.accept_seq)):
            self._cancel(r, CancelReason.EXPIRED)
        return self._result(ResultCode.OK)

    def next_expiry(self):
        times = [r.expire_ts for r in self.live() if r.expire_ts is not None]
        return min(times) if times else None

    def amend(self, cmd: AmendOrder) -> Result:
        self._begin(cmd.ts)
        rec = self.find(cmd.order_id) if cmd.instrument == self.instrument else None
        if rec is None:
            return Result(code=ResultCode.UNKNOWN_ORDER, events=[], orders=[])
        if rec.client_id != cmd.client_id:
            return Result(code=ResultCode.NOT_OWNER, events=[], orders=[])
        if rec in self.stops:
            return Result(code=ResultCode.INVALID_AMEND, events=[], orders=[])
        qty = rec.quantity if cmd.quantity is None else cmd.quantity
        price = rec.price if cmd.price is None else cmd.price
        if (
            not _is_int(qty)
            or not _is_int(price)
            or not 0 < price <= BIG
            or qty > BIG
            or qty <= rec.filled
            or (qty == rec.quantity and price == rec.price)
        ):
            return Result(code=ResultCode.INVALID_AMEND, events=[], orders=[])
        if price == rec.price and qty < rec.quantity:
            rec.quantity = qty
            if rec.display:  # rule 4: the hidden part goes first
                rec.shown = min(rec.shown, rec.open_qty())
            self._emit(
                OrderAmended,
                order_id=rec.order_id,
                client_id=rec.client_id,
                price=price,
                quantity=qty,
                remaining=rec.open_qty(),
                priority_kept=True,
            )
            self._touch(rec)
            return self._result(ResultCode.OK)
        if rec.post_only and self.would_cross(rec.side, price):
            return Result(code=ResultCode.AMEND_WOULD_CROSS, events=[], orders=[])
        self.resting.remove(rec)
        rec.quantity = qty
        rec.price = price
        self._emit(
            OrderAmended,
            order_id=rec.order_id,
            client_id=rec.client_id,
            price=price,
            quantity=qty,
            remaining=rec.open_qty(),
            priority_kept=False,
        )
        rec.time = self.seq
        self._touch(rec)
        self.incoming(rec)
        self.cascade()
        return self._result(ResultCode.OK)

    # ---------------------------------------------------------------- views

    def l3(self) -> list[OrderState]:
        return [r.state(self.instrument) for r in self.bids() + self.asks()]

    def pending_stops(self) -> list[OrderState]:
        return [r.state(self.instrument) for r in self.stops]

    def l2(self, levels: int):
        out = []
        for side in (self.bids(), self.asks()):
            rows: list[tuple[int, int]] = []
            for r in side:
                if rows and rows[-1][0] == r.price:
                    rows[-1] = (r.price, rows[-1][1] + r.visible())
                else:
                    rows.append((r.price, r.visible()))
            out.append(rows[: max(levels, 0)])
        return out[0], out[1]

    def best_bid(self):
        b = self.bids()
        return b[0].price if b else None

    def best_ask(self):
        a = self.asks()
        return a[0].price if a else None

    def open_orders(self, client_id=None) -> list[OrderState]:
        recs = [r for r in self.live() if client_id is None or r.client_id == client_id]
        return [r.state(self.instrument) for r in sorted(recs, key=lambda r: r.accept_seq)]
