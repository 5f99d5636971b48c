"""The API edge of the write side: request bodies in, engine commands out; engine state
out as API JSON with exact decimals.

Everything a client can get wrong is caught here and becomes a contracts.api.ApiError (a 4xx
with a code and the field) before anything reaches a sequencer.
"""

from __future__ import annotations

import hashlib
import re
import time
from decimal import Decimal
from typing import Annotated, Any, Optional
from urllib.parse import parse_qsl

import asyncpg
import msgspec

from contracts.api import ApiError, error_answer, parse_iso
from contracts.api import unavailable as unavailable_error
from contracts.enums import OrderType, Side, StpMode, TimeInForce
from contracts.instruments import ConversionError, Instruments, InstrumentSpec
from contracts.messages import (
    AmendOrder,
    CancelAll,
    CancelOrder,
    PlaceOrder,
)

# Ids travel in paths (/orders/{id}/cancel): the route words and the dot segments are not ids.
ID_PATTERN = r"^(?!(?:\.|\.\.|cancel-all|cancel-after)$)[A-Za-z0-9_.:\-]+$"
_ID_RE = re.compile(ID_PATTERN)
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=ID_PATTERN)]
ClientOrderId = Annotated[Id, msgspec.Meta(description=(
    "your own id for this order, unique among all your orders ever (409 duplicate_client_order_id when "
    "reused); other clients may use the same one. The order's order_id is always the server's; GET, "
    "cancel and amend accept either id."))]
OrderIdAlias = Annotated[Id, msgspec.Meta(description=(
    "deprecated (seed API): an alias of client_order_id on a new order; not both. The answer's order_id "
    "is the server's id; the one sent here comes back as client_order_id."))]
# Prices and quantities: kept as the client sent them (a JSON number arrives as an exact
# Decimal through the decoders' float_hook, a string as the string) and converted by
# contracts.instruments.to_decimal, which takes ASCII decimal text only. A `Decimal` field would
# let msgspec accept "1_000", Arabic-Indic digits, padding and "NaN" through Decimal().
Num = Annotated[Any, msgspec.Meta(extra_json_schema={"type": "string", "format": "decimal"})]
# Printable ASCII only: PostgreSQL text cannot hold NUL, and one such value in a batch
# would fail the whole batch's commit for every order in it.
Key = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[\x20-\x7e]+$")]


# What "PostgreSQL cannot be reached or is restarting" looks like from asyncpg: answered 503, not 500.
# InternalClientError: a pooled connection left mid-operation by a query the outage cut off.
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError, asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


def answer(exc: BaseException, where: str = "") -> ApiError:
    """What the client is told about exc (contracts.api.error_answer with the database's errors)."""
    return error_answer(exc, DATABASE_ERRORS, where)


def unavailable() -> ApiError:
    return unavailable_error("the database is unavailable; retry")


class OrderFields(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The optional fields of an order, shared by the HTTP body and the WebSocket message."""

    client_id: Optional[Id] = None
    instrument: str = "BTC-USD"
    price: Optional[Num] = None
    stop_price: Optional[Num] = None
    time_in_force: TimeInForce = TimeInForce.GTC
    post_only: bool = False
    self_trade_prevention: StpMode = StpMode.CANCEL_NEWEST
    client_order_id: Optional[ClientOrderId] = None  # the client's own id; unique per client
    order_id: Optional[OrderIdAlias] = None  # deprecated alias of client_order_id on place (seed API)
    idempotency_key: Optional[Key] = None
    display_quantity: Optional[Num] = None  # iceberg: shown at a time (GTC/GTD limit only)
    expire_time: Optional[str] = None  # GTD only: ISO 8601, in the future


class OrderRequest(OrderFields, kw_only=True):
    """POST /orders body (seed-compatible). Price and quantity accept a JSON number or a
    decimal string; both decode to an exact Decimal (never a float)."""

    side: Side
    type: OrderType
    quantity: Num


class CancelAllRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Without an instrument, `all: true` must say that every instrument is meant: an empty
    body (or one whose filters went astray, e.g. into a query string) cancels nothing."""

    all: Optional[bool] = None
    instrument: Optional[str] = None
    side: Optional[Side] = None
    client_id: Optional[Id] = None


class AmendRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /orders/{id}/amend: quantity = the new total (must exceed the filled quantity)."""

    quantity: Optional[Num] = None
    price: Optional[Num] = None


MAX_CANCEL_AFTER_MS = 86_400_000


class CancelAfterRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """POST /orders/cancel-after: the dead man's switch; 0 turns it off."""

    timeout_ms: Annotated[int, msgspec.Meta(ge=0, le=MAX_CANCEL_AFTER_MS)]
    client_id: Optional[Id] = None


_order_decoder = msgspec.json.Decoder(OrderRequest, float_hook=Decimal)
_cancel_all_decoder = msgspec.json.Decoder(CancelAllRequest)
_amend_decoder = msgspec.json.Decoder(AmendRequest, float_hook=Decimal)
_cancel_after_decoder = msgspec.json.Decoder(CancelAfterRequest)


def decode_amend(raw) -> AmendRequest:
    if isinstance(raw, (bytes, bytearray, memoryview, str)):
        return decode_json(_amend_decoder.decode, raw)
    return decode_json(lambda r: msgspec.convert(r, AmendRequest), raw)


def decode_cancel_after(raw) -> CancelAfterRequest:
    if isinstance(raw, (bytes, bytearray, memoryview, str)):
        if not raw.strip():
            raise ApiError(400, "missing_field", "timeout_ms is required", "timeout_ms")
        return decode_json(_cancel_after_decoder.decode, raw)
    return decode_json(lambda r: msgspec.convert(r, CancelAfterRequest), raw)


def decode_json(decode, raw):
    """Run a msgspec decode and turn every way a body can be bad into a 400: wrong shapes
    (ValidationError), broken JSON, invalid UTF-8 and nesting too deep to decode."""
    try:
        return decode(raw)
    except msgspec.ValidationError as exc:
        raise validation_error(str(exc)) from None
    except (msgspec.DecodeError, RecursionError, UnicodeError) as exc:
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {str(exc)[:200]}") from None


def decode_order_request(raw: bytes | Any) -> OrderRequest:
    """Decode a body (bytes) or an already-parsed dict (WebSocket/NATS) into an OrderRequest."""
    if isinstance(raw, (bytes, bytearray, memoryview, str)):
        return decode_json(_order_decoder.decode, raw)
    return decode_json(lambda r: msgspec.convert(r, OrderRequest), raw)


def decode_cancel_all(raw: bytes) -> CancelAllRequest:
    req = decode_json(_cancel_all_decoder.decode, raw) if raw.strip() else CancelAllRequest()
    return check_cancel_all(req)


def check_cancel_all(req: CancelAllRequest) -> CancelAllRequest:
    """Every instrument only when asked for: `all: true` (with no instrument)."""
    if req.instrument is None and req.all is not True:
        raise ApiError(400, "missing_field", 'send "all": true to cancel on every instrument, or an instrument',
                       "all")
    if req.instrument is not None and req.all is not None:
        raise ApiError(400, "invalid_field", '"all" and "instrument" exclude each other', "all")
    return req


def check_order_id(order_id: str) -> str:
    """An order id from a path: what a client could have been given (a NUL or other bytes
    PostgreSQL text cannot hold would otherwise fail the lookup with a 500)."""
    if len(order_id) > 64 or not _ID_RE.match(order_id):
        raise ApiError(400, "invalid_field", "order_id must be 1-64 characters of [A-Za-z0-9_.:-]", "order_id")
    return order_id


def check_json_body(content_type: str | None, body: bytes) -> None:
    """A body is read as JSON only when it says it is JSON (415 otherwise): a form post from a
    browser page or a text body must never be taken for an order. An empty body needs no type."""
    if not body.strip():
        return
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise ApiError(415, "unsupported_media_type",
                       f"the body must be application/json, not {media or 'untyped'}", "content-type")


def check_no_query(query_string: bytes | str, allowed: tuple[str, ...] = ()) -> None:
    """Order routes take no query parameters (their input is the JSON body): a parameter is
    refused rather than ignored, so a filter sent the wrong way never widens what a request does."""
    if not query_string:
        return
    text = query_string.decode("latin-1") if isinstance(query_string, (bytes, bytearray)) else query_string
    for name, _ in parse_qsl(text, keep_blank_values=True):
        if name not in allowed:
            raise ApiError(400, "unknown_field", f"unknown query parameter {name[:64]!r}", name[:64])


def validation_error(text: str) -> ApiError:
    """msgspec's 'Expected `str`, got `int` - at `$.side`' -> code + field."""
    message, _, where = text.partition(" - at `$.")
    field = where.rstrip("`").split(".")[0].split("[")[0] or None
    if message.startswith("Object contains unknown field"):
        name = message.split("`")[1]
        return ApiError(400, "unknown_field", f"unknown field {name!r}", name)
    if message.startswith("Object missing required field"):
        field = message.split("`")[1]
        return ApiError(400, "missing_field", f"{field} is required", field)
    return ApiError(400, "invalid_field", message, field)


def spec_for(instruments: Instruments, symbol: str | None, field: str = "instrument") -> InstrumentSpec:
    spec = instruments.get(symbol) if isinstance(symbol, str) else None
    if spec is None:
        raise ApiError(400, "unknown_instrument", f"unknown instrument {symbol!r}; one of {instruments.symbols}", field)
    return spec


def _convert(fn, value, field):
    try:
        return fn(value, field)
    except ConversionError as exc:
        raise ApiError(400, exc.code, exc.message, exc.field) from None


def client_order_id_of(req: OrderFields) -> str | None:
    """The client's own id of a new order: `client_order_id`, or the seed API's `order_id`
    (a deprecated alias: the order_id of an order is always the server's)."""
    coid = req.client_order_id
    if req.order_id is None:
        return coid
    if coid is not None:
        raise ApiError(400, "invalid_field", "send client_order_id only (order_id is its deprecated alias)",
                       "order_id")
    return req.order_id


def to_place(req: OrderRequest, client_id: str, order_id: str, spec: InstrumentSpec,
             client_order_id: str | None = None) -> PlaceOrder:
    """Validate an order request against its instrument; build the engine command (ts=0,
    stamped by the sequencer)."""
    t = req.type
    needs_price = t in (OrderType.LIMIT, OrderType.STOP_LIMIT)
    is_stop = t in (OrderType.STOP_LIMIT, OrderType.STOP_MARKET)
    if needs_price and req.price is None:
        raise ApiError(400, "missing_field", f"price is required for {t.value} orders", "price")
    if not needs_price and req.price is not None:
        raise ApiError(400, "invalid_field", f"price is not allowed for {t.value} orders", "price")
    if is_stop and req.stop_price is None:
        raise ApiError(400, "missing_field", f"stop_price is required for {t.value} orders", "stop_price")
    if not is_stop and req.stop_price is not None:
        raise ApiError(400, "invalid_field", "stop_price is only allowed for stop orders", "stop_price")
    tif = req.time_in_force
    resting_tif = tif is TimeInForce.GTC or tif is TimeInForce.GTD
    if req.post_only and (t != OrderType.LIMIT or not resting_tif):
        raise ApiError(400, "invalid_field", "post_only needs a GTC or GTD limit order", "post_only")
    price = _convert(spec.price_to_ticks, req.price, "price") if needs_price else None
    stop_price = _convert(spec.price_to_ticks, req.stop_price, "stop_price") if is_stop else None
    quantity = _convert(spec.quantity_to_lots, req.quantity, "quantity")
    display = expire_ts = None
    if req.display_quantity is not None:
        if t != OrderType.LIMIT or not resting_tif:
            raise ApiError(400, "invalid_field", "display_quantity needs a GTC or GTD limit order",
                           "display_quantity")
        display = _convert(spec.quantity_to_lots, req.display_quantity, "display_quantity")
        if display >= quantity:
            raise ApiError(400, "invalid_field", "display_quantity must be below quantity", "display_quantity")
    if tif is TimeInForce.GTD:
        expire_ts = parse_expire_time(req.expire_time)
        if t == OrderType.MARKET:
            raise ApiError(400, "invalid_field", "a market order cannot be GTD", "time_in_force")
    elif req.expire_time is not None:
        raise ApiError(400, "invalid_field", "expire_time needs time_in_force GTD", "expire_time")
    return PlaceOrder(
        order_id=order_id,
        client_id=client_id,
        instrument=spec.symbol,
        side=req.side,
        order_type=t,
        quantity=quantity,
        ts=0,
        price=price,
        tif=req.time_in_force,
        post_only=req.post_only,
        stp=req.self_trade_prevention,
        stop_price=stop_price,
        display_quantity=display,
        expire_ts=expire_ts,
        client_order_id=client_order_id,
    )


def parse_expire_time(value) -> int:
    if value is None:
        raise ApiError(400, "missing_field", "expire_time is required for GTD orders", "expire_time")
    try:
        ts = parse_iso(value)
    except (ValueError, TypeError, OverflowError):
        raise ApiError(400, "invalid_field", "expire_time must be an ISO 8601 time", "expire_time") from None
    if ts <= time.time_ns():
        raise ApiError(400, "invalid_field", "expire_time must be in the future", "expire_time")
    if ts >= 1 << 62:
        raise ApiError(400, "invalid_field", "expire_time is too far in the future", "expire_time")
    return ts


def to_amend(req: AmendRequest, order_id: str, client_id: str, spec: InstrumentSpec) -> AmendOrder:
    if req.quantity is None and req.price is None:
        raise ApiError(400, "missing_field", "quantity or price is required", "quantity")
    quantity = _convert(spec.quantity_to_lots, req.quantity, "quantity") if req.quantity is not None else None
    price = _convert(spec.price_to_ticks, req.price, "price") if req.price is not None else None
    return AmendOrder(order_id, client_id, spec.symbol, 0, quantity, price)


def request_hash(cmd: PlaceOrder, client_order_id: str | None) -> bytes:
    """What makes two requests with the same idempotency key 'the same request'."""
    canon = (
        cmd.client_id, cmd.instrument, cmd.side.value, cmd.order_type.value, cmd.price, cmd.quantity,
        cmd.tif.value, cmd.post_only, cmd.stp.value, cmd.stop_price, client_order_id,
    )
    if cmd.display_quantity is not None or cmd.expire_ts is not None:
        canon += (cmd.display_quantity, cmd.expire_ts)
    return hashlib.sha256(msgspec.msgpack.encode(canon)).digest()


# ------------------------------------------------------------------------ views


class OrderRow:
    """An `orders` row (asyncpg Record) read by attribute, like an OrderState, for contracts.views."""

    __slots__ = ("_r",)

    def __init__(self, row):
        self._r = row

    def __getattr__(self, name):
        try:
            return self._r[name]
        except KeyError:
            raise AttributeError(name) from None


def book_view(book, spec: InstrumentSpec, levels: int) -> dict:
    """Top levels with cumulative quantity. Built as one pre-encoded JSON fragment: it is
    in every POST /orders response, so it is the largest per-order rendering cost. Most
    commands change one side only (or levels below the top N): a side whose top rows equal
    the previous rendering's is not rendered again."""
    bids, asks = book.l2(levels)
    return {"instrument": spec.symbol, "bids": _side_json(spec, "bids", bids), "asks": _side_json(spec, "asks", asks),
            "seq": book.seq}


_SIDE_CACHE: dict[tuple[str, str], tuple[list, msgspec.Raw]] = {}


def _side_json(spec: InstrumentSpec, side: str, rows: list) -> msgspec.Raw:
    key = (spec.symbol, side)
    hit = _SIDE_CACHE.get(key)
    if hit is not None and hit[0] == rows:
        return hit[1]
    price_json, qty_json = spec.price_json, spec.quantity_json
    parts, cum = [], 0
    for price, qty in rows:
        cum += qty
        parts.append(b'{"price":%s,"quantity":%s,"cumulative":%s}' % (price_json(price), qty_json(qty),
                                                                    qty_json(cum)))
    raw = msgspec.Raw(b"[" + b",".join(parts) + b"]")
    _SIDE_CACHE[key] = (rows, raw)
    return raw



__all__ = [
    "ApiError", "OrderRequest", "CancelAllRequest", "AmendRequest", "CancelAfterRequest", "decode_amend",
    "decode_cancel_after", "to_amend", "decode_order_request", "to_place", "request_hash",
    "OrderRow", "book_view", "spec_for", "CancelOrder", "CancelAll",
]
