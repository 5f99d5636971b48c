"""JSON Schemas of what the API answers (both services, HTTP and WebSocket): one definition
used by the command service's and the query service's OpenAPI documents and by the AsyncAPI
document of /ws and /stream. Objects allow more properties than they list, so adding a field
to a view is not a breaking change.

Exact decimals go out as JSON numbers (70150.5, never 0.30000000000000004); requests take a
JSON number or a decimal string."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

Schema = dict[str, Any]

DEC = {"type": "number", "description": "exact decimal (parse it as a decimal, not a float)", "examples": [70150.5]}
DEC_OR_NULL = {"anyOf": [DEC, {"type": "null"}]}
DEC_IN = {"anyOf": [{"type": "string", "format": "decimal"}, {"type": "number"}],
          "description": "exact decimal: a JSON number or a decimal string (\"70150.5\"), on the instrument's grid"}
TIME = {"type": "string", "format": "date-time", "description": "ISO 8601 UTC with milliseconds and Z",
        "examples": ["2026-12-06T04:00:00.000Z"]}
TIME_OR_NULL = {"anyOf": [TIME, {"type": "null"}]}
STR = {"type": "string"}
INT = {"type": "integer"}
SEQ = {"type": "integer", "minimum": 0, "description": "the instrument's journal sequence number"}
SIDE = {"type": "string", "enum": ["buy", "sell"]}
STATUS = {"type": "string", "enum": ["pending", "open", "partially_filled", "filled", "cancelled", "rejected"]}
TIF = {"type": "string", "enum": ["GTC", "IOC", "FOK", "GTD"]}


def obj(props: Schema, required: list[str] | None = None, description: str | None = None) -> Schema:
    o = {"type": "object", "properties": props, "required": list(props) if required is None else required}
    if description:
        o["description"] = description
    return o


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


ERROR = obj({"code": {"type": "string", "description": "stable, for programs: docs/ERRORS.md"},
             "message": {"type": "string", "description": "for people"},
             "field": {"type": "string", "description": "the input at fault"}}, ["code", "message"])
ERROR_RESPONSE = obj({"error": ERROR}, description="every error: {\"error\": {code, message, field?}}")

ORDER = obj({
    "order_id": {**STR, "description": "the server's id (random, unguessable)"},
    "client_order_id": {"anyOf": [STR, {"type": "null"}],
                        "description": "the owner's own id of the order (null when none); only in the owner's views"},
    "client_id": STR, "instrument": STR, "side": SIDE,
    "type": {"type": "string", "examples": ["limit", "market", "stop_limit", "stop_market"]},
    "price": DEC_OR_NULL, "stop_price": DEC, "quantity": DEC, "filled_quantity": DEC, "remaining_quantity": DEC,
    "average_price": DEC_OR_NULL, "status": STATUS,
    "reject_reason": {"type": "string", "description": "why a rejected order was rejected"},
    "time_in_force": TIF, "post_only": {"type": "boolean"}, "created_at": TIME, "updated_at": TIME,
    "seq": {"type": "integer", "description": "read views only: seq of the order's last change"},
    "cancel_reason": {"type": "string", "description": "read views: user, cancel_all, expired, cancel_after, "
                                                       "cancel_on_disconnect, ioc_remainder, market_remainder, "
                                                       "self_trade"},
    "display_quantity": {**DEC, "description": "iceberg: the part shown at a time (the owner's view only)"},
    "shown_quantity": {**DEC, "description": "iceberg: the part the book shows now"},
    "expire_time": {**TIME, "description": "GTD: when the order is cancelled with reason expired"},
}, ["order_id", "client_order_id", "client_id", "instrument", "side", "type", "price", "quantity", "filled_quantity", "status",
    "time_in_force", "created_at", "updated_at"], "an order")

TRADE = obj({"trade_id": STR, "buy_order_id": STR, "sell_order_id": STR, "instrument": STR, "price": DEC,
             "quantity": DEC, "taker_side": SIDE, "timestamp": TIME, "seq": SEQ},
            description="a trade, at the resting (maker) order's price")

LEVEL = obj({"price": DEC, "quantity": DEC, "cumulative": DEC})
LEVEL_PLAIN = obj({"price": DEC, "quantity": DEC})
BOOK_TOP = obj({"instrument": STR, "bids": array(LEVEL), "asks": array(LEVEL), "seq": SEQ},
               description="top levels after the command, best first")
ORDERBOOK = obj({"instrument": STR, "bids": array(LEVEL), "asks": array(LEVEL), "seq": SEQ, "timestamp": TIME},
                description="L2 book; seq is the journal seq it reflects (the same seq as /stream's)")

PLACE_RESPONSE = obj({"order": ORDER, "trades": array(TRADE), "orderbook": BOOK_TOP}, ["order", "trades"])
ORDER_RESPONSE = obj({"order": ORDER})
CANCEL_ALL_RESPONSE = obj({"cancelled": array(STR), "unavailable_instruments": array(STR)}, ["cancelled"])
SNAPSHOT_RESPONSE = obj({"snapshots": array(obj({"instrument": STR, "seq": SEQ, "bytes": INT}))})
HANDOVER_RESPONSE = obj({"instrument": STR, "seq": SEQ, "from": STR, "to": {"type": ["string", "null"]}})
SETTLEMENT_RUN = obj({}, [], "one instrument's settlement run")
SETTLEMENT_RESPONSE = obj({"cutoff": TIME, "runs": array(SETTLEMENT_RUN)})
HEALTH = obj({"status": {"type": "string", "enum": ["healthy", "degraded", "unhealthy"]}, "timestamp": TIME,
              "checks": {"type": "object", "additionalProperties": {"type": "string"}},
              # several command nodes (issue 14): the gateway's /healthz lists them (url, status) and who
              # owns what; a command node's own /healthz names itself and the live nodes it sees
              "node": STR,
              "nodes": {"anyOf": [{"type": "object", "additionalProperties": obj({"url": STR, "status": STR})},
                                  array(STR)]},
              "owners": {"type": "object", "additionalProperties": STR}},
             ["status", "checks"])

TRADES = obj({"instrument": STR, "trades": array(TRADE), "count": INT})
AGGREGATE = obj({"time_bucket": TIME, "trade_count": INT, "total_quantity": DEC, "avg_price": DEC_OR_NULL,
                 "min_price": DEC, "max_price": DEC, "open_price": DEC, "close_price": DEC, "total_volume": DEC,
                 "vwap": DEC_OR_NULL}, ["time_bucket", "trade_count", "total_quantity", "vwap"])
ANALYTICS = obj({"instrument": STR, "start_time": TIME, "end_time": TIME, "interval_minutes": INT,
                 "aggregates": array(AGGREGATE), "overall_vwap": DEC_OR_NULL})
CANDLE = obj({"time": TIME, "open": DEC, "high": DEC, "low": DEC, "close": DEC, "volume": DEC, "quote_volume": DEC,
              "trade_count": INT, "vwap": DEC_OR_NULL})
CANDLES = obj({"instrument": STR, "interval": STR, "candles": array(CANDLE)})
TICKER = obj({"instrument": STR, "last_price": DEC_OR_NULL, "last_quantity": DEC_OR_NULL,
              "last_trade_at": TIME_OR_NULL, "best_bid": DEC_OR_NULL, "best_ask": DEC_OR_NULL,
              "open_24h": DEC_OR_NULL, "high_24h": DEC_OR_NULL, "low_24h": DEC_OR_NULL, "volume_24h": DEC,
              "quote_volume_24h": DEC, "trade_count_24h": INT, "vwap_24h": DEC_OR_NULL,
              "change_24h": DEC_OR_NULL, "change_percent_24h": DEC_OR_NULL, "seq": SEQ},
             ["instrument", "last_price", "best_bid", "best_ask", "volume_24h"], "24 h rolling statistics")
INSTRUMENT = obj({"symbol": STR, "base": STR, "quote": STR, "tick_size": DEC, "lot_size": DEC, "min_quantity": DEC,
                  "max_quantity": DEC, "max_price": DEC, "max_order_notional": DEC_OR_NULL, "max_position": DEC_OR_NULL,
                  "status": {"type": "string", "enum": ["trading"], "description": "trading status"},
                  "order_types": array(STR), "time_in_force": array(TIF),
                  "iceberg": {"type": "boolean"}, "post_only": {"type": "boolean"}},
                 ["symbol", "tick_size", "lot_size"])
INSTRUMENTS = obj({"instruments": array(INSTRUMENT)})
POSITION = obj({"instrument": STR, "net_quantity": DEC, "total_cost": DEC, "avg_price": DEC, "realized_pnl": DEC,
                "unrealized_pnl": DEC, "mark_price": DEC_OR_NULL, "last_updated": TIME},
               ["instrument", "net_quantity", "total_cost", "avg_price", "realized_pnl", "unrealized_pnl"])
POSITIONS = obj({"client_id": STR, "positions": array(POSITION)})
PAGE = {"client_id": STR, "count": INT, "next_cursor": {"anyOf": [STR, {"type": "null"}],
                                                        "description": "pass as cursor for the next page"}}
ORDERS = obj({**PAGE, "orders": array(ORDER)})
FILL = obj({"trade_id": STR, "order_id": STR, "client_id": STR, "instrument": STR, "side": SIDE,
            "role": {"type": "string", "enum": ["maker", "taker"]}, "price": DEC, "quantity": DEC, "notional": DEC,
            "timestamp": TIME, "seq": SEQ})
FILLS = obj({**PAGE, "fills": array(FILL)})
SETTLEMENT = obj({"instrument": STR, "client_id": STR, "from_seq": SEQ, "to_seq": SEQ, "cutoff": TIME,
                  "net_quantity": DEC, "net_quote": DEC, "bought_quantity": DEC, "sold_quantity": DEC,
                  "trade_count": INT, "created_at": TIME}, ["instrument", "client_id", "cutoff", "net_quantity"])
SETTLEMENTS = obj({"client_id": STR, "settlements": array(SETTLEMENT)})
SERVER_TIME = obj({"time": TIME, "epoch_ms": INT}, ["time", "epoch_ms"], "the server's clock")
CANCEL_AFTER_RESPONSE = obj({"timeout_ms": INT, "current_time": TIME, "trigger_time": TIME_OR_NULL},
                            ["timeout_ms", "current_time", "trigger_time"],
                            "the dead man's switch: cancels all the key's orders at trigger_time unless refreshed")

# name -> schema: the components both OpenAPI documents share
COMPONENTS = {
    "Error": ERROR_RESPONSE, "Order": ORDER, "Trade": TRADE, "BookLevel": LEVEL, "PlaceOrderResponse": PLACE_RESPONSE,
    "OrderResponse": ORDER_RESPONSE, "CancelAllResponse": CANCEL_ALL_RESPONSE, "SnapshotResponse": SNAPSHOT_RESPONSE,
    "HandoverResponse": HANDOVER_RESPONSE,
    "SettlementResponse": SETTLEMENT_RESPONSE, "Health": HEALTH, "OrderBook": ORDERBOOK, "Trades": TRADES,
    "Analytics": ANALYTICS, "Candles": CANDLES, "Ticker": TICKER, "Instruments": INSTRUMENTS,
    "Positions": POSITIONS, "Orders": ORDERS, "Fills": FILLS, "Settlements": SETTLEMENTS,
    "ServerTime": SERVER_TIME, "CancelAfterResponse": CANCEL_AFTER_RESPONSE,
}

# What each error status means, for the responses of every operation.
STATUS_TEXT = {
    400: "bad input (code and field say which): nothing was changed",
    401: "no API key, or an unknown or revoked one",
    403: "another client's client_id, a read key that tries to trade, or an admin route without an admin key",
    404: "no such order, or another client's (the same answer)",
    409: "order_closed, duplicate_client_order_id, idempotency_key_reused or risk_limit",
    413: "request body too large",
    415: "a body that is not Content-Type: application/json",
    429: "rate limited: retry after Retry-After seconds",
    503: "cannot answer now (database or instrument recovering): retry; an order with the same idempotency_key"
         " is never placed twice",
}

BEARER = {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "exk_... API key",
                     "description": "Authorization: Bearer <API key>; `make run` writes demo keys to "
                                    ".state/run/demo-keys.env"}}


def responses(ok_status: int, ok_schema_ref: str, errors: Iterable[int], ok_text: str = "OK") -> Schema:
    """OpenAPI responses: the success body and every error status with the error body."""
    out: Schema = {str(ok_status): {"description": ok_text,
                            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ok_schema_ref}"}}}}}
    for s in errors:
        resp: Schema = {"description": STATUS_TEXT.get(s, "error"),
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        if s in (429, 503):
            resp["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait"}}
        out[str(s)] = resp
    return out
