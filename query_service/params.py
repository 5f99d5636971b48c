"""Query-parameter parsing for the read API: every bad value becomes a 400 with code and field."""

from __future__ import annotations

import base64
import re

from contracts.api import bad_request, parse_iso
from contracts.instruments import Instruments, InstrumentSpec

DEFAULT_INSTRUMENT = "BTC-USD"
_INT = re.compile(r"[+-]?\d{1,18}")


def instrument(instruments: Instruments, value: str | None, field: str = "instrument") -> InstrumentSpec:
    symbol = DEFAULT_INSTRUMENT if value is None or value == "" else value
    spec = instruments.get(symbol)
    if spec is None:
        raise bad_request("unknown_instrument", f"unknown instrument {symbol!r}", field)
    return spec


def optional_instrument(instruments: Instruments, value: str | None, field: str = "instrument") -> InstrumentSpec | None:
    if value is None or value == "":
        return None
    return instrument(instruments, value, field)


def integer(value: str | None, field: str, default: int, lo: int, hi: int) -> int:
    if value is None or value == "":
        return default
    text = value.strip()
    if not _INT.fullmatch(text):
        raise bad_request("invalid_integer", f"{field} must be an integer", field)
    n = int(text)
    if n < lo or n > hi:
        raise bad_request("out_of_range", f"{field} must be between {lo} and {hi}", field)
    return n


def timestamp(value: str | None, field: str) -> int | None:
    """ISO 8601 -> ns since epoch (None when absent)."""
    if value is None or value == "":
        return None
    try:
        ns = parse_iso(value)
    except (ValueError, OverflowError, OSError):
        raise bad_request("invalid_time", f"{field} must be an ISO 8601 time, e.g. 2024-01-01T00:00:00.000Z", field) from None
    if ns < 0 or ns > 4_102_444_800 * 1_000_000_000:  # before 1970 or after 2100
        raise bad_request("invalid_time", f"{field} is out of range", field)
    return ns


def choice(value: str | None, field: str, allowed: tuple[str, ...], default: str | None) -> str | None:
    if value is None or value == "":
        return default
    if value not in allowed:
        raise bad_request("invalid_value", f"{field} must be one of {', '.join(allowed)}", field)
    return value


def encode_cursor(member: bytes) -> str:
    return base64.urlsafe_b64encode(member).decode().rstrip("=")


_CURSOR = re.compile(rb"\d{19}\|[^\x00]{1,300}")


def decode_cursor(value: str | None, field: str = "cursor") -> bytes | None:
    if value is None or value == "":
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except Exception:
        raise bad_request("invalid_cursor", "cursor is not a cursor this API returned", field) from None
    if not _CURSOR.fullmatch(raw):
        raise bad_request("invalid_cursor", "cursor is not a cursor this API returned", field)
    return raw
