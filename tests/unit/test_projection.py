"""The projector's pure core: book, orders, positions, buckets from journal events."""

from __future__ import annotations

import json
import random
from decimal import Decimal

import msgspec
import pytest
from sortedcontainers import SortedDict

from contracts.api import json_encoder
from contracts.enums import CancelReason, OrderType, Side, StpMode, TimeInForce
from contracts.instruments import load_instruments
from contracts.messages import OrderAccepted, OrderCancelled, TradeExecuted
from query_service.projection import (
    GapError,
    ProjectionState,
    project,
    referenced_buckets,
    referenced_clients,
    referenced_orders,
)
from query_service.records import BOOK_RESTING, BOOK_TAKING
from query_service.redis_keys import Keys
from query_service.store import delta_commands
from tests.support.order_flow import OrderFlow

SPEC = load_instruments().get("BTC-USD")
_dec = msgspec.json.Decoder(float_hook=Decimal).decode


def J(view):
    """A rendered view as a client sees it: JSON numbers read as exact Decimals."""
    return _dec(json_encoder.encode(view))
T0 = 1_700_000_040_000_000_000  # a minute boundary (1700000040 = 28333334 * 60)


class DictStore:
    """The Redis views as dicts, loaded per batch exactly like query_service.store does:
    only the records the batch references, plus the taking orders."""

    def __init__(self, instrument="BTC-USD"):
        self.instrument = instrument
        self.seq = 0
        self.bids, self.asks = SortedDict(), SortedDict()
        self.taking: list = []
        self.orders: dict = {}
        self.positions: dict = {}
        self.buckets: dict = {}
        self.last = None
        self.trades: list = []

    def state_for(self, events) -> ProjectionState:
        ids = referenced_orders(events) | set(self.taking)
        return ProjectionState(
            instrument=self.instrument,
            last_seq=self.seq,
            bids=SortedDict(self.bids),
            asks=SortedDict(self.asks),
            taking=list(self.taking),
            orders={i: self.orders[i] for i in ids if i in self.orders},
            positions={c: self.positions[c] for c in referenced_clients(events) if c in self.positions},
            buckets={k: self.buckets[k] for k in referenced_buckets(events) if k in self.buckets},
            last_trade=self.last,
        )

    def apply(self, events):
        state, delta = project(self.state_for(events), events)
        for (side, price), total in delta.levels.items():
            book = self.bids if side == "buy" else self.asks
            if total:
                book[price] = total
            else:
                book.pop(price, None)
        assert dict(self.bids) == dict(state.bids) and dict(self.asks) == dict(state.asks)
        self.orders.update(delta.orders)
        self.positions.update(delta.positions)
        self.buckets.update(delta.buckets)
        if delta.last_trade:
            self.last = delta.last_trade
        if delta.taking_changed:
            self.taking = list(delta.taking)
        self.trades += delta.trades
        self.seq = delta.seq
        return delta

    def snapshot(self):
        return (
            self.seq,
            dict(self.bids),
            dict(self.asks),
            list(self.taking),
            {k: tuple(getattr(v, f) for f in v.__struct_fields__) for k, v in self.orders.items()},
            dict(self.positions),
            dict(self.buckets),
            self.last,
            [t.seq for t in self.trades],
        )


def assert_uncrossed(store: DictStore):
    if store.bids and store.asks:
        assert store.bids.peekitem(-1)[0] < store.asks.peekitem(0)[0]


def split_randomly(events, rng):
    out, i = [], 0
    while i < len(events):
        n = rng.randint(1, 40)
        out.append(events[i : i + n])
        i += n
    return out


# --------------------------------------------------------------------------- book


@pytest.mark.parametrize("seed", range(12))
def test_projected_book_equals_engine_book_after_every_command(seed):
    sim = OrderFlow(seed=seed)
    store = DictStore()
    most_resting = 0
    for _ in range(400):
        events = sim.random_command()
        if not events:
            continue
        for e in events:  # event by event: uncrossed after every single event
            store.apply([e])
            assert_uncrossed(store)
        bids, asks = sim.levels()
        assert dict(store.bids) == bids
        assert dict(store.asks) == asks
        resting = sim.resting()
        most_resting = max(most_resting, len(resting))
        for oid, o in resting.items():
            rec = store.orders[oid]
            assert rec.book == BOOK_RESTING and rec.remaining == o.quantity - o.filled_quantity and rec.price == o.price
            assert rec.filled_quantity == o.filled_quantity and rec.cost == o.cost
    assert store.taking == []
    assert most_resting >= 10, "the flow built a book"


@pytest.mark.parametrize("seed", range(6))
def test_any_batching_gives_identical_views(seed):
    events = OrderFlow(seed=100 + seed).run(500)
    one = DictStore()
    one.apply(events)
    rng = random.Random(seed)
    for _ in range(3):
        other = DictStore()
        for chunk in split_randomly(events, rng):
            other.apply(chunk)
        assert other.snapshot() == one.snapshot()


def test_duplicates_are_skipped_and_replay_is_identical():
    events = OrderFlow(seed=7).run(200)
    a = DictStore()
    a.apply(events)
    before = a.snapshot()
    delta = a.apply(events)  # the whole stream again
    assert delta.events == 0 and a.snapshot() == before
    b = DictStore()
    b.apply(events[:50])
    b.apply(events[20:120])  # overlapping redelivery
    b.apply(events[100:])
    assert b.snapshot() == before


def test_gap_raises():
    events = OrderFlow(seed=3).run(20)
    s = DictStore()
    s.apply(events[:5])
    with pytest.raises(GapError) as exc:
        s.apply(events[6:])
    assert exc.value.last_seq == 5 and exc.value.next_seq == 7


def _acc(seq, oid, client, side, price, qty, order_type="limit", tif="GTC"):
    return OrderAccepted(
        instrument="BTC-USD", seq=seq, ts=T0 + seq, order_id=oid, client_id=client, side=Side(side),
        order_type=OrderType(order_type), price=price, quantity=qty, tif=TimeInForce(tif), post_only=False,
        stp=StpMode.CANCEL_NEWEST,
    )


def _trade(seq, maker, mc, taker, tc, taker_side, price, qty, mrem, trem, ts=None):
    return TradeExecuted(
        instrument="BTC-USD", seq=seq, ts=ts if ts is not None else T0 + seq, trade_id=f"t{seq}", price=price,
        quantity=qty, taker_side=Side(taker_side), maker_order_id=maker, maker_client_id=mc,
        taker_order_id=taker, taker_client_id=tc, maker_remaining=mrem, taker_remaining=trem,
    )


def test_crossing_limit_takes_then_rests_its_remainder():
    s = DictStore()
    s.apply([_acc(1, "a1", "alice", "sell", 10000, 2), _acc(2, "a2", "alice", "sell", 10100, 1)])
    s.apply([_acc(3, "b1", "bob", "buy", 10100, 5)])
    # accepted but crossing: not in the book yet (the book is never crossed)
    assert dict(s.bids) == {} and s.taking == ["b1"] and s.orders["b1"].book == BOOK_TAKING
    s.apply([_trade(4, "a1", "alice", "b1", "bob", "buy", 10000, 2, 0, 3)])
    assert dict(s.asks) == {10100: 1} and dict(s.bids) == {} and s.taking == ["b1"]
    s.apply([_trade(5, "a2", "alice", "b1", "bob", "buy", 10100, 1, 0, 2)])
    assert dict(s.asks) == {} and dict(s.bids) == {10100: 2} and s.taking == []
    b1 = s.orders["b1"]
    assert (b1.status, b1.filled_quantity, b1.remaining, b1.cost) == ("partially_filled", 3, 2, 10000 * 2 + 10100)


def test_ioc_and_market_remainders_never_rest():
    s = DictStore()
    s.apply([_acc(1, "a1", "alice", "sell", 10000, 2)])
    s.apply([
        _acc(2, "i1", "bob", "buy", 10000, 5, tif="IOC"),
        _trade(3, "a1", "alice", "i1", "bob", "buy", 10000, 2, 0, 3),
    ])
    assert dict(s.bids) == {} and s.taking == ["i1"]
    s.apply([OrderCancelled(instrument="BTC-USD", seq=4, ts=T0 + 4, order_id="i1", client_id="bob",
                            reason=CancelReason.IOC_REMAINDER, cancelled_quantity=3, filled_quantity=2)])
    assert dict(s.bids) == {} and s.taking == [] and s.orders["i1"].status == "cancelled"
    s.apply([_acc(5, "m1", "carol", "sell", None, 4, order_type="market")])
    assert s.taking == ["m1"] and dict(s.asks) == {}
    s.apply([OrderCancelled(instrument="BTC-USD", seq=6, ts=T0 + 6, order_id="m1", client_id="carol",
                            reason=CancelReason.MARKET_REMAINDER, cancelled_quantity=4, filled_quantity=0)])
    assert s.taking == [] and s.orders["m1"].status == "cancelled" and s.orders["m1"].remaining == 0


# --------------------------------------------------------------------------- positions


def _position_rows(store, client):
    from query_service.render import position_view

    mark = store.last.price if store.last else None
    return J(position_view(SPEC, "BTC-USD", store.positions[client], mark))


def test_positions_average_cost_hand_computed():
    """BTC-USD (tick 0.01, lot 1e-8). alice trades against makers; hand-computed:
    buy 1 @ 100.00, buy 2 @ 101.00      -> net 3, cost 302.00, avg 100.666667 (shown to 1/10,000 tick)
    sell 1.5 @ 103.00 (relieves 151.00) -> realized 154.50 - 151.00 = 3.50, net 1.5, cost 151.00
    sell 2.5 @ 99.00 (closes 1.5 then flips) -> realized += 148.50 - 151.00 = -2.50 (1.00);
                                          net -1, cost -99.00, avg 99.00
    mark 99.00 -> unrealized 0; then buy 1 @ 98.00 closes: realized += 99.00 - 98.00 -> 2.00
    """
    L = 100_000_000  # lots per 1.0
    s = DictStore()
    seq = 0

    def trade(alice_side, price_ticks, lots):
        nonlocal seq
        maker_side = "sell" if alice_side == "buy" else "buy"
        seq += 1
        acc = _acc(seq, f"m{seq}", "mm", maker_side, price_ticks, lots)
        seq += 1
        tak = _acc(seq, f"a{seq}", "alice", alice_side, price_ticks, lots)
        seq += 1
        tr = _trade(seq, f"m{seq - 2}", "mm", f"a{seq - 1}", "alice", alice_side, price_ticks, lots, 0, 0)
        s.apply([acc, tak, tr])

    trade("buy", 10000, 1 * L)
    trade("buy", 10100, 2 * L)
    p = _position_rows(s, "alice")
    assert p["net_quantity"] == Decimal("3") and p["total_cost"] == Decimal("302")
    assert p["avg_price"] == Decimal("100.666667")
    assert p["realized_pnl"] == 0 and p["unrealized_pnl"] == Decimal("1")  # mark 101: 303 - 302

    trade("sell", 10300, 150_000_000)
    p = _position_rows(s, "alice")
    assert p["net_quantity"] == Decimal("1.5") and p["total_cost"] == Decimal("151")
    assert p["realized_pnl"] == Decimal("3.5") and p["unrealized_pnl"] == Decimal("3.5")  # 1.5*103 - 151

    trade("sell", 9900, 250_000_000)
    p = _position_rows(s, "alice")
    assert p["net_quantity"] == Decimal("-1") and p["total_cost"] == Decimal("-99")
    assert p["avg_price"] == Decimal("99") and p["realized_pnl"] == Decimal("1")
    assert p["unrealized_pnl"] == 0

    trade("buy", 9800, 1 * L)
    p = _position_rows(s, "alice")
    assert p["net_quantity"] == 0 and p["total_cost"] == 0 and p["realized_pnl"] == Decimal("2")
    # the counterparty's realized PnL is the exact opposite (zero-sum, no fees)
    mm = _position_rows(s, "mm")
    assert mm["realized_pnl"] == Decimal("-2") and mm["net_quantity"] == 0


def test_partial_close_rounding_keeps_sums_exact():
    """3 lots bought for 100 ticks*lots total (not divisible): closing 1 lot relieves
    round_half_even(100/3) = 33, the residual stays in the basis; closing the rest
    relieves all 67, so realized = proceeds - payments exactly."""
    from query_service.projection import apply_fill
    from query_service.records import Position

    p = apply_fill(Position(), 1, 30, 0)
    p = apply_fill(p, 2, 35, 0)  # 3 lots, cost 100
    assert (p.net, p.cost) == (3, 100)
    p = apply_fill(p, -1, 40, 0)
    assert (p.net, p.cost, p.realized) == (2, 67, 40 - 33)
    p = apply_fill(p, -2, 40, 0)
    assert (p.net, p.cost, p.realized) == (0, 0, 120 - 100)


def test_positions_zero_sum_on_random_flow():
    sim = OrderFlow(seed=42)
    s = DictStore()
    s.apply(sim.run(600))
    assert sum(p.net for p in s.positions.values()) == 0
    # every trade moves the same quantity both ways: cash flows net to zero
    cash = {}
    for t in s.trades:
        buyer = t.taker_client_id if t.taker_side == Side.BUY else t.maker_client_id
        seller = t.maker_client_id if t.taker_side == Side.BUY else t.taker_client_id
        cash[buyer] = cash.get(buyer, 0) - t.price * t.quantity
        cash[seller] = cash.get(seller, 0) + t.price * t.quantity
    for client, p in s.positions.items():
        # realized - basis of the open position == cash flow (exactly, no rounding loss)
        assert p.realized - p.cost == cash.get(client, 0)


# --------------------------------------------------------------------------- analytics


def test_buckets_vwap_and_aggregates_hand_computed():
    """minute 0: 1.0 @ 100.00, 3.0 @ 101.00; minute 1: 2.0 @ 102.50 (BTC-USD).
    minute 0: count 2, qty 4, notional 403, avg 100.5, vwap 100.75, min 100, max 101
    minute 1: count 1, qty 2, notional 205, vwap 102.5
    2-minute interval: count 3, qty 6, notional 608, vwap 101.333333 (608/6), avg 101.166667
    """
    from query_service.render import aggregate_buckets

    L = 100_000_000
    s = DictStore()
    evs = [
        _acc(1, "s1", "s", "sell", 10000, 1 * L), _acc(2, "s2", "s", "sell", 10100, 3 * L),
        _acc(3, "s3", "s", "sell", 10250, 2 * L),
        _acc(4, "b1", "b", "buy", None, 4 * L, order_type="market"),
        _trade(5, "s1", "s", "b1", "b", "buy", 10000, 1 * L, 0, 3 * L, ts=T0 + 1_000_000_000),
        _trade(6, "s2", "s", "b1", "b", "buy", 10100, 3 * L, 0, 0, ts=T0 + 59_999_000_000),
        _acc(7, "b2", "b", "buy", None, 2 * L, order_type="market"),
        _trade(8, "s3", "s", "b2", "b", "buy", 10250, 2 * L, 0, 0, ts=T0 + 60_000_000_000),
    ]
    s.apply(evs)
    minutes = sorted((b for (res, _), b in s.buckets.items() if res == 60), key=lambda b: b.start)
    rows, overall = J(aggregate_buckets(SPEC, minutes, 60))
    assert [r["trade_count"] for r in rows] == [2, 1]
    r0 = rows[0]
    assert r0["total_quantity"] == 4 and r0["total_volume"] == 403 and r0["avg_price"] == Decimal("100.5")
    assert r0["vwap"] == Decimal("100.75") and r0["min_price"] == 100 and r0["max_price"] == 101
    assert rows[1]["vwap"] == Decimal("102.5") and rows[1]["total_volume"] == 205
    assert overall == Decimal("101.333333")
    rows2, overall2 = J(aggregate_buckets(SPEC, minutes, 120))
    assert len(rows2) == 1 and rows2[0]["trade_count"] == 3 and rows2[0]["total_volume"] == 608
    assert rows2[0]["vwap"] == Decimal("101.333333") and rows2[0]["avg_price"] == Decimal("101.166667")
    assert overall2 == overall
    hour = [b for (res, _), b in s.buckets.items() if res == 3600]
    assert len(hour) == 1 and (hour[0].count, hour[0].open, hour[0].close, hour[0].low, hour[0].high) == (
        3, 10000, 10250, 10000, 10250)


def test_ticker_view_hand_computed():
    from query_service.records import Bucket, LastTrade
    from query_service.render import ticker_view

    m = [Bucket(T0 // 10**9, 2, 4 * 10**8, 403 * 10**10, 20100, 10000, 10100, 10000, 10100)]
    t = J(ticker_view(SPEC, "BTC-USD", m, [], LastTrade(10100, 3 * 10**8, T0, 6, "buy"), 9990, 10110, 6, T0))
    assert t["open_24h"] == 100 and t["last_price"] == 101 and t["change_24h"] == 1
    assert t["change_percent_24h"] == Decimal("1") and t["volume_24h"] == 4 and t["vwap_24h"] == Decimal("100.75")
    assert t["best_bid"] == Decimal("99.9") and t["best_ask"] == Decimal("101.1")


# --------------------------------------------------------------------------- redis commands


def test_delta_commands_write_levels_records_and_last_seq_last():
    events = OrderFlow(seed=5).run(50)
    s = DictStore()
    state = s.state_for(events)
    _, delta = project(state, events)
    cmds = delta_commands(delta, Keys("q:"), SPEC)
    assert cmds[-1] == ("SET", "q:{BTC-USD}:seq", delta.seq)
    names = {c[0] for c in cmds}
    assert {"ZADD", "HSET", "SET"} <= names
    # applying the commands to a model of the level zsets gives the projected book
    zsets = {"q:{BTC-USD}:bids": {}, "q:{BTC-USD}:asks": {}}
    for c in cmds:
        if c[1] in zsets:
            z = zsets[c[1]]
            if c[0] == "ZREM":
                for m in c[2:]:
                    del z[m]
            elif c[0] == "ZADD":
                for score, m in zip(c[2::2], c[3::2]):
                    z[m] = score
    book = {key: {int(m.split(":")[0]): int(m.split(":")[1]) for m in z} for key, z in zsets.items()}
    state2, _ = project(s.state_for(events), events)
    assert book["q:{BTC-USD}:bids"] == dict(state2.bids) and book["q:{BTC-USD}:asks"] == dict(state2.asks)
    # grouped: at most one ZREM and one ZADD per level side
    assert sum(1 for c in cmds if c[1] == "q:{BTC-USD}:bids") <= 2


def test_feed_messages_round_trip():
    from contracts.api import json_encoder
    from query_service.feed import book_changes_text, build_feed, decode_feed, order_update_text
    from query_service.render import order_view, trade_views

    def book_changes(levels):  # the rendering build_feed did before issue 19's change
        return [{"side": side, "price": SPEC.price_json(price), "quantity": SPEC.quantity_json(levels[(side, price)])}
                for side, price in sorted(levels, key=lambda k: (k[0], -k[1] if k[0] == "buy" else k[1]))]

    events = OrderFlow(seed=11).run(300)
    s = DictStore()
    for i in range(0, len(events), 7):
        chunk = events[i : i + 7]
        state = s.state_for(chunk)
        _, delta = project(state, chunk)
        s.apply(chunk)
        m = decode_feed(build_feed(SPEC, delta, None))
        assert (m.prev_seq, m.seq) == (delta.prev_seq, delta.seq)
        assert bool(m.bids or m.asks) == bool(delta.levels) and m.ticker is None
        assert len(m.trades) == len(delta.trades) and len(m.orders) == len(delta.orders)
        # what a replica relays: the same texts the projector used to render for every batch
        changes = book_changes_text(SPEC, m)
        assert (json.loads(changes) if changes else []) == json.loads(json_encoder.encode(book_changes(delta.levels)))
        for (client, raw), o in zip(m.orders, delta.orders.values()):
            assert client == o.client_id
            assert json.loads(order_update_text(SPEC, m, raw)) == json.loads(json_encoder.encode(
                {"type": "order_update", "instrument": delta.instrument, "seq": delta.seq,
                 "order": order_view(SPEC, o, o.seq)}))
        assert [json.loads(bytes(t)) for t in m.trades] == [{"type": "trade", **json.loads(json_encoder.encode(tv))}
                                                            for tv in trade_views(SPEC, delta)]


def test_feed_ticker_figures_render_the_ticker_of_the_window():
    """The feed carries the ticker as integers folded over the window; the replica's rendering
    equals the ticker of the window's buckets themselves."""
    from contracts.api import json_encoder
    from query_service.feed import TickerFigures, ticker_text
    from query_service.records import Bucket, LastTrade
    from query_service.render import ticker_view

    rng = random.Random(4)
    for n in (0, 1, 2, 7, 30):
        buckets = []
        for k in range(n):
            prices = [rng.randint(9_000, 11_000) for _ in range(rng.randint(1, 5))]
            qtys = [rng.randint(1, 10**9) for _ in prices]
            buckets.append(Bucket(k * 60, len(prices), sum(qtys), sum(p * q for p, q in zip(prices, qtys)), sum(prices),
                                  min(prices), max(prices), prices[0], prices[-1]))
        last = LastTrade(10_100, 3, 1_700_000_000_000_000_000, 9, "buy") if n else None
        split = n // 2
        want = ticker_view(SPEC, "BTC-USD", buckets[:split], buckets[split:], last, 9_990, None, 9, 1_700_000_001_000_000_000)
        t = TickerFigures.of(buckets, last, 9_990, None, 9, 1_700_000_001_000_000_000)
        got = ticker_text(SPEC, "BTC-USD", msgspec.json.decode(msgspec.json.encode(t), type=TickerFigures))
        assert json.loads(got) == {"type": "ticker", **json.loads(json_encoder.encode(want))}


def test_fill_members_equal_fill_views_byte_for_byte():
    from query_service.store import fill_member, fill_members

    events = OrderFlow(seed=21).run(400)
    s = DictStore()
    fills = 0
    for i in range(0, len(events), 9):
        chunk = events[i : i + 9]
        _, delta = project(s.state_for(chunk), chunk)
        s.apply(chunk)
        assert fill_members(SPEC, delta) == [(f.client_id, fill_member(SPEC, f)) for f in delta.fills]
        fills += len(delta.fills)
    assert fills > 50


def test_observe_many_equals_observe():
    from prometheus_client import CollectorRegistry, Histogram

    from query_service.metrics import LAG_BUCKETS, observe_many

    r = CollectorRegistry()
    a = Histogram("a", "a", ["i"], buckets=LAG_BUCKETS, registry=r).labels("x")
    b = Histogram("b", "b", ["i"], buckets=LAG_BUCKETS, registry=r).labels("x")
    values = [0.0, 0.001, 0.0011, 0.05, 0.05000001, 10, 11, 0.3] + [random.Random(3).random() for _ in range(50)]
    for v in values:
        a.observe(v)
    observe_many(b, values)
    observe_many(b, [])
    assert [(s.name, s.value) for s in a._child_samples() if s.name != "_created"] == [
        (s.name, s.value) for s in b._child_samples() if s.name != "_created"]


def test_parse_levels_accepts_resp2_and_resp3_replies():
    from query_service.store import parse_levels

    assert dict(parse_levels([[b"100:5", 100.0], [b"101:7", 101.0]])) == {100: 5, 101: 7}
    assert dict(parse_levels([b"100:5", b"100", b"101:7", b"101"])) == {100: 5, 101: 7}
    assert dict(parse_levels([])) == {}


def test_resp_encoding_matches_redis_py():
    from redis.asyncio.connection import Connection

    from query_service.store import resp_encode

    cmds = [("SET", "k", 5), ("HSET", "h", "f", b"\x00\xffbin", "g", "é"), ("ZADD", "z", 0, "m|1"), ("MULTI",)]
    assert resp_encode(cmds) == b"".join(Connection().pack_commands(cmds))


def test_json_numbers_are_exact_and_never_use_an_exponent():
    from contracts.instruments import format_units, plain
    from contracts.views import ratio

    rng = random.Random(3)
    for unit in (Decimal("0.01"), Decimal("0.00000001"), Decimal("1E-10"), Decimal("0.001"), Decimal("0.5"),
                 Decimal("5"), Decimal("1")):
        for n in [0, 1, -1, 10, 100, 12345678901234, -987654321] + [rng.randint(-10**15, 10**15) for _ in range(2000)]:
            text = format_units(n, unit).decode()
            assert "E" not in text and text == format(plain(unit * n), "f"), (unit, n, text)
            assert Decimal(text) == unit * n
    assert format_units(1, Decimal("0.00000001")) == b"0.00000001"
    assert bytes(ratio(2, 3, Decimal("0.01"))) == b"0.006667"  # 2/3 tick, to 1/10,000 of a tick, half-even
    assert bytes(ratio(1, 8, Decimal("0.0001"))) == b"0.0000125"


def test_consuming_the_book_projects_the_same_as_copying_it():
    # The projector hands its cached book to project(consume_book=True); the result must be
    # exactly the pure projection, batch after batch, and the pure path must leave its
    # input untouched.
    events = OrderFlow(seed=23).run(400)
    s = DictStore()
    for i in range(0, len(events), 9):
        chunk = events[i : i + 9]
        pure_in = s.state_for(chunk)
        levels_before = (dict(pure_in.bids), dict(pure_in.asks))
        pure, pure_delta = project(pure_in, chunk)
        assert (dict(pure_in.bids), dict(pure_in.asks)) == levels_before
        consumed_in = s.state_for(chunk)
        fast, fast_delta = project(consumed_in, chunk, consume_book=True)
        assert fast.bids is consumed_in.bids and fast.asks is consumed_in.asks
        assert (dict(fast.bids), dict(fast.asks)) == (dict(pure.bids), dict(pure.asks))
        assert (fast_delta.levels, fast_delta.old_levels, fast_delta.seq) == (
            pure_delta.levels, pure_delta.old_levels, pure_delta.seq)
        s.apply(chunk)


def test_consuming_the_records_projects_the_same_as_copying_them():
    # The projector hands the order records it just read to project(consume_records=True): the
    # result must be exactly the pure projection, which must leave its input's records untouched.
    from query_service.projection import _copy_order

    events = OrderFlow(seed=29).run(400)
    s = DictStore()
    for i in range(0, len(events), 9):
        chunk = events[i : i + 9]
        pure_in = s.state_for(chunk)
        records_before = {k: _copy_order(v) for k, v in pure_in.orders.items()}
        pure, pure_delta = project(pure_in, chunk)
        assert pure_in.orders == records_before
        consumed_in = s.state_for(chunk)
        consumed_in.orders = {k: _copy_order(v) for k, v in consumed_in.orders.items()}  # as read from Redis
        fast, fast_delta = project(consumed_in, chunk, consume_book=True, consume_records=True)
        assert fast.orders == pure.orders
        assert (fast_delta.orders, fast_delta.index_add, fast_delta.index_close, fast_delta.positions) == (
            pure_delta.orders, pure_delta.index_add, pure_delta.index_close, pure_delta.positions)
        s.apply(chunk)
