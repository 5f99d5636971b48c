"""The live feed on NATS: one message per applied batch per instrument (pure encoding).

The projector publishes it after its MULTI/EXEC succeeded; every query replica (projecting
or not) subscribes and relays the parts to its WebSocket subscribers.
`prev_seq`/`seq` are the instrument's last_seq before/after the batch: consecutive messages
chain, and a replica that sees prev_seq != the seq it holds knows it missed one.

What the projector sends is what it has already encoded for Redis, in integers: book levels as
(ticks, lots), orders as their packed records (the HSET value), trades as the API JSON of the
recent-trades list, the ticker as the integer figures it is rendered from. The API text of a
book update, an order update or a ticker is rendered by the replica that relays it, only when it
has a subscriber for it (`book_changes_text`, `order_update_text`, `ticker_text`): rendering
every level and order of every batch in the projector, for subscribers that mostly do not exist,
was ~12 % of a projecting replica's busy samples (py-spy) and took the projector's batch path from
276k to 225k instructions per event (callgrind); the ticker (Decimal ratios) 225k -> 219k (issue 19).
"""

from __future__ import annotations

import msgspec

from contracts.api import json_encoder
from contracts.instruments import InstrumentSpec
from query_service.projection import ViewDelta
from query_service.records import Bucket, LastTrade, pack, unpack_order
from query_service.render import order_view, ticker_view, trade_views

EMPTY = msgspec.Raw()  # omit_defaults compares by identity: always use this instance


class TickerFigures(msgspec.Struct, array_like=True, frozen=True):
    """What the WS ticker of a batch with trades is rendered from (render.ticker_view), in
    integers: the 24 h window's buckets folded into one (count, qty, notional, low, high, open,
    close), the last trade, the best prices, the seq and time of the batch."""

    window: tuple[int, int, int, int, int, int, int] | None
    last: LastTrade | None
    best_bid: int | None
    best_ask: int | None
    seq: int
    ts: int

    @classmethod
    def of(cls, buckets: list[Bucket], last: LastTrade | None, best_bid: int | None, best_ask: int | None,
           seq: int, ts: int) -> "TickerFigures":
        """buckets: the window's minute then hour buckets, oldest first."""
        window = None
        if buckets:
            window = (sum(b.count for b in buckets), sum(b.qty for b in buckets), sum(b.notional for b in buckets),
                      min(b.low for b in buckets), max(b.high for b in buckets), buckets[0].open, buckets[-1].close)
        return cls(window, last, best_bid, best_ask, seq, ts)


def ticker_text(spec: InstrumentSpec, instrument: str, t: TickerFigures) -> str:
    """The WS ticker message: the same as ticker_view over the window's buckets (one bucket
    holding their sums, extremes, first open and last close renders the same)."""
    window = [] if t.window is None else [Bucket(0, t.window[0], t.window[1], t.window[2], 0, *t.window[3:])]
    view = ticker_view(spec, instrument, window, [], t.last, t.best_bid, t.best_ask, t.seq, t.ts)
    return json_encoder.encode({"type": "ticker", **view}).decode()


class FeedMessage(msgspec.Struct, omit_defaults=True):
    instrument: str
    prev_seq: int
    seq: int
    ts: int = 0  # ts of the batch's last event (ns)
    # New level totals (lots, 0 = gone) of the levels the batch changed, best first per side.
    bids: list[tuple[int, int]] = []  # (ticks, lots)
    asks: list[tuple[int, int]] = []
    trades: list[msgspec.Raw] = []  # WS "trade" messages, in seq order
    orders: list[tuple[str, msgspec.Raw]] = []  # (client_id, packed OrderRec: records.pack)
    ticker: TickerFigures | None = None  # batches with trades: rendered by ticker_text
    reset: bool = False  # the instrument's views were rebuilt from scratch: resnapshot


_feed_encoder = msgspec.json.Encoder()
_feed_decoder = msgspec.json.Decoder(FeedMessage)
_TRADE_PREFIX = b'{"type":"trade",'


def split_levels(levels: dict) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """ViewDelta.levels {(side, ticks): lots} -> (bids best first, asks best first)."""
    bids = sorted(((p, q) for (s, p), q in levels.items() if s == "buy"), reverse=True)
    asks = sorted((p, q) for (s, p), q in levels.items() if s == "sell")
    return bids, asks


def book_changes_text(spec: InstrumentSpec, m: FeedMessage) -> str | None:
    """The "changes" array of a WS orderbook update (bids first), None when the batch changed
    no level."""
    if not m.bids and not m.asks:
        return None
    price, qty = spec.price_json, spec.quantity_json
    out = [{"side": "buy", "price": price(p), "quantity": qty(q)} for p, q in m.bids]
    out += [{"side": "sell", "price": price(p), "quantity": qty(q)} for p, q in m.asks]
    return json_encoder.encode(out).decode()


def order_update_text(spec: InstrumentSpec, m: FeedMessage, raw: msgspec.Raw) -> str:
    o = unpack_order(bytes(raw))
    return json_encoder.encode(
        {"type": "order_update", "instrument": m.instrument, "seq": m.seq, "order": order_view(spec, o, o.seq)}
    ).decode()


def build_feed(spec: InstrumentSpec, delta: ViewDelta, ticker: TickerFigures | None, reset: bool = False) -> bytes:
    enc = json_encoder.encode
    bids, asks = split_levels(delta.levels) if delta.levels else ([], [])
    # the recent-trades list's JSON (store.delta_commands) with the WS message's type in front
    trades_json = delta.rendered.get("trades_json")
    if trades_json is None:
        trades_json = [enc(tv) for tv in trade_views(spec, delta)]
    packed = delta.rendered.get("orders_packed") or {}
    orders = [(o.client_id, msgspec.Raw(packed.get(oid) or pack(o))) for oid, o in delta.orders.items()]
    msg = FeedMessage(
        instrument=delta.instrument,
        prev_seq=delta.prev_seq,
        seq=delta.seq,
        ts=delta.last_ts,
        bids=bids,
        asks=asks,
        trades=[msgspec.Raw(_TRADE_PREFIX + j[1:]) for j in trades_json],
        orders=orders,
        ticker=ticker,
        reset=reset,
    )
    return _feed_encoder.encode(msg)


def decode_feed(data: bytes) -> FeedMessage:
    return _feed_decoder.decode(data)


def encode_feed(msg: FeedMessage) -> bytes:
    return _feed_encoder.encode(msg)
