"""Shapes at the HTTP/WebSocket edge shared by both services: errors and time format."""

from __future__ import annotations

from datetime import datetime, timezone

import msgspec


class ErrorBody(msgspec.Struct, frozen=True, omit_defaults=True):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(msgspec.Struct, frozen=True):
    error: ErrorBody


def error(code: str, message: str, field: str | None = None) -> dict:
    """The API's error shape: {"error": {"code", "message", "field"?}}."""
    body = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return {"error": body}


_second_cache: list = [None, ""]


def iso_ms(ts_ns: int) -> str:
    """ns since epoch -> ISO 8601 UTC with milliseconds and Z (2024-01-01T00:00:00.000Z)."""
    ms = ts_ns // 1_000_000
    sec = ms // 1000
    if _second_cache[0] != sec:  # most stamps fall in the same second as the previous one
        _second_cache[1] = datetime.fromtimestamp(sec, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        _second_cache[0] = sec
    return f"{_second_cache[1]}.{ms % 1000:03d}Z"


def parse_iso(value: str) -> int:
    """ISO 8601 (with Z or offset; naive means UTC) -> ns since epoch. Raises ValueError."""
    text = value.strip()
    if text.endswith("Z") or text.endswith("z"):
        text = text[:-1] + "+00:00"
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


# JSON for HTTP/WS bodies: Decimals go out as JSON numbers (70150.5, never "70150.5").
json_encoder = msgspec.json.Encoder(decimal_format="number")
