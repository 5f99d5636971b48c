"""The live feed on NATS: one message per applied batch per instrument (pure encoding).

The projector publishes it after its MULTI/EXEC succeeded; every query replica (projecting
or not) subscribes and relays the parts to its WebSocket subscribers.
`prev_seq`/`seq` are the instrument's last_seq before/after the batch: consecutive messages
chain, and a replica that sees prev_seq != the seq it holds knows it missed one.

What the projector sends is what it has already encoded for Redis, in integers: book levels as
(ticks, lots), orders as their packed records (the HSET value), trades as the API JSON of the
recent-trades list. The API text of a book update or an order update is rendered by the
replica that relays it, only when it has a subscriber for it (`book_changes_text`,
`order_update_text`): rendering every level and order of every batch in the projector, for
subscribers that mostly do not exist, was ~12 % of a projecting replica's CPU (issue 19).
"""

from __future__ import annotations

import msgspec

from contracts.api import json_encoder
from contracts.instruments import InstrumentSpec
from query_service.projection import ViewDelta
from query_service.records import pack, unpack_order
from query_service.render import order_view, trade_views

EMPTY = msgspec.Raw()  # omit_defaults compares by identity: always use this instance


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
    # Raw fields cannot be optional in msgspec: an empty Raw (len 0) means "absent".
    ticker: msgspec.Raw = EMPTY  # WS "ticker" message
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


def build_feed(spec: InstrumentSpec, delta: ViewDelta, ticker: dict | None, reset: bool = False) -> bytes:
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
        ticker=msgspec.Raw(enc({"type": "ticker", **ticker})) if ticker is not None else EMPTY,
        reset=reset,
    )
    return _feed_encoder.encode(msg)


def decode_feed(data: bytes) -> FeedMessage:
    return _feed_decoder.decode(data)


def encode_feed(msg: FeedMessage) -> bytes:
    return _feed_encoder.encode(msg)
