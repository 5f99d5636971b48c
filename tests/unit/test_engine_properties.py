"""Property tests: the engine against the naive reference matcher, plus snapshot/restore
and replay round-trips, under random command sequences (several clients, every order
type including stops, icebergs and GTD orders, cancels, amends, cancel-all, expiry
commands, malformed commands)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.enums import CancelReason, OrderType, Side, StpMode, TimeInForce
from contracts.messages import (
    AmendOrder,
    CancelAll,
    CancelOrder,
    ExpireOrders,
    PlaceOrder,
    decode_event,
    encode_event,
)
from engine import OrderBook
from tests.unit.reference_matcher import ReferenceBook

INSTRUMENT = "BTC-USD"
CLIENTS = ["c1", "c2", "c3"]

SETTINGS = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


COMMAND = st.tuples(st.integers(0, 17), st.integers(0, 2**64 - 1))
"""One command = a kind (shrinks towards 'place') and 64 bits of choices decoded by divmod.
A single draw per command keeps Hypothesis' per-draw cost (~20 us) from dominating."""


M64 = (1 << 64) - 1


def mix64(z: int) -> int:
    """splitmix64 finaliser: a bijection that spreads Hypothesis' favourite values
    (0, max, powers of two) over the whole range, so the decoded choices stay varied."""
    z = (z + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


class Bits:
    def __init__(self, value: int):
        self.value = mix64(value)

    def take(self, n: int) -> int:
        self.value, r = divmod(self.value, n)
        return r

    def pick(self, seq):
        return seq[self.take(len(seq))]


class Generator:
    """Draws one command at a time, looking at the live book so that cancels and amends
    mostly hit orders that still rest or wait (and sometimes closed, foreign or unknown
    ones). Prices live in a narrow band so orders cross, stack on the same levels,
    self-trade and trigger stops."""

    def __init__(self, data, stops_weight: int = 2, lo: int = 96, hi: int = 104):
        self.draw = data.draw
        self.lo, self.hi = lo, hi
        self.ts = 1_000
        self.i = 0
        self.owners: dict[str, str] = {}
        kinds = [OrderType.LIMIT] * 5 + [OrderType.MARKET] * 2
        kinds += [OrderType.STOP_LIMIT] * stops_weight + [OrderType.STOP_MARKET] * (stops_weight // 2)
        self.kinds = kinds

    def next(self, book: OrderBook):
        kind, bits = self.draw(COMMAND)
        b = Bits(bits)
        self.i += 1
        self.ts += b.take(3)
        ts = self.ts
        if kind <= 9 or not self.owners:
            return self.place(b, book)
        if kind >= 16:  # time passes: the service injects an expiry command
            self.ts += b.take(12)
            return ExpireOrders(instrument=INSTRUMENT if b.take(20) else "ETH-USD", ts=self.ts)
        live = book.open_orders()
        pick = b.take(20)
        target = None
        if pick < 15 and live:
            target = b.pick(live)
            oid, owner = target.order_id, target.client_id
        elif pick < 19:
            oid = b.pick(sorted(self.owners))
            owner = self.owners[oid]
        else:
            oid, owner = "nope", "c1"
        client = owner if b.take(10) else b.pick(CLIENTS)
        if kind <= 11:
            reason = b.pick([CancelReason.USER] * 3 + [CancelReason.DISCONNECT])
            return CancelOrder(order_id=oid, client_id=client, instrument=INSTRUMENT, ts=ts, reason=reason)
        if kind <= 14:
            quantity = price = None
            change = b.take(4)
            if change in (0, 2):
                if target is not None and b.take(3):
                    # around the interesting boundaries: filled, quantity
                    if b.take(2):
                        quantity = target.filled_quantity + b.take(5) - 1
                    else:
                        quantity = target.quantity + b.take(6) - 3
                else:
                    quantity = b.take(13)
            if change in (1, 2):
                if target is not None and target.price is not None and b.take(3):
                    price = target.price + b.take(7) - 3
                else:
                    price = self.lo + b.take(self.hi - self.lo + 1)
            return AmendOrder(order_id=oid, client_id=client, instrument=INSTRUMENT, ts=ts, quantity=quantity, price=price)
        side = b.pick([None, Side.BUY, Side.SELL])
        reason = b.pick([CancelReason.CANCEL_ALL] * 3 + [CancelReason.CANCEL_AFTER])
        return CancelAll(client_id=client, instrument=INSTRUMENT, ts=ts, side=side, reason=reason)

    def place(self, b: Bits, book: OrderBook) -> PlaceOrder:
        span = self.hi - self.lo + 1
        client = b.pick(CLIENTS)
        oid = f"o{self.i}"
        if b.take(30) == 0:
            live = book.open_orders()
            if live and b.take(2):
                oid = b.pick(live).order_id  # duplicate of a live order
            elif self.owners:
                oid = b.pick(sorted(self.owners))  # reuse of a closed id
        otype = b.pick(self.kinds)
        tif = b.pick([TimeInForce.GTC] * 3 + [TimeInForce.GTD, TimeInForce.IOC, TimeInForce.FOK])
        if otype == OrderType.MARKET and tif == TimeInForce.GTD:
            tif = TimeInForce.GTC
        price = self.lo + b.take(span) if otype in (OrderType.LIMIT, OrderType.STOP_LIMIT) else None
        stop_price = self.lo + b.take(span) if otype in (OrderType.STOP_LIMIT, OrderType.STOP_MARKET) else None
        resting = tif in (TimeInForce.GTC, TimeInForce.GTD)
        post_only = otype == OrderType.LIMIT and resting and b.take(5) == 0
        quantity = 1 + b.take(10)
        expire_ts = self.ts + 1 + b.take(25) if tif == TimeInForce.GTD else None
        display = None
        if otype == OrderType.LIMIT and resting and quantity > 1 and b.take(3) == 0:
            display = 1 + b.take(min(quantity - 1, 3))  # icebergs: 1..3 lots shown
        side = b.pick([Side.BUY, Side.SELL])
        stp = b.pick(list(StpMode))
        if b.take(25) == 0:  # malformed: must become OrderRejected(invalid_order)
            broken = b.take(12)
            if broken == 0:
                quantity = -b.take(3)
            elif broken == 1:
                price = None if price is not None else self.lo
            elif broken == 2:
                stop_price = None if stop_price is not None else self.lo
            elif broken == 3:
                post_only = True
            elif broken == 4:
                price = 0 if price is not None else price
            elif broken == 5:
                tif = "GTC"  # a plain string is not a TimeInForce member
            elif broken == 6:
                stop_price = -1 if stop_price is not None else stop_price
            elif broken == 7:
                display = quantity  # display must be below the quantity
            elif broken == 8:
                display = 0 if b.take(2) else 1  # zero, or on a market / IOC / FOK / stop order
            elif broken == 9:
                expire_ts = self.ts - b.take(2)  # not in the future
            elif broken == 10:
                expire_ts = None if tif == TimeInForce.GTD else self.ts + 5  # GTD without / others with
            else:
                tif = TimeInForce.GTD
                expire_ts = self.ts + 3  # GTD market (never rests) when otype is market
        self.owners.setdefault(oid, client)
        return PlaceOrder(
            order_id=oid,
            client_id=client,
            instrument=INSTRUMENT,
            side=side,
            order_type=otype,
            quantity=quantity,
            ts=self.ts,
            price=price,
            tif=tif,
            post_only=post_only,
            stp=stp,
            stop_price=stop_price,
            display_quantity=display,
            expire_ts=expire_ts,
        )


def assert_same_book(book: OrderBook, ref: ReferenceBook) -> None:
    assert book.seq == ref.seq
    assert book.last_price == ref.last_price
    assert list(book.l3()) == ref.l3()
    assert book.pending_stops() == ref.pending_stops()
    assert book.l2(1000) == ref.l2(1000)
    assert book.l2(2) == ref.l2(2)
    assert book.best_bid() == ref.best_bid()
    assert book.best_ask() == ref.best_ask()
    for client in CLIENTS + [None]:
        assert book.open_orders(client) == ref.open_orders(client)
    assert len(book) == len(ref.live())
    bids, asks = ref.l2(10**9)
    assert book.depth() == (len(bids), len(asks))
    assert book.next_expiry() == ref.next_expiry()


def run_against_reference(data, max_len: int, **gen) -> OrderBook:
    gen = Generator(data, **gen)
    book = OrderBook(INSTRUMENT)
    ref = ReferenceBook(INSTRUMENT)
    for i in range(data.draw(st.integers(1, max_len))):
        cmd = gen.next(book)
        got = book.execute(cmd)
        want = ref.execute(cmd)
        assert got.code == want.code, (i, cmd)
        assert got.events == want.events, (i, cmd)
        assert got.orders == want.orders, (i, cmd)
        assert [e.seq for e in got.events] == list(range(book.seq - len(got.events) + 1, book.seq + 1))
        book.validate()
        assert book.next_expiry() == ref.next_expiry(), (i, cmd)
    assert_same_book(book, ref)
    return book


@settings(max_examples=2000, **SETTINGS)
@given(st.data())
def test_engine_matches_reference(data):
    run_against_reference(data, 60)


@settings(max_examples=800, **SETTINGS)
@given(st.data())
def test_engine_matches_reference_stop_heavy(data):
    run_against_reference(data, 80, stops_weight=8, lo=98, hi=102)


@settings(max_examples=400, **SETTINGS)
@given(st.data())
def test_engine_matches_reference_long_sequences(data):
    run_against_reference(data, 150, stops_weight=1, lo=90, hi=110)


@settings(max_examples=800, **SETTINGS)
@given(st.data())
def test_snapshot_restore_behaves_identically(data):
    gen = Generator(data)
    n = data.draw(st.integers(1, 60))
    cut = data.draw(st.integers(0, n))
    book = OrderBook(INSTRUMENT)
    for _ in range(cut):
        book.execute(gen.next(book))
    blob = book.snapshot()
    restored = OrderBook.restore(blob, validate=True)
    assert restored.snapshot() == blob
    for _ in range(n - cut):
        cmd = gen.next(book)
        assert restored.execute(cmd) == book.execute(cmd)
        restored.validate()
    assert restored.snapshot() == book.snapshot()


@settings(max_examples=800, **SETTINGS)
@given(st.data())
def test_replay_of_the_journal_rebuilds_the_same_book(data):
    gen = Generator(data)
    book = OrderBook(INSTRUMENT)
    replayed = OrderBook(INSTRUMENT)
    for _ in range(data.draw(st.integers(1, 60))):
        for ev in book.execute(gen.next(book)).events:
            # through the journal codec, as recovery reads it back from PostgreSQL
            replayed.apply(decode_event(encode_event(ev)))
        assert replayed.seq == book.seq
        assert replayed.last_price == book.last_price
        assert replayed.snapshot() == book.snapshot()
        assert replayed.next_expiry() == book.next_expiry()
        replayed.validate()


@settings(max_examples=500, **SETTINGS)
@given(st.data())
def test_snapshot_then_replay_of_later_events(data):
    """Recovery: latest snapshot + replay of the later events == the live book."""
    gen = Generator(data, stops_weight=4)
    n = data.draw(st.integers(1, 60))
    cut = data.draw(st.integers(0, n))
    book = OrderBook(INSTRUMENT)
    for _ in range(cut):
        book.execute(gen.next(book))
    recovered = OrderBook.restore(book.snapshot())
    for _ in range(n - cut):
        for ev in book.execute(gen.next(book)).events:
            recovered.apply(ev)
    assert recovered.snapshot() == book.snapshot()
    assert recovered.next_expiry() == book.next_expiry()
    recovered.validate()
