"""The records the projector keeps in Redis, in integers (ticks, lots, ticks*lots, ns).

They are stored compactly (JSON arrays / colon-separated integers) and turned into the
API's decimals only when rendered (query_service.render / query_service.views).

JSON, not msgpack: msgpack holds at most 64-bit integers, and a cost or notional in
ticks*lots does not fit (BTC-USD allows 1e9 ticks x 1e11 lots = 1e20 in ONE fill), so one
large trade made every replica fail the batch forever. JSON integers have no size limit.
Records written as msgpack by an older version are still read (first byte is not '[').
"""

from __future__ import annotations

import msgspec

from contracts.enums import CLOSED_STATUSES

STOP_TYPES = frozenset({"stop_limit", "stop_market"})
LIMIT_TYPES = frozenset({"limit", "stop_limit"})

# Where an order is with respect to the book.
BOOK_OFF = 0  # not in the book (pending stop, closed)
BOOK_RESTING = 1  # counted in its price level
BOOK_TAKING = 2  # accepted/triggered/amended onto a crossing price and still matching

RESOLUTIONS = (60, 300, 900, 3600)  # bucket sizes in seconds: 1m (analytics) and candles
CANDLE_INTERVALS = {"1m": 60, "5m": 300, "15m": 900, "1h": 3600}


class OrderRec(msgspec.Struct, array_like=True):
    order_id: str
    client_id: str
    instrument: str
    side: str
    order_type: str
    price: int | None  # ticks (limit price; None for market/stop_market)
    quantity: int  # lots, total
    filled_quantity: int  # lots
    cost: int  # sum of price*qty of its fills (ticks*lots)
    status: str
    tif: str
    post_only: bool
    created_ts: int
    updated_ts: int
    seq: int  # seq of the last event that changed it
    remaining: int  # open lots (0 once closed)
    book: int = BOOK_OFF
    stop_price: int | None = None
    reject_reason: str | None = None
    cancel_reason: str | None = None
    display_quantity: int | None = None  # iceberg: display quantity (lots)
    shown: int = 0  # iceberg at rest: the part the public book shows (lots)
    expire_ts: int | None = None  # GTD
    client_order_id: str | None = None  # the owner's own id (records before it existed lack it)

    @property
    def visible(self) -> int:
        """What this order adds to its public price level while it rests."""
        return self.shown if self.display_quantity else self.remaining

    @property
    def closed(self) -> bool:
        return self.status in CLOSED_STATUSES

    @property
    def index_member(self) -> str:
        # Lexicographic zset member: newest first = reverse lex order; ties broken by id.
        return f"{self.created_ts:019d}|{self.order_id}"


class Position(msgspec.Struct, array_like=True):
    """Average-cost position of one client in one instrument.

    net: signed lots (long > 0). cost: the cost basis of the open position in ticks*lots,
    with the sign of net (a short's basis is the proceeds it was opened for), so that
    avg price = cost / net and unrealized = mark * net - cost. realized: ticks*lots.
    """

    net: int = 0
    cost: int = 0
    realized: int = 0
    updated_ts: int = 0
    volume: int = 0  # lots traded (both sides), for information


class Bucket(msgspec.Struct):
    """Trades in [start, start + resolution): OHLC in ticks, qty in lots, notional ticks*lots."""

    start: int  # epoch seconds
    count: int
    qty: int
    notional: int
    sum_price: int
    low: int
    high: int
    open: int
    close: int

    def pack(self) -> str:
        return (
            f"{self.start}:{self.count}:{self.qty}:{self.notional}:{self.sum_price}"
            f":{self.low}:{self.high}:{self.open}:{self.close}"
        )

    @classmethod
    def unpack(cls, raw: bytes | str) -> "Bucket":
        if isinstance(raw, bytes):
            raw = raw.decode()
        return cls(*map(int, raw.split(":")))


class LastTrade(msgspec.Struct, array_like=True):
    price: int
    quantity: int
    ts: int
    seq: int
    taker_side: str


_enc = msgspec.json.Encoder()
_order_dec = msgspec.json.Decoder(OrderRec)
_pos_dec = msgspec.json.Decoder(Position)
_last_dec = msgspec.json.Decoder(LastTrade)
_legacy = {t: msgspec.msgpack.Decoder(t) for t in (OrderRec, Position, LastTrade)}
_JSON_ARRAY = 0x5B  # '['


def pack(rec: OrderRec | Position | LastTrade) -> bytes:
    return _enc.encode(rec)


def unpack_order(raw: bytes) -> OrderRec:
    return _order_dec.decode(raw) if raw[0] == _JSON_ARRAY else _legacy[OrderRec].decode(raw)


def unpack_position(raw: bytes) -> Position:
    return _pos_dec.decode(raw) if raw[0] == _JSON_ARRAY else _legacy[Position].decode(raw)


def unpack_last(raw: bytes) -> LastTrade:
    return _last_dec.decode(raw) if raw[0] == _JSON_ARRAY else _legacy[LastTrade].decode(raw)


def bucket_start(ts_ns: int, resolution: int) -> int:
    s = ts_ns // 1_000_000_000
    return s - s % resolution
