"""A small price-time matching simulator that writes journal events, for the projector's
tests and the projection benchmark (it is not the engine; it only has to produce event
sequences of the same shape: accepted -> trades -> remainder cancelled/rested, rejects,
cancels, amends, stop triggers, self-trade prevention).

`Simulator.levels()` is its book in L2 form, to compare with the projected book.
"""

from __future__ import annotations

import random
from collections import deque

from contracts.enums import CancelReason, OrderType, RejectReason, Side, StpMode, TimeInForce
from contracts.messages import (
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderRejected,
    OrderTriggered,
    TradeExecuted,
)


class _Order:
    __slots__ = ("id", "client", "side", "type", "price", "qty", "remaining", "tif", "stop_price")

    def __init__(self, id, client, side, type_, price, qty, tif, stop_price=None):
        self.id = id
        self.client = client
        self.side = side
        self.type = type_
        self.price = price
        self.qty = qty
        self.remaining = qty
        self.tif = tif
        self.stop_price = stop_price


class Simulator:
    def __init__(
        self,
        instrument: str = "BTC-USD",
        seed: int = 1,
        clients: tuple[str, ...] = ("alice", "bob", "carol", "dave"),
        mid: int = 7_000_000,  # ticks
        start_ts: int = 1_700_000_000_000_000_000,
        max_step_ns: int = 2_000_000_000,
        clock=None,  # e.g. time.time_ns: stamp events with the wall clock (benchmarks)
    ):
        self.instrument = instrument
        self.rng = random.Random(seed)
        self.clients = clients
        self.mid = mid
        self.ts = start_ts
        self.max_step_ns = max_step_ns
        self.clock = clock
        self.seq = 0
        self.n = 0
        self.bids: dict[int, deque] = {}
        self.asks: dict[int, deque] = {}
        self.orders: dict[str, _Order] = {}  # resting or pending stop
        self.stops: list[_Order] = []
        self.last_price: int | None = None
        self.events: list = []

    # ------------------------------------------------------------------ helpers

    def _tick(self) -> int:
        if self.clock is not None:
            self.ts = max(self.ts + 1, self.clock())
        else:
            self.ts += self.rng.randint(1, self.max_step_ns)
        return self.ts

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    def _emit(self, e) -> None:
        self.events.append(e)

    def levels(self) -> tuple[dict[int, int], dict[int, int]]:
        bids = {p: sum(o.remaining for o in q) for p, q in self.bids.items() if q}
        asks = {p: sum(o.remaining for o in q) for p, q in self.asks.items() if q}
        return bids, asks

    def _book(self, side: str):
        return self.bids if side == "buy" else self.asks

    def _best(self, side: str) -> int | None:
        book = self._book(side)
        if not book:
            return None
        return max(book) if side == "buy" else min(book)

    def _crosses(self, side: str, price: int | None) -> bool:
        opp = "sell" if side == "buy" else "buy"
        best = self._best(opp)
        if best is None:
            return False
        if price is None:
            return True
        return best <= price if side == "buy" else best >= price

    def _rest(self, o: _Order) -> None:
        self._book(o.side).setdefault(o.price, deque()).append(o)
        self.orders[o.id] = o

    def _unrest(self, o: _Order) -> None:
        book = self._book(o.side)
        q = book.get(o.price)
        if q is not None and o in q:
            q.remove(o)
            if not q:
                del book[o.price]
        self.orders.pop(o.id, None)

    # ------------------------------------------------------------------ commands

    def place(self, client, side, type_="limit", price=None, qty=1, tif="GTC", post_only=False, stop_price=None):
        """Returns the events of one command."""
        start = len(self.events)
        ts = self._tick()
        self.n += 1
        oid = f"{self.instrument}-o{self.n}"
        o = _Order(oid, client, side, type_, price, qty, tif, stop_price)
        common = dict(instrument=self.instrument, ts=ts, order_id=oid, client_id=client, side=Side(side),
                      order_type=OrderType(type_), price=price, quantity=qty, tif=TimeInForce(tif))
        if type_ in ("stop_limit", "stop_market"):
            self._emit(OrderAccepted(seq=self._next(), post_only=False, stp=StpMode.CANCEL_NEWEST,
                                     stop_price=stop_price, **common))
            self.stops.append(o)
            self.orders[oid] = o
            return self.events[start:]
        if post_only and self._crosses(side, price):
            self._emit(OrderRejected(seq=self._next(), reason=RejectReason.POST_ONLY_WOULD_CROSS, **common))
            return self.events[start:]
        if tif == "FOK" and self._available(side, price, client) < qty:
            self._emit(OrderRejected(seq=self._next(), reason=RejectReason.FOK_UNFILLABLE, **common))
            return self.events[start:]
        self._emit(OrderAccepted(seq=self._next(), post_only=post_only, stp=StpMode.CANCEL_NEWEST, **common))
        self._match_and_finish(o, ts)
        self._run_stops(ts)
        return self.events[start:]

    def _available(self, side, price, client) -> int:
        opp = self._book("sell" if side == "buy" else "buy")
        total = 0
        for p in sorted(opp, reverse=(side == "sell")):
            if price is not None and (p > price if side == "buy" else p < price):
                break
            for m in opp[p]:
                if m.client == client:
                    return total  # self-trade prevention would stop here
                total += m.remaining
        return total

    def _match_and_finish(self, o: _Order, ts: int) -> None:
        opp_side = "sell" if o.side == "buy" else "buy"
        opp = self._book(opp_side)
        while o.remaining > 0 and self._crosses(o.side, o.price if o.type in ("limit", "stop_limit") else None):
            best = self._best(opp_side)
            maker = opp[best][0]
            if maker.client == o.client:
                # STP cancel_newest: the incoming remainder is cancelled, nothing trades.
                self._emit(OrderCancelled(instrument=self.instrument, seq=self._next(), ts=ts, order_id=o.id,
                                          client_id=o.client, reason=CancelReason.SELF_TRADE,
                                          cancelled_quantity=o.remaining, filled_quantity=o.qty - o.remaining))
                o.remaining = 0
                return
            q = min(o.remaining, maker.remaining)
            maker.remaining -= q
            o.remaining -= q
            self.n += 1
            self._emit(TradeExecuted(instrument=self.instrument, seq=self._next(), ts=ts,
                                     trade_id=f"{self.instrument}-t{self.n}", price=best, quantity=q,
                                     taker_side=Side(o.side), maker_order_id=maker.id, maker_client_id=maker.client,
                                     taker_order_id=o.id, taker_client_id=o.client,
                                     maker_remaining=maker.remaining, taker_remaining=o.remaining))
            self.last_price = best
            if maker.remaining == 0:
                self._unrest(maker)
        if o.remaining > 0:
            if o.type in ("market", "stop_market"):
                reason = CancelReason.MARKET_REMAINDER
            elif o.tif in ("IOC", "FOK"):
                reason = CancelReason.IOC_REMAINDER
            else:
                self._rest(o)
                return
            self._emit(OrderCancelled(instrument=self.instrument, seq=self._next(), ts=ts, order_id=o.id,
                                      client_id=o.client, reason=reason, cancelled_quantity=o.remaining,
                                      filled_quantity=o.qty - o.remaining))
            o.remaining = 0

    def _run_stops(self, ts: int) -> None:
        fired = True
        while fired and self.last_price is not None:
            fired = False
            for s in list(self.stops):
                hit = self.last_price >= s.stop_price if s.side == "buy" else self.last_price <= s.stop_price
                if hit:
                    self.stops.remove(s)
                    self.orders.pop(s.id, None)
                    self._emit(OrderTriggered(instrument=self.instrument, seq=self._next(), ts=ts, order_id=s.id,
                                              client_id=s.client, last_price=self.last_price))
                    self._match_and_finish(s, ts)
                    fired = True
                    break

    def cancel(self, order_id: str):
        start = len(self.events)
        o = self.orders.get(order_id)
        if o is None:
            return []
        ts = self._tick()
        if o in self.stops:
            self.stops.remove(o)
            self.orders.pop(o.id, None)
        else:
            self._unrest(o)
        self._emit(OrderCancelled(instrument=self.instrument, seq=self._next(), ts=ts, order_id=o.id,
                                  client_id=o.client, reason=CancelReason.USER, cancelled_quantity=o.remaining,
                                  filled_quantity=o.qty - o.remaining))
        return self.events[start:]

    def amend(self, order_id: str, price: int | None = None, qty: int | None = None):
        """New total quantity and/or price of a resting order; a price change or an
        increase loses priority and may cross (then it matches as a taker)."""
        start = len(self.events)
        o = self.orders.get(order_id)
        if o is None or o in self.stops:
            return []
        filled = o.qty - o.remaining
        new_qty = o.qty if qty is None else qty
        if new_qty <= filled:
            return []
        ts = self._tick()
        keep = (price is None or price == o.price) and new_qty <= o.qty
        new_remaining = new_qty - filled
        if keep:
            o.qty, o.remaining = new_qty, new_remaining
            self._emit(OrderAmended(instrument=self.instrument, seq=self._next(), ts=ts, order_id=o.id,
                                    client_id=o.client, price=o.price, quantity=new_qty, remaining=new_remaining,
                                    priority_kept=True))
            return self.events[start:]
        self._unrest(o)
        o.price = o.price if price is None else price
        o.qty, o.remaining = new_qty, new_remaining
        self._emit(OrderAmended(instrument=self.instrument, seq=self._next(), ts=ts, order_id=o.id,
                                client_id=o.client, price=o.price, quantity=new_qty, remaining=new_remaining,
                                priority_kept=False))
        self._match_and_finish(o, ts)
        self._run_stops(ts)
        return self.events[start:]

    # ------------------------------------------------------------------ random flow

    def random_command(self):
        r = self.rng.random()
        client = self.rng.choice(self.clients)
        side = self.rng.choice(("buy", "sell"))
        off = self.rng.randint(-20, 20)
        price = max(1, self.mid + (off if side == "buy" else -off) * 100 - (300 if side == "buy" else -300))
        qty = self.rng.randint(1, 20) * 1000
        if r < 0.45:
            return self.place(client, side, "limit", price, qty)
        if r < 0.55 and self.orders:
            return self.cancel(self.rng.choice(list(self.orders)))
        if r < 0.62:
            return self.place(client, side, "market", None, qty)
        if r < 0.68:
            return self.place(client, side, "limit", price, qty, tif="IOC")
        if r < 0.72:
            return self.place(client, side, "limit", price, qty, tif="FOK")
        if r < 0.76:
            return self.place(client, side, "limit", price, qty, post_only=True)
        if r < 0.82 and self.orders:
            oid = self.rng.choice(list(self.orders))
            o = self.orders[oid]
            if self.rng.random() < 0.5:
                return self.amend(oid, qty=max(o.qty - o.remaining + 1, o.qty // 2))
            return self.amend(oid, price=max(1, (o.price or self.mid) + self.rng.randint(-8, 8) * 100))
        if r < 0.86 and self.last_price is not None:
            stop = self.last_price + (200 if side == "buy" else -200)
            if self.rng.random() < 0.5:
                return self.place(client, side, "stop_market", None, qty, stop_price=stop)
            lim = stop + (500 if side == "buy" else -500)
            return self.place(client, side, "stop_limit", lim, qty, stop_price=stop)
        # drift the mid so the book moves
        self.mid += self.rng.randint(-3, 3) * 100
        return self.place(client, side, "limit", price, qty)

    def run(self, commands: int) -> list:
        start = len(self.events)
        for _ in range(commands):
            self.random_command()
        return self.events[start:]
