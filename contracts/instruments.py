"""Instrument specs and the exact conversion between API decimals and engine integers.

The engine only sees integer ticks (price) and lots (quantity). Decimals from clients are
converted here, at the edge, and anything off the grid, non-finite, <= 0 or outside the
instrument's limits is refused with a field-level error before it reaches the engine.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Optional

import msgspec

DEFAULT_INSTRUMENTS_FILE = Path(__file__).resolve().parent.parent / "config" / "instruments.json"


class ConversionError(ValueError):
    """An input value that cannot become ticks/lots. `code` and `field` go to the client."""

    def __init__(self, code: str, field: str, message: str):
        super().__init__(message)
        self.code = code
        self.field = field
        self.message = message


class InstrumentSpec(msgspec.Struct, frozen=True):
    symbol: str
    base: str
    quote: str
    tick_size: Decimal
    lot_size: Decimal
    min_quantity: Decimal
    max_quantity: Decimal
    max_price: Decimal
    # Pre-trade risk (issue 20), optional: the largest price x quantity of one order (quote
    # currency) and the largest net position one client may hold (base quantity).
    max_order_notional: Optional[Decimal] = None
    max_position: Optional[Decimal] = None

    def risk_units(self) -> tuple[int, int]:
        """(max order notional in ticks*lots, max position in lots); 0 = no limit."""
        notional = int(self.max_order_notional / (self.tick_size * self.lot_size)) if self.max_order_notional else 0
        position = int(self.max_position / self.lot_size) if self.max_position else 0
        return notional, position

    # -- to integers (edge -> engine)
    def price_to_ticks(self, value: object, field: str = "price") -> int:
        return _to_units(value, self.tick_size, field, "price", None, self.max_price)

    def quantity_to_lots(self, value: object, field: str = "quantity") -> int:
        return _to_units(value, self.lot_size, field, "quantity", self.min_quantity, self.max_quantity)

    # -- to decimals (engine -> edge)
    def ticks_to_price(self, ticks: int) -> Decimal:
        return plain(self.tick_size * ticks)

    def lots_to_quantity(self, lots: int) -> Decimal:
        return plain(self.lot_size * lots)

    # -- JSON numbers straight from integers (hot path of every response): exact, no Decimal
    def price_json(self, ticks: int) -> msgspec.Raw:
        return _json_number(ticks, self.tick_size)

    def quantity_json(self, lots: int) -> msgspec.Raw:
        return _json_number(lots, self.lot_size)

    def notional_json(self, ticks_times_lots: int) -> msgspec.Raw:
        """A sum of price*quantity products (ticks*lots) as an exact quote amount."""
        return msgspec.Raw(format_units(ticks_times_lots, self.tick_size * self.lot_size))

    def notional(self, ticks_times_lots: int) -> Decimal:
        """A sum of price*quantity products (ticks*lots) as an exact quote amount."""
        return plain(self.tick_size * self.lot_size * ticks_times_lots)


_UNIT_CACHE: dict[Decimal, tuple[int, int]] = {}


_RAW_CACHE: dict[Decimal, dict[int, msgspec.Raw]] = {}
# Encodings remembered per unit. ~184 B an entry: the former 100,000 per unit (a cache of every
# cumulative book quantity ever rendered fills that) was up to ~18 MB per unit and process,
# a large part of the command service's and query replicas' growth over a soak (issue 18).
# The hot values (the top levels, round lots) fit in a few thousand.
RAW_CACHE_MAX = 4096


def _json_number(n: int, unit: Decimal) -> msgspec.Raw:
    # Prices and sizes repeat a lot (book levels, round lots): remember their encodings.
    cache = _RAW_CACHE.get(unit)
    if cache is None:
        cache = _RAW_CACHE[unit] = {}
    raw = cache.get(n)
    if raw is None:
        if len(cache) >= RAW_CACHE_MAX:
            cache.clear()
        raw = cache[n] = msgspec.Raw(format_units(n, unit))
    return raw


def format_units(n: int, unit: Decimal) -> bytes:
    """n * unit as a plain JSON number (no exponent, no trailing zeros), by integer math."""
    spec = _UNIT_CACHE.get(unit)
    if spec is None:
        sign, digits, exponent = unit.normalize().as_tuple()
        assert isinstance(exponent, int), "instrument units are finite"
        mantissa = int("".join(map(str, digits)))
        if exponent >= 0:
            mantissa *= 10**exponent
            exponent = 0
        spec = _UNIT_CACHE[unit] = (mantissa, -exponent)
    mantissa, places = spec
    v = n * mantissa
    if places == 0:
        return str(v).encode()
    neg = v < 0
    text = str(-v if neg else v).rjust(places + 1, "0")
    whole, frac = text[:-places], text[-places:].rstrip("0")
    out = f"{whole}.{frac}" if frac else whole
    return ("-" + out if neg else out).encode()


def plain(value: Decimal) -> Decimal:
    """Drop trailing zeros and never use an exponent, so JSON shows 70150.5 and 100."""
    if value == 0:
        return Decimal(0)
    value = value.normalize()
    sign, digits, exponent = value.as_tuple()
    if isinstance(exponent, int) and exponent > 0:
        value = value.quantize(Decimal(1))
    return value


_DECIMAL_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\Z")


def to_decimal(value: object, field: str) -> Decimal:
    """JSON number, decimal string or int -> Decimal. Floats are refused: by the time a
    float exists the exact value the client wrote is gone (decoders give us Decimals)."""
    if isinstance(value, bool) or value is None:
        raise ConversionError("invalid_type", field, f"{field} must be a number or a decimal string")
    if isinstance(value, Decimal):
        dec = value
    elif isinstance(value, int):
        dec = Decimal(value)
    elif isinstance(value, str):
        # ASCII decimal text only: Decimal() alone also takes "1_000", other scripts' digits
        # (Arabic-Indic), surrounding spaces, exponents and NaN/Infinity.
        if len(value) > 64 or not _DECIMAL_TEXT.match(value):
            raise ConversionError("invalid_number", field, f"{field} is not a decimal number (digits and one '.')")
        try:
            dec = Decimal(value)
        except InvalidOperation:
            raise ConversionError("invalid_number", field, f"{field} is not a valid decimal") from None
    elif isinstance(value, float):
        # Only reached by callers that bypass the Decimal decoders; repr() is the
        # shortest string that round-trips, i.e. what the client most likely wrote.
        dec = Decimal(repr(value))
    else:
        raise ConversionError("invalid_type", field, f"{field} must be a number or a decimal string")
    if not dec.is_finite():
        raise ConversionError("invalid_number", field, f"{field} must be finite")
    return dec


def _to_units(value: object, unit: Decimal, field: str, what: str, minimum: Decimal | None,
              maximum: Decimal | None) -> int:
    dec = to_decimal(value, field)
    if dec <= 0:
        raise ConversionError("must_be_positive", field, f"{field} must be greater than 0")
    if dec.adjusted() > 30:
        raise ConversionError("out_of_range", field, f"{field} is too large (max {maximum})")
    if maximum is not None and dec > maximum:
        raise ConversionError("out_of_range", field, f"{field} must be at most {maximum}")
    if minimum is not None and dec < minimum:
        raise ConversionError("out_of_range", field, f"{field} must be at least {minimum}")
    units, rest = divmod(dec, unit)
    if rest != 0:
        code = "off_tick" if what == "price" else "off_lot"
        raise ConversionError(code, field, f"{field} must be a multiple of {unit}")
    return int(units)


class Instruments:
    """The instrument table, read once from config/instruments.json (or EXCHANGE_INSTRUMENTS_FILE)."""

    def __init__(self, specs: list[InstrumentSpec]):
        self.by_symbol = {s.symbol: s for s in specs}

    def __contains__(self, symbol: object) -> bool:
        return symbol in self.by_symbol

    def __iter__(self) -> Iterator[InstrumentSpec]:
        return iter(self.by_symbol.values())

    def __len__(self) -> int:
        return len(self.by_symbol)

    def get(self, symbol: str) -> InstrumentSpec | None:
        return self.by_symbol.get(symbol)

    @property
    def symbols(self) -> list[str]:
        return list(self.by_symbol)


def load_instruments(path: str | os.PathLike[str] | None = None) -> Instruments:
    path = Path(path or os.environ.get("EXCHANGE_INSTRUMENTS_FILE") or DEFAULT_INSTRUMENTS_FILE)
    specs = msgspec.json.decode(path.read_bytes(), type=list[InstrumentSpec])
    for s in specs:
        for name in ("tick_size", "lot_size", "min_quantity", "max_quantity", "max_price"):
            if getattr(s, name) <= 0:
                raise ValueError(f"{path}: {s.symbol}.{name} must be > 0")
        for name in ("max_order_notional", "max_position"):
            if getattr(s, name) is not None and getattr(s, name) <= 0:
                raise ValueError(f"{path}: {s.symbol}.{name} must be > 0")
        if s.min_quantity % s.lot_size or s.max_quantity % s.lot_size:
            raise ValueError(f"{path}: {s.symbol} min/max quantity must be multiples of lot_size")
    return Instruments(specs)


def instruments_file_setting(env: Mapping[str, str] | None = None) -> str | None:
    """EXCHANGE_INSTRUMENTS_FILE, checked at settings time: a file that does not load stops the
    service with one line naming the variable (contracts.env.SettingError)."""
    from contracts.env import SettingError

    name = "EXCHANGE_INSTRUMENTS_FILE"
    value = (os.environ if env is None else env).get(name) or None
    if value is not None:
        try:
            load_instruments(value)
        except (OSError, ValueError, msgspec.DecodeError) as exc:
            raise SettingError(name, value, f"a readable instruments file ({exc})") from None
    return value
