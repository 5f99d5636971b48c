"""The read API's OpenAPI document, served at GET /schema/openapi.json.

Written by hand rather than generated: the handlers parse their query parameters themselves
(query_service/params.py, so every bad value gets the API's error shape), and a document
generated from their signatures would name no parameter. Keep it in step with app.py.
"""

from __future__ import annotations

from contracts.instruments import Instruments


def _q(name: str, schema: dict, description: str, required: bool = False) -> dict:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


NUMBER = {"type": "number", "description": "exact decimal written as a JSON number"}
TIME = {"type": "string", "format": "date-time", "example": "2024-01-01T00:00:00.000Z"}


def _obj(props: dict, required: list[str] | None = None) -> dict:
    return {"type": "object", "properties": props, "required": required or list(props)}


def document(instruments: Instruments) -> dict:
    symbols = instruments.symbols
    instrument = _q("instrument", {"type": "string", "enum": symbols, "default": "BTC-USD"}, "instrument symbol")
    opt_instrument = _q("instrument", {"type": "string", "enum": symbols}, "only this instrument")
    err = {"$ref": "#/components/schemas/Error"}

    def op(op_id: str, summary: str, parameters: list, ok: dict, errors=(400,), secured=False) -> dict:
        responses = {"200": {"description": "OK", "content": {"application/json": {"schema": ok}}}}
        for s in errors:
            responses[str(s)] = {"description": "error", "content": {"application/json": {"schema": err}}}
        o = {"operationId": op_id, "summary": summary, "parameters": parameters, "responses": responses}
        if secured:
            o["security"] = [{"bearer": []}]
        return {"get": o}

    level = _obj({"price": NUMBER, "quantity": NUMBER, "cumulative": NUMBER})
    trade = _obj({"trade_id": {"type": "string"}, "buy_order_id": {"type": "string"},
                  "sell_order_id": {"type": "string"}, "instrument": {"type": "string"}, "price": NUMBER,
                  "quantity": NUMBER, "taker_side": {"enum": ["buy", "sell"]}, "timestamp": TIME,
                  "seq": {"type": "integer"}})
    order = _obj({"order_id": {"type": "string"}, "client_id": {"type": "string"}, "instrument": {"type": "string"},
                  "side": {"enum": ["buy", "sell"]}, "type": {"type": "string"},
                  "price": {"anyOf": [NUMBER, {"type": "null"}]}, "quantity": NUMBER, "filled_quantity": NUMBER,
                  "remaining_quantity": NUMBER, "average_price": {"anyOf": [NUMBER, {"type": "null"}]},
                  "status": {"enum": ["pending", "open", "partially_filled", "filled", "cancelled", "rejected"]},
                  "time_in_force": {"enum": ["GTC", "IOC", "FOK"]}, "post_only": {"type": "boolean"},
                  "created_at": TIME, "updated_at": TIME, "seq": {"type": "integer"}},
                 ["order_id", "client_id", "instrument", "side", "type", "quantity", "filled_quantity", "status",
                  "created_at", "updated_at"])
    position = _obj({"instrument": {"type": "string"}, "net_quantity": NUMBER, "total_cost": NUMBER,
                     "avg_price": NUMBER, "realized_pnl": NUMBER, "unrealized_pnl": NUMBER,
                     "last_updated": TIME})
    aggregate = _obj({"time_bucket": TIME, "trade_count": {"type": "integer"}, "total_quantity": NUMBER,
                      "avg_price": NUMBER, "min_price": NUMBER, "max_price": NUMBER, "total_volume": NUMBER,
                      "vwap": NUMBER})
    health = _obj({"status": {"enum": ["healthy", "unhealthy"]}, "timestamp": TIME,
                   "checks": {"type": "object", "additionalProperties": {"enum": ["healthy", "unhealthy"]}}})
    page = [_q("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}, "page size"),
            _q("cursor", {"type": "string"}, "next_cursor of the previous page"),
            _q("client_id", {"type": "string"}, "default: the key's client; another client needs an admin key")]
    paged = {"client_id": {"type": "string"}, "count": {"type": "integer"},
             "next_cursor": {"anyOf": [{"type": "string"}, {"type": "null"}]}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Exchange query API", "version": "1.0.0",
                 "description": "Read side: views projected from the journal. Numbers are exact decimals."},
        "paths": {
            "/market/orderbook": op("GetOrderbook", "L2 order book with its journal seq", [
                instrument, _q("levels", {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}, "levels per side")],
                _obj({"instrument": {"type": "string"}, "bids": {"type": "array", "items": level},
                      "asks": {"type": "array", "items": level}, "seq": {"type": "integer"}, "timestamp": TIME})),
            "/market/trades": op("GetTrades", "recent trades, newest first", [
                instrument, _q("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}, "how many")],
                _obj({"instrument": {"type": "string"}, "trades": {"type": "array", "items": trade},
                      "count": {"type": "integer"}})),
            "/market/analytics": op("GetAnalytics", "trade aggregates per interval and VWAP", [
                instrument, _q("start_time", TIME, "default: end_time - 24 h"),
                _q("end_time", TIME, "default: now"),
                _q("interval", {"type": "integer", "minimum": 1, "maximum": 10080, "default": 1}, "minutes")],
                _obj({"instrument": {"type": "string"}, "start_time": TIME, "end_time": TIME,
                      "interval_minutes": {"type": "integer"}, "aggregates": {"type": "array", "items": aggregate},
                      "overall_vwap": {"anyOf": [NUMBER, {"type": "null"}]}})),
            "/market/candles": op("GetCandles", "OHLCV candles, oldest first", [
                instrument, _q("interval", {"enum": ["1m", "5m", "15m", "1h"], "default": "1m"}, "candle size"),
                _q("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}, "how many"),
                _q("end_time", TIME, "latest candle start")], {"type": "object"}),
            "/market/ticker": op("GetTicker", "24 h ticker", [instrument], {"type": "object"}),
            "/market/instruments": op("GetInstruments", "instrument specs", [], {"type": "object"}, errors=()),
            "/market/positions/{client_id}": op("GetPositions", "a client's positions (its key or an admin key)", [
                {"name": "client_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                _obj({"client_id": {"type": "string"}, "positions": {"type": "array", "items": position}}),
                errors=(400, 401, 403), secured=True),
            "/market/orders": op("GetOrders", "the key's client's orders, newest first", [
                _q("status", {"enum": ["open", "closed"]}, "default: all"), opt_instrument, *page],
                _obj({**paged, "orders": {"type": "array", "items": order}}), errors=(400, 401, 403), secured=True),
            "/market/fills": op("GetFills", "the key's client's fills, newest first", [opt_instrument, *page],
                                _obj({**paged, "fills": {"type": "array", "items": {"type": "object"}}}),
                                errors=(400, 401, 403), secured=True),
            "/market/settlements": op("GetSettlements", "the key's client's settlement records, newest first", [
                opt_instrument, _q("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}, "how many")],
                _obj({"client_id": {"type": "string"}, "settlements": {"type": "array", "items": {"type": "object"}}}),
                errors=(400, 401, 403), secured=True),
            "/healthz": op("GetHealth", "own dependencies (503 when unhealthy)", [], health, errors=(503,)),
            "/healthz/system": op("GetSystemHealth", "the whole exchange (503 when unhealthy)", [], health,
                                  errors=(503,)),
        },
        "components": {
            "schemas": {"Error": _obj({"error": _obj({"code": {"type": "string"}, "message": {"type": "string"},
                                                      "field": {"type": "string"}}, ["code", "message"])})},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
