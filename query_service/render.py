"""Integer ticks/lots -> the API's exact decimals (pure, no I/O).

Sums and differences of ticks and lots are exact decimals (the instrument grid), written as
JSON numbers without exponent (msgspec.Raw). Ratios (average price, VWAP, mean price) are
rationals: they are rounded half-even to 1/10,000 of the tick (BTC-USD: 0.000001), like the
command service's average_price, and only at this edge.
"""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import ROUND_HALF_EVEN, Context, Decimal

import msgspec

from contracts.instruments import InstrumentSpec, plain

_seconds: dict[int, str] = {}


def iso_ms(ts_ns: int) -> str:
    """contracts.api.iso_ms with the date part cached per second (the projector renders
    thousands of timestamps a second, nearly all within the same few seconds)."""
    ms = ts_ns // 1_000_000
    sec, rem = divmod(ms, 1000)
    head = _seconds.get(sec)
    if head is None:
        if len(_seconds) > 4096:
            _seconds.clear()
        head = datetime.fromtimestamp(sec, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.")
        _seconds[sec] = head
    return f"{head}{rem:03d}Z"


_scalers: dict = {}
ZERO = msgspec.Raw(b"0")


def scaler(unit: Decimal):
    """n -> n * unit as a JSON number (msgspec.Raw): exact, never an exponent (0.00000001,
    not 1E-8), no trailing zeros - the same text as contracts' price_json/quantity_json,
    so both services write identical numbers. Built by integer math: the projector renders
    a few hundred thousand of these a second."""
    f = _scalers.get(unit)
    if f is not None:
        return f
    sign, digits, exponent = unit.normalize().as_tuple()
    mantissa = int("".join(map(str, digits)))
    if exponent >= 0:
        mantissa *= 10**exponent
        exponent = 0
    places = -exponent

    def f(n: int) -> msgspec.Raw:
        v = n * mantissa
        if places == 0:
            return msgspec.Raw(str(v).encode())
        neg = v < 0
        text = str(-v if neg else v).rjust(places + 1, "0")
        whole, frac = text[:-places], text[-places:].rstrip("0")
        out = f"{whole}.{frac}" if frac else whole
        return msgspec.Raw(("-" + out if neg and out != "0" else out).encode())

    _scalers[unit] = f
    return f


def P(spec: InstrumentSpec):
    return scaler(spec.tick_size)


def Q(spec: InstrumentSpec):
    return scaler(spec.lot_size)


def N(spec: InstrumentSpec):
    return scaler(spec.tick_size * spec.lot_size)


def dec_json(d: Decimal) -> msgspec.Raw:
    return msgspec.Raw(format(plain(d), "f").encode())


# A ratio may not terminate: it is rounded half-even to 1/10,000 of the unit (the command
# service shows average prices the same way), a shown figure, never a balance.
RATIO_EXTRA_PLACES = 4
_ctx = Context(prec=80, rounding=ROUND_HALF_EVEN)


def ratio(numer: int, denom: int, unit: Decimal) -> msgspec.Raw:
    """numer/denom * unit, rounded half-even to unit's exponent - 4 places."""
    if denom == 0:
        return ZERO
    q = _ctx.divide(_ctx.multiply(Decimal(numer), unit), Decimal(denom))
    exponent = unit.as_tuple().exponent - RATIO_EXTRA_PLACES
    return dec_json(q.quantize(Decimal(1).scaleb(exponent), rounding=ROUND_HALF_EVEN, context=_ctx))


def price_ratio(spec: InstrumentSpec, ticks_times_lots: int, lots: int) -> msgspec.Raw:
    """An average price: a sum of price*qty (ticks*lots) over a quantity (lots)."""
    return ratio(ticks_times_lots, lots, spec.tick_size)


def mean_price(spec: InstrumentSpec, sum_ticks: int, count: int) -> msgspec.Raw:
    return ratio(sum_ticks, count, spec.tick_size)


def price_or_none(spec: InstrumentSpec, ticks: int | None):
    return None if ticks is None else scaler(spec.tick_size)(ticks)


def signed_lots(spec: InstrumentSpec, lots: int):
    return scaler(spec.lot_size)(lots)



# --------------------------------------------------------------------------- API shapes


def order_view(spec: InstrumentSpec, o) -> dict:
    """An OrderRec in the API's order shape (plus remaining_quantity, avg_price, seq)."""
    d = {
        "order_id": o.order_id,
        "client_id": o.client_id,
        "instrument": o.instrument,
        "side": o.side,
        "type": o.order_type,
        "price": price_or_none(spec, o.price),
        "quantity": Q(spec)(o.quantity),
        "filled_quantity": Q(spec)(o.filled),
        # as the command service shows it: what is not filled (also after a cancel)
        "remaining_quantity": Q(spec)(o.quantity - o.filled),
        "average_price": price_ratio(spec, o.cost, o.filled) if o.filled else None,
        "status": o.status,
        "time_in_force": o.tif,
        "post_only": o.post_only,
        "created_at": iso_ms(o.created_ts),
        "updated_at": iso_ms(o.updated_ts),
        "seq": o.seq,
    }
    if o.stop_price is not None:
        d["stop_price"] = P(spec)(o.stop_price)
    if o.reject_reason:
        d["reject_reason"] = o.reject_reason
    if o.cancel_reason:
        d["cancel_reason"] = o.cancel_reason
    return d


def trade_views(spec: InstrumentSpec, delta) -> list[dict]:
    """The delta's trades in API shape, rendered once per batch (Redis list and feed)."""
    tv = delta.rendered.get("trades")
    if tv is None:
        tv = delta.rendered["trades"] = [trade_view(spec, t) for t in delta.trades]
    return tv


def trade_view(spec: InstrumentSpec, t) -> dict:
    """A TradeExecuted in the API's trade shape."""
    buy = t.taker_order_id if t.taker_side.value == "buy" else t.maker_order_id
    sell = t.maker_order_id if t.taker_side.value == "buy" else t.taker_order_id
    return {
        "trade_id": t.trade_id,
        "buy_order_id": buy,
        "sell_order_id": sell,
        "instrument": t.instrument,
        "price": P(spec)(t.price),
        "quantity": Q(spec)(t.quantity),
        "taker_side": t.taker_side.value,
        "timestamp": iso_ms(t.ts),
        "seq": t.seq,
    }


def fill_view(spec: InstrumentSpec, f) -> dict:
    t = f.trade
    return {
        "trade_id": t.trade_id,
        "order_id": f.order_id,
        "client_id": f.client_id,
        "instrument": t.instrument,
        "side": f.side,
        "role": f.role,
        "price": P(spec)(t.price),
        "quantity": Q(spec)(t.quantity),
        "notional": N(spec)(t.price * t.quantity),
        "timestamp": iso_ms(t.ts),
        "seq": t.seq,
    }


def position_view(spec: InstrumentSpec, instrument: str, p, mark: int | None) -> dict:
    from query_service.projection import unrealized

    return {
        "instrument": instrument,
        "net_quantity": signed_lots(spec, p.net),
        "total_cost": N(spec)(p.cost),
        "avg_price": price_ratio(spec, p.cost, p.net) if p.net else ZERO,
        "realized_pnl": N(spec)(p.realized),
        "unrealized_pnl": N(spec)(unrealized(p, mark)),
        "mark_price": price_or_none(spec, mark),
        "last_updated": iso_ms(p.updated_ts),
    }


def level_rows(spec: InstrumentSpec, levels, cumulative: bool) -> list[dict]:
    """[(ticks, lots)] best first -> [{price, quantity[, cumulative]}]."""
    out = []
    total = 0
    for ticks, lots in levels:
        row = {"price": P(spec)(ticks), "quantity": Q(spec)(lots)}
        if cumulative:
            total += lots
            row["cumulative"] = Q(spec)(total)
        out.append(row)
    return out


def aggregate_buckets(spec: InstrumentSpec, buckets, interval_s: int) -> tuple[list[dict], Decimal | None]:
    """Minute buckets (sorted by start) -> analytics aggregates per interval, overall VWAP."""
    groups: dict[int, list] = {}
    for b in buckets:
        groups.setdefault(b.start - b.start % interval_s, []).append(b)
    out = []
    all_qty = all_notional = 0
    for start in sorted(groups):
        bs = groups[start]
        count = sum(b.count for b in bs)
        qty = sum(b.qty for b in bs)
        notional = sum(b.notional for b in bs)
        sum_price = sum(b.sum_price for b in bs)
        all_qty += qty
        all_notional += notional
        out.append(
            {
                "time_bucket": iso_ms(start * 1_000_000_000),
                "trade_count": count,
                "total_quantity": Q(spec)(qty),
                "avg_price": mean_price(spec, sum_price, count),
                "min_price": P(spec)(min(b.low for b in bs)),
                "max_price": P(spec)(max(b.high for b in bs)),
                "open_price": P(spec)(bs[0].open),
                "close_price": P(spec)(bs[-1].close),
                "total_volume": N(spec)(notional),
                "vwap": price_ratio(spec, notional, qty),
            }
        )
    overall = price_ratio(spec, all_notional, all_qty) if all_qty else None
    return out, overall


def candle_view(spec: InstrumentSpec, b) -> dict:
    return {
        "time": iso_ms(b.start * 1_000_000_000),
        "open": P(spec)(b.open),
        "high": P(spec)(b.high),
        "low": P(spec)(b.low),
        "close": P(spec)(b.close),
        "volume": Q(spec)(b.qty),
        "quote_volume": N(spec)(b.notional),
        "trade_count": b.count,
        "vwap": price_ratio(spec, b.notional, b.qty),
    }


TICKER_WINDOW_S = 86400


def ticker_window(now_s: int) -> tuple[int, int]:
    """The rolling 24 h window at minute granularity: minute buckets from w0 up to h1 (the
    first full hour), hour buckets from h1 on. Returns (w0, h1)."""
    w0 = now_s - now_s % 60 - (TICKER_WINDOW_S - 60)
    h1 = -(-w0 // 3600) * 3600
    return w0, h1


def ticker_view(
    spec: InstrumentSpec,
    instrument: str,
    minute_buckets,
    hour_buckets,
    last,  # LastTrade | None
    best_bid: int | None,
    best_ask: int | None,
    seq: int,
    now_ns: int,
) -> dict:
    """24 h ticker from the 1m buckets in [w0, h1) and the 1h buckets from h1 on (sorted)."""
    bs = list(minute_buckets) + list(hour_buckets)
    d = {
        "instrument": instrument,
        "last_price": price_or_none(spec, last.price if last else None),
        "last_quantity": Q(spec)(last.quantity) if last else None,
        "last_trade_at": iso_ms(last.ts) if last else None,
        "best_bid": price_or_none(spec, best_bid),
        "best_ask": price_or_none(spec, best_ask),
        "open_24h": None,
        "high_24h": None,
        "low_24h": None,
        "volume_24h": ZERO,
        "quote_volume_24h": ZERO,
        "trade_count_24h": 0,
        "vwap_24h": None,
        "change_24h": None,
        "change_percent_24h": None,
        "seq": seq,
        "timestamp": iso_ms(now_ns),
    }
    if bs:
        qty = sum(b.qty for b in bs)
        notional = sum(b.notional for b in bs)
        open_ = bs[0].open
        close = bs[-1].close
        d.update(
            open_24h=P(spec)(open_),
            high_24h=P(spec)(max(b.high for b in bs)),
            low_24h=P(spec)(min(b.low for b in bs)),
            volume_24h=Q(spec)(qty),
            quote_volume_24h=N(spec)(notional),
            trade_count_24h=sum(b.count for b in bs),
            vwap_24h=price_ratio(spec, notional, qty),
            change_24h=P(spec)(close - open_),
            change_percent_24h=dec_json(
                (Decimal(close - open_) * 100 / Decimal(open_)).quantize(Decimal("0.0001"), rounding=ROUND_HALF_EVEN)
            ),
        )
    return d
