"""The API edge shared by both services: the one error type and its mapping to an answer,
the time format, and the JSON encoder."""

from __future__ import annotations

import calendar
import logging
import re
from datetime import datetime, timezone

import msgspec


class ErrorBody(msgspec.Struct, frozen=True, omit_defaults=True):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(msgspec.Struct, frozen=True):
    error: ErrorBody


def error(code: str, message: str, field: str | None = None) -> dict[str, dict[str, str]]:
    """The API's error shape: {"error": {"code", "message", "field"?}}."""
    body = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return {"error": body}


class ApiError(Exception):
    """Anything a client can get wrong, or a state it must wait out: an HTTP status, a stable
    code, a message, the field at fault, extra headers (Retry-After). Raised at the edge of
    either service; rejections inside the engine are result codes, never this."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers or {}

    def body(self) -> bytes:
        return json_encoder.encode(error(self.code, self.message, self.field))


def bad_request(code: str, message: str, field: str | None = None) -> ApiError:
    return ApiError(400, code, message, field)


def unavailable(message: str = "a backing store is unavailable; retry") -> ApiError:
    return ApiError(503, "unavailable", message, headers={"Retry-After": "1"})


INTERNAL = ApiError(500, "internal", "internal error")


def body_too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"request body over {limit} bytes")

# The framework's own HTTP errors (no route, wrong method, a body it cannot read) in our shape.
_FRAMEWORK_CODES = {400: "invalid_json", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                    405: "method_not_allowed", 413: "payload_too_large", 429: "rate_limited"}


def framework_error(status: int, detail: object) -> ApiError:
    """A web framework's HTTPException as an ApiError (its 400s come from a body that does not decode)."""
    return ApiError(status, _FRAMEWORK_CODES.get(status, "error"), detail if isinstance(detail, str) else str(detail))

_log = logging.getLogger("exchange.api")


def error_answer(exc: BaseException, unavailable_errors: tuple[type[BaseException], ...] = (),
                 where: str = "") -> ApiError:
    """The one mapping from an exception to what the client is told, used by every route of
    both services (fast ASGI paths, framework handlers, WebSocket and NATS answers): an
    ApiError as it is; a backing store that cannot be reached (the caller names its error
    types) 503 with Retry-After; anything else 500, logged with its traceback.

    An ApiError loses its traceback here: it is an answer, never logged, and the caller keeps it
    in a local of a frame that is on that very traceback (`err = error_answer(exc)`), a cycle
    (error -> traceback -> frame -> error) that only the cycle collector frees. The services run
    it rarely (gc thresholds raised for latency, see command_service/__main__.py), so in a soak
    every 4xx answer's frames stayed in memory: ~6,000 tracebacks and frames held after two
    minutes at ~400 commands/s (a cancel of an order already filled is a 409)."""
    if isinstance(exc, ApiError):
        exc.__traceback__ = None
        return exc
    if isinstance(exc, (ConnectionError, OSError, TimeoutError) + unavailable_errors):
        return unavailable()
    _log.error("unhandled error %s", where, exc_info=exc)
    return INTERNAL


_seconds: dict[int, str] = {}


def iso_ms(ts_ns: int) -> str:
    """ns since epoch -> ISO 8601 UTC with milliseconds and Z (2024-01-01T00:00:00.000Z).
    The date part is cached per second: the projector renders thousands of stamps a second,
    nearly all within the same few seconds."""
    ms = ts_ns // 1_000_000
    sec, rem = divmod(ms, 1000)
    head = _seconds.get(sec)
    if head is None:
        if len(_seconds) > 4096:
            _seconds.clear()
        head = _seconds[sec] = datetime.fromtimestamp(sec, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.")
    return f"{head}{rem:03d}Z"


_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?"
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))\Z")


def parse_iso(value: str) -> int:
    """RFC 3339 (a date, a time and Z or an offset; up to ns) -> ns since epoch, years 1970-9999.
    Raises ValueError for anything else: datetime.fromisoformat alone also takes week dates,
    basic formats, dates without a time and naive times, which a client may not mean."""
    m = _RFC3339.match(value) if isinstance(value, str) else None
    if m is None:
        raise ValueError("not an RFC 3339 time")
    y, mo, d, h, mi, s, frac, z, sign, oh, om = m.groups()
    offset = 0 if z else (1 if sign == "+" else -1) * (int(oh) * 60 + int(om))
    if not (1970 <= int(y) and int(oh or 0) < 24 and int(om or 0) < 60):
        raise ValueError("time out of range")
    dt = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), tzinfo=timezone.utc)
    ns = (calendar.timegm(dt.timetuple()) - offset * 60) * 1_000_000_000 + int((frac or "0").ljust(9, "0"))
    if ns < 0:
        raise ValueError("time before 1970")
    return ns


# JSON for HTTP/WS bodies: Decimals go out as JSON numbers (70150.5, never "70150.5").
json_encoder = msgspec.json.Encoder(decimal_format="number")
