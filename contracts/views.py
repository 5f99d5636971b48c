"""The API's order and trade shapes and its number rules, rendered from integers (pure, no I/O).

One definition for both services: the command service renders an engine OrderState or an
`orders` row, the query service its projected order record; every number is exact text from
integer ticks and lots (InstrumentSpec.price_json/quantity_json/notional_json). Ratios (average
price, VWAP, mean price) are rationals: rounded half-even to 1/10,000 of the tick (BTC-USD:
0.000001), a shown figure, never a balance.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import Any

import msgspec

from contracts.api import iso_ms
from contracts.instruments import InstrumentSpec, plain

ZERO = msgspec.Raw(b"0")
RATIO_EXTRA_PLACES = 4
_ctx = Context(prec=80, rounding=ROUND_HALF_EVEN)  # ticks*lots sums exceed the default 28 digits


def dec_json(d: Decimal) -> msgspec.Raw:
    return msgspec.Raw(format(plain(d), "f").encode())


def ratio(numer: int, denom: int, unit: Decimal) -> msgspec.Raw:
    """numer/denom * unit, rounded half-even to unit's exponent - 4 places."""
    if denom == 0:
        return ZERO
    q = _ctx.divide(_ctx.multiply(Decimal(numer), unit), Decimal(denom))
    exponent = unit.as_tuple().exponent
    assert isinstance(exponent, int)
    return dec_json(q.quantize(Decimal(1).scaleb(exponent - RATIO_EXTRA_PLACES), rounding=ROUND_HALF_EVEN,
                               context=_ctx))


def price_ratio(spec: InstrumentSpec, ticks_times_lots: int, lots: int) -> msgspec.Raw:
    """An average price: a sum of price*qty (ticks*lots) over a quantity (lots)."""
    return ratio(ticks_times_lots, lots, spec.tick_size)


def order_view(spec: InstrumentSpec, o: Any, seq: int | None = None) -> dict[str, Any]:
    """An order in the API's shape, from anything with the order's attributes: the engine's
    OrderState, an `orders` row (OrderRow), or the query side's projected record (which also
    passes its seq). Enum members go to the encoder as they are (a str Enum encodes as its value)."""
    price_json, qty_json = spec.price_json, spec.quantity_json
    price, quantity, filled = o.price, o.quantity, o.filled_quantity
    created, updated = o.created_ts, o.updated_ts
    created_at = iso_ms(created)
    view = {
        "order_id": o.order_id,
        # the owner's own id (null when none); order views are private, so it never reaches
        # public market data (trades and books carry server order ids only)
        "client_order_id": getattr(o, "client_order_id", None),
        "client_id": o.client_id,
        "instrument": o.instrument,
        "side": o.side,
        "type": o.order_type,
        "price": price_json(price) if price is not None else None,
        "quantity": qty_json(quantity),
        "filled_quantity": qty_json(filled),
        # what is not filled (also after a cancel)
        "remaining_quantity": qty_json(quantity - filled),
        "status": o.status,
        "time_in_force": o.tif,
        "post_only": o.post_only,
        "average_price": price_ratio(spec, o.cost, filled) if filled else None,
        "created_at": created_at,
        "updated_at": created_at if updated // 1_000_000 == created // 1_000_000 else iso_ms(updated),
    }
    if o.reject_reason:
        view["reject_reason"] = o.reject_reason
    if o.stop_price is not None:
        view["stop_price"] = price_json(o.stop_price)
    cancel_reason = getattr(o, "cancel_reason", None)
    if cancel_reason:
        view["cancel_reason"] = cancel_reason  # user, cancel_all, expired, cancel_after, cancel_on_disconnect, ...
    display = getattr(o, "display_quantity", None)
    if display:  # an iceberg, as its owner sees it; public views only ever count the shown part
        view["display_quantity"] = qty_json(display)
        shown = getattr(o, "shown", None)  # not kept in the `orders` table
        if shown is not None:
            view["shown_quantity"] = qty_json(shown)
    expire_ts = getattr(o, "expire_ts", None)
    if expire_ts is not None:
        view["expire_time"] = iso_ms(expire_ts)
    if seq is not None:
        view["seq"] = seq
    return view


def trade_view(spec: InstrumentSpec, t: Any) -> dict[str, Any]:
    """A TradeExecuted event in the API's trade shape."""
    taker_buys = t.taker_side.value == "buy"
    return {
        "trade_id": t.trade_id,
        "buy_order_id": t.taker_order_id if taker_buys else t.maker_order_id,
        "sell_order_id": t.maker_order_id if taker_buys else t.taker_order_id,
        "instrument": t.instrument,
        "price": spec.price_json(t.price),
        "quantity": spec.quantity_json(t.quantity),
        "taker_side": t.taker_side.value,
        "timestamp": iso_ms(t.ts),
        "seq": t.seq,
    }
