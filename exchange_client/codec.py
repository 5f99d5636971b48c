"""Exact decimals in and out: Decimal goes out as a decimal string (the API accepts a string
or a number for every price and quantity), and every decimal field of an answer comes back
as a Decimal - JSON numbers are parsed straight to Decimal, never through a float."""

from __future__ import annotations

import json
from decimal import Decimal

# Fields of the API's answers that carry an exact decimal (an integer-looking one, e.g. a
# price of 70000, is a Decimal too; counts and seqs stay ints). The server writes decimals as
# JSON numbers, so a field missing here comes back as an int when its value is whole:
# tests/unit/test_client_routes.py checks this set against every decimal field of the
# OpenAPI and AsyncAPI documents.
DECIMAL_FIELDS = frozenset({
    "price", "quantity", "cumulative", "filled_quantity", "remaining_quantity", "average_price", "stop_price",
    "net_quantity", "total_cost", "avg_price", "realized_pnl", "unrealized_pnl", "total_quantity", "min_price",
    "max_price", "total_volume", "vwap", "overall_vwap", "open", "high", "low", "close", "volume", "last",
    "last_price", "change", "quote_volume", "tick_size", "lot_size", "min_quantity", "max_quantity",
    "best_bid", "best_ask", "notional", "fee", "net_cost", "mark_price",
    "visible_quantity", "display_quantity", "peak_size", "shown_quantity", "max_order_notional", "max_position",
    # ticker (24 h), analytics buckets, settlements
    "last_quantity", "open_24h", "high_24h", "low_24h", "volume_24h", "quote_volume_24h", "vwap_24h", "change_24h",
    "change_percent_24h", "open_price", "close_price", "net_quote", "bought_quantity", "sold_quantity",
})


def _fix(value, key=None):
    if isinstance(value, dict):
        return {k: _fix(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_fix(v, key) for v in value]
    if key in DECIMAL_FIELDS and isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    return value


def loads(text: str | bytes):
    """JSON -> Python with every decimal field a Decimal."""
    return _fix(json.loads(text, parse_float=Decimal))


def _default(o):
    if isinstance(o, Decimal):
        if not o.is_finite():
            raise ValueError(f"{o} is not a finite decimal")
        return format(o, "f")  # never an exponent: "0.00000001", not "1E-8"
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def dumps(obj) -> str:
    """Python -> JSON; a Decimal is written as a decimal string, a float is refused."""
    return json.dumps(_check(obj), default=_default, separators=(",", ":"))


def _check(obj):
    if isinstance(obj, float):
        raise TypeError("floats are not exact: pass a Decimal or a decimal string")
    if isinstance(obj, dict):
        for v in obj.values():
            _check(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _check(v)
    return obj
