"""The query side's API shapes beyond orders and trades (fills, positions, book levels, candles,
analytics, ticker), from integer ticks/lots (pure, no I/O). Orders, trades and the number rules
are contracts.views, shared with the command service."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

import msgspec

from contracts.api import iso_ms
from contracts.instruments import InstrumentSpec
from contracts.views import ZERO, dec_json, order_view, price_ratio, ratio, trade_view

__all__ = ["ZERO", "dec_json", "order_view", "trade_view", "P", "Q", "N"]


def P(spec: InstrumentSpec):
    return spec.price_json


def Q(spec: InstrumentSpec):
    return spec.quantity_json


def N(spec: InstrumentSpec):
    return spec.notional_json


def mean_price(spec: InstrumentSpec, sum_ticks: int, count: int) -> msgspec.Raw:
    return ratio(sum_ticks, count, spec.tick_size)


def price_or_none(spec: InstrumentSpec, ticks: int | None):
    return None if ticks is None else spec.price_json(ticks)


def signed_lots(spec: InstrumentSpec, lots: int):
    return spec.quantity_json(lots)


def trade_views(spec: InstrumentSpec, delta) -> list[dict]:
    """The delta's trades in API shape, rendered once per batch (Redis list and feed)."""
    tv = delta.rendered.get("trades")
    if tv is None:
        tv = delta.rendered["trades"] = [trade_view(spec, t) for t in delta.trades]
    return tv


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
