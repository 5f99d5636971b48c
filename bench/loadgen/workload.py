"""What the load generator sends: a mix of limit, market, IOC orders and cancels.

Prices and quantities are integers (ticks, lots) internally and become decimal strings
on the instrument's grid only when a body is formatted, so every generated value is
exact (no float ever touches a price). Prices drift around a mid with a small spread:
most limit orders rest a little away from the mid, some cross it, IOC and market orders
take liquidity, so the book both grows and trades.

Bodies are formatted with %-templates into bytes on the hot path: a few hundred
nanoseconds, far cheaper than building a dict and encoding it.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from decimal import Decimal

from contracts.instruments import InstrumentSpec

KINDS = ("limit", "market", "ioc", "cancel")

# Reference mids (quote units) for the shipped instruments; others start at --mid or 100.
DEFAULT_MIDS = {"BTC-USD": Decimal("70000"), "ETH-USD": Decimal("3500"), "SOL-USD": Decimal("150")}

# Order sizes: notionals between $20 and $2,000 (geometric), turned into lots per instrument.
NOTIONALS = tuple(Decimal(20) * (Decimal(100) ** (Decimal(i) / 15)) for i in range(16))

MAX_REMEMBERED = 4000  # open order ids kept per client for cancels


def parse_mix(text: str) -> dict[str, float]:
    """'limit=60,cancel=25,market=10,ioc=5' -> weights (need not sum to 100)."""
    mix: dict[str, float] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, value = part.partition("=")
        name = name.strip().lower()
        if name not in KINDS:
            raise ValueError(f"unknown kind {name!r} in --mix (kinds: {', '.join(KINDS)})")
        weight = float(value)
        if weight < 0:
            raise ValueError(f"negative weight for {name} in --mix")
        mix[name] = weight
    if sum(mix.values()) <= 0:
        raise ValueError("--mix needs at least one positive weight")
    return mix


def _scale(unit: Decimal) -> tuple[int, int]:
    """unit = mult / 10**digits with integers, so n units = divmod(n*mult, 10**digits)."""
    sign, digits, exp = unit.normalize().as_tuple()
    mult = int("".join(map(str, digits)))
    if exp >= 0:
        return mult * 10**exp, 0
    return mult, -exp


class GridFormatter:
    """Integer units -> shortest exact decimal string (7015050 ticks of 0.01 -> '70150.5')."""

    __slots__ = ("mult", "digits", "div")

    def __init__(self, unit: Decimal):
        self.mult, self.digits = _scale(unit)
        self.div = 10**self.digits

    def __call__(self, units: int) -> str:
        # string slicing instead of divmod + a nested format spec: ~4x cheaper (hot path)
        s = str(units * self.mult)
        d = self.digits
        if not d:
            return s
        if len(s) <= d:
            s = "0" * (d + 1 - len(s)) + s
        frac = s[-d:].rstrip("0")
        return s[:-d] + "." + frac if frac else s[:-d]


class InstrumentModel:
    """Mid price random walk and order sizes for one instrument, in ticks and lots."""

    def __init__(self, spec: InstrumentSpec, mid: Decimal | None, rng: random.Random):
        self.spec = spec
        self.symbol = spec.symbol
        self.fmt_price = GridFormatter(spec.tick_size)
        self.fmt_qty = GridFormatter(spec.lot_size)
        mid = mid if mid is not None else DEFAULT_MIDS.get(spec.symbol, Decimal(100))
        mid = min(mid, spec.max_price / 2)
        self.max_ticks = int(spec.max_price / spec.tick_size)
        self.base = max(int(mid / spec.tick_size), 1000)
        self.mid = self.base
        self.lo = self.base * 95 // 100
        self.hi = self.base * 105 // 100
        self.step = max(1, self.base // 20000)  # 0.5 bp per move
        self.half_spread = max(1, self.base // 10000)  # 1 bp
        self.depth = max(2, self.base // 200)  # passive orders rest up to 50 bp away
        self.through = max(1, self.base // 1000)  # aggressive orders reach 10 bp through
        min_lots = int(spec.min_quantity / spec.lot_size)
        max_lots = int(spec.max_quantity / spec.lot_size)
        price = Decimal(self.base) * spec.tick_size
        sizes = []
        for notional in NOTIONALS:
            lots = int(notional / price / spec.lot_size)
            if lots >= 100:  # two significant digits look like human order sizes
                mag = 10 ** (len(str(lots)) - 2)
                lots = lots // mag * mag
            sizes.append(min(max(lots, min_lots), max_lots))
        self.qty_lots = sizes
        self.qty_text = [self.fmt_qty(n) for n in sizes]
        self.rng = rng

    def drift(self) -> int:
        r = self.rng.random()
        mid = self.mid
        if r < 0.1:
            mid += self.step if r < 0.05 else -self.step
            if mid < self.lo:
                mid = self.lo
            elif mid > self.hi:
                mid = self.hi
            self.mid = mid
        return mid

    def passive_ticks(self, buy: bool) -> int:
        mid = self.drift()
        r = self.rng.random()
        away = self.half_spread + int(r * r * self.depth)  # denser near the touch
        return self._clamp(mid - away if buy else mid + away)

    def aggressive_ticks(self, buy: bool) -> int:
        mid = self.drift()
        into = self.half_spread + int(self.rng.random() * self.through)
        return self._clamp(mid + into if buy else mid - into)

    def _clamp(self, ticks: int) -> int:
        return 1 if ticks < 1 else (self.max_ticks if ticks > self.max_ticks else ticks)

    def quantity(self) -> str:
        return self.qty_text[int(self.rng.random() * len(self.qty_text))]


# A command is a plain tuple (creating one costs a fifth of a dataclass instance):
#   (kind, client index, fields, order_type, order_id, remember)
# fields: the JSON object body without braces, shared by HTTP and WebSocket, which add
# their own keys (type / request_id); order_type: b"limit" | b"market" (b"" for cancels);
# order_id: the order a cancel targets; remember: a GTC limit whose id is kept if it rests.
Command = tuple
KIND, CLIENT, FIELDS, ORDER_TYPE, ORDER_ID, REMEMBER = range(6)


@dataclass
class Workload:
    models: list[InstrumentModel]
    client_ids: list[str]
    mix: dict[str, float]
    seed: int | None = None
    idempotency_prefix: str | None = None
    idempotency_share: float = 1.0  # of the orders that carry a key (when a prefix is set)
    aggressive_share: float = 0.15
    open_orders: list[list[str]] = field(init=False)

    def __post_init__(self):
        self.rng = random.Random(self.seed)
        for m in self.models:
            m.rng = self.rng
        total = sum(self.mix.values())
        table: list[str] = []
        for kind in KINDS:  # 1000 slots: weights to a 0.1% resolution
            table.extend([kind] * round(self.mix.get(kind, 0) / total * 1000))
        self.kind_table = table or ["limit"]
        self.open_orders = [[] for _ in self.client_ids]
        self.track_open = self.mix.get("cancel", 0) > 0
        self._idem = itertools.count(1)
        self._client_json = [f'"client_id":"{c}"'.encode() for c in self.client_ids]
        # [client][model][buy?] -> the constant start of an order body, formatted once
        self._heads = [
            [
                [b'%s,"instrument":"%s","side":"%s"' % (cj, m.symbol.encode(), side) for side in (b"sell", b"buy")]
                for m in self.models
            ]
            for cj in self._client_json
        ]
        self._qty = [[q.encode() for q in m.qty_text] for m in self.models]

    def next(self, client: int | None = None) -> Command:
        """The next request; `client` pins the client (a WebSocket authenticated as one)."""
        rnd = self.rng.random
        table = self.kind_table
        kind = table[int(rnd() * len(table))]
        if client is None:
            client = int(rnd() * len(self.client_ids))
        if kind == "cancel":
            orders = self.open_orders[client]
            if orders:
                # swap-pop a random remembered order: O(1), and one order is never cancelled twice
                i = int(rnd() * len(orders))
                orders[i], orders[-1] = orders[-1], orders[i]
                return ("cancel", client, self._client_json[client], b"", orders.pop(), False)
            kind = "limit"
        mi = int(rnd() * len(self.models))
        model = self.models[mi]
        buy = rnd() < 0.5
        head = self._heads[client][mi][buy]
        qtys = self._qty[mi]
        qty = qtys[int(rnd() * len(qtys))]
        if self.idempotency_prefix is not None and (self.idempotency_share >= 1.0 or rnd() < self.idempotency_share):
            head += b',"idempotency_key":"%s-%d"' % (self.idempotency_prefix.encode(), next(self._idem))
        if kind == "market":
            return ("market", client, b'%s,"quantity":%s' % (head, qty), b"market", None, False)
        if kind == "ioc":
            price = model.fmt_price(model.aggressive_ticks(buy))
            return ("ioc", client, b'%s,"price":%s,"quantity":%s,"time_in_force":"IOC"' % (head, price.encode(), qty),
                    b"limit", None, False)
        ticks = model.aggressive_ticks(buy) if rnd() < self.aggressive_share else model.passive_ticks(buy)
        return ("limit", client, b'%s,"price":%s,"quantity":%s,"time_in_force":"GTC"' % (head, model.fmt_price(ticks).encode(), qty),
                b"limit", None, self.track_open)

    def remember(self, client: int, order_id: str) -> None:
        orders = self.open_orders[client]
        orders.append(order_id)
        if len(orders) > MAX_REMEMBERED:
            del orders[: MAX_REMEMBERED // 2]  # the oldest have most likely filled already


def build_models(instruments, symbols: list[str], mids: dict[str, Decimal], rng=None) -> list[InstrumentModel]:
    rng = rng or random.Random()
    models = []
    for sym in symbols:
        spec = instruments.get(sym)
        if spec is None:
            raise ValueError(f"unknown instrument {sym!r} (known: {', '.join(instruments.symbols)})")
        models.append(InstrumentModel(spec, mids.get(sym), rng))
    return models
