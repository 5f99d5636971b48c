"""A seeded random order flow driven through the real engine (engine.OrderBook).

The projection tests and the projection benchmark feed the projector exactly the events the
engine emits (accepted -> trades -> remainder cancelled/rested, rejects, cancels, amends, stop
triggers, self-trade prevention), and compare the projected views with the engine's own book
(`levels()`, `resting()`) after every command. Time and ids come from here, as the command
service gives them to the engine.
"""

from __future__ import annotations

import random

from contracts.enums import OrderStatus, OrderType, Side, TimeInForce
from contracts.messages import (
    AmendOrder,
    CancelOrder,
    OrderState,
    PlaceOrder,
    TradeExecuted,
)
from engine.book import OrderBook

_OPEN = (OrderStatus.OPEN, OrderStatus.PENDING)


class OrderFlow:
    def __init__(
        self,
        instrument: str = "BTC-USD",
        seed: int = 1,
        clients: tuple[str, ...] = ("alice", "bob", "carol", "dave"),
        mid: int = 7_000_000,  # ticks
        start_ts: int = 1_700_000_000_000_000_000,
        max_step_ns: int = 2_000_000_000,
        clock=None,  # e.g. time.time_ns: stamp commands with the wall clock (benchmarks)
    ):
        self.instrument = instrument
        self.book = OrderBook(instrument)
        self.rng = random.Random(seed)
        self.clients = clients
        self.mid = mid
        self.ts = start_ts
        self.max_step_ns = max_step_ns
        self.clock = clock
        self.n = 0
        self.orders: dict[str, OrderState] = {}  # open: resting or pending stop
        self.last_price: int | None = None
        self.events: list = []

    @property
    def seq(self) -> int:
        return self.events[-1].seq if self.events else 0

    def _tick(self) -> int:
        if self.clock is not None:
            self.ts = max(self.ts + 1, self.clock())
        else:
            self.ts += self.rng.randint(1, self.max_step_ns)
        return self.ts

    def _run(self, cmd) -> list:
        result = self.book.execute(cmd)
        for state in result.orders:
            if state.status in _OPEN:
                self.orders[state.order_id] = state
            else:
                self.orders.pop(state.order_id, None)
        for e in result.events:
            if isinstance(e, TradeExecuted):
                self.last_price = e.price
        self.events.extend(result.events)
        return list(result.events)

    # ------------------------------------------------------------------ the engine's book

    def levels(self) -> tuple[dict[int, int], dict[int, int]]:
        """The engine's L2 book: price -> open quantity per side."""
        bids, asks = self.book.l2(1_000_000)
        return dict(bids), dict(asks)

    def resting(self) -> dict[str, OrderState]:
        """Every order resting in the engine's book (pending stops are not in the book)."""
        return {s.order_id: s for s in self.book.l3()}

    # ------------------------------------------------------------------ commands

    def place(self, client, side, type_="limit", price=None, qty=1, tif="GTC", post_only=False, stop_price=None):
        """Returns the events of one command."""
        self.n += 1
        return self._run(PlaceOrder(
            order_id=f"{self.instrument}-o{self.n}", client_id=client, instrument=self.instrument,
            side=Side(side), order_type=OrderType(type_), quantity=qty, ts=self._tick(), price=price,
            tif=TimeInForce(tif), post_only=post_only, stop_price=stop_price,
        ))

    def cancel(self, order_id: str) -> list:
        o = self.orders.get(order_id)
        if o is None:
            return []
        return self._run(CancelOrder(order_id=order_id, client_id=o.client_id, instrument=self.instrument,
                                     ts=self._tick()))

    def amend(self, order_id: str, price: int | None = None, qty: int | None = None) -> list:
        """New total quantity and/or price of a resting order (the engine's rules decide)."""
        o = self.orders.get(order_id)
        if o is None:
            return []
        return self._run(AmendOrder(order_id=order_id, client_id=o.client_id, instrument=self.instrument,
                                    ts=self._tick(), quantity=qty, price=price))

    # ------------------------------------------------------------------ random flow

    def random_command(self) -> list:
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
            if o.order_type in (OrderType.STOP_LIMIT, OrderType.STOP_MARKET) and o.status == OrderStatus.PENDING:
                return self.cancel(oid)
            if self.rng.random() < 0.5:
                return self.amend(oid, qty=max(o.filled_quantity + 1, o.quantity // 2))
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
