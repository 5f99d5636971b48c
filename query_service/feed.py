"""The live feed on NATS: one message per applied batch per instrument (pure encoding).

The projector publishes it after its MULTI/EXEC succeeded; every query replica (projecting
or not) subscribes and relays the parts to its WebSocket subscribers. The parts are
pre-encoded WebSocket messages (msgspec.Raw), so a replica forwards them without re-encoding.
`prev_seq`/`seq` are the instrument's last_seq before/after the batch: consecutive messages
chain, and a replica that sees prev_seq != the seq it holds knows it missed one.
"""

from __future__ import annotations

import msgspec

from contracts.api import json_encoder
from contracts.instruments import InstrumentSpec
from query_service.projection import ViewDelta
from query_service.render import P, Q, order_view, trade_views

EMPTY = msgspec.Raw()  # omit_defaults compares by identity: always use this instance


class FeedMessage(msgspec.Struct, omit_defaults=True):
    instrument: str
    prev_seq: int
    seq: int
    ts: int = 0  # ts of the batch's last event (ns)
    # Raw fields cannot be optional in msgspec: an empty Raw (len 0) means "absent".
    book: msgspec.Raw = EMPTY  # JSON array of {side, price, quantity} (new level totals)
    trades: list[msgspec.Raw] = []  # WS "trade" messages, in seq order
    orders: list[tuple[str, msgspec.Raw]] = []  # (client_id, WS "order_update" message)
    ticker: msgspec.Raw = EMPTY  # WS "ticker" message
    reset: bool = False  # the instrument's views were rebuilt from scratch: resnapshot


_feed_encoder = msgspec.json.Encoder()
_feed_decoder = msgspec.json.Decoder(FeedMessage)


def book_changes(spec: InstrumentSpec, levels: dict) -> list[dict]:
    out = []
    for side, price in sorted(levels, key=lambda k: (k[0], -k[1] if k[0] == "buy" else k[1])):
        out.append(
            {
                "side": side,
                "price": P(spec)(price),
                "quantity": Q(spec)(levels[(side, price)]),
            }
        )
    return out


def build_feed(spec: InstrumentSpec, delta: ViewDelta, ticker: dict | None, reset: bool = False) -> bytes:
    enc = json_encoder.encode
    book = msgspec.Raw(enc(book_changes(spec, delta.levels))) if delta.levels else EMPTY
    trades = [msgspec.Raw(enc({"type": "trade", **tv})) for tv in trade_views(spec, delta)]
    orders = [
        (
            o.client_id,
            msgspec.Raw(
                enc({"type": "order_update", "instrument": delta.instrument, "seq": delta.seq, "order": order_view(spec, o, o.seq)})
            ),
        )
        for o in delta.orders.values()
    ]
    tick = msgspec.Raw(enc({"type": "ticker", **ticker})) if ticker is not None else EMPTY
    msg = FeedMessage(
        instrument=delta.instrument,
        prev_seq=delta.prev_seq,
        seq=delta.seq,
        ts=delta.last_ts,
        book=book,
        trades=trades,
        orders=orders,
        ticker=tick,
        reset=reset,
    )
    return _feed_encoder.encode(msg)


def decode_feed(data: bytes) -> FeedMessage:
    return _feed_decoder.decode(data)


def encode_feed(msg: FeedMessage) -> bytes:
    return _feed_encoder.encode(msg)
