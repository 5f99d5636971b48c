"""The query service's read API as an OpenAPI document, written from DESIGN.md section 4 (the
binding contract) and the parameters query_service/params.py accepts.

Why the fuzz does not rely on the service's generated schema alone: the handlers read their
query parameters from request.query_params, so a schema Litestar generates from the handler
signatures names no parameter at all, and a fuzz from it would never send `levels=0` or
`start_time=garbage`. test_query_schema_is_served checks the service's own document
(GET /schema/openapi.json) separately; the paths it serves are fuzzed from this contract.
"""

from __future__ import annotations

INSTRUMENTS = ["BTC-USD", "ETH-USD", "SOL-USD"]


def _q(name: str, schema: dict, required: bool = False) -> dict:
    return {"name": name, "in": "query", "required": required, "schema": schema}


# Mostly known symbols (so the handler gets past the lookup), sometimes anything.
INSTRUMENT = {"anyOf": [{"enum": INSTRUMENTS}, {"type": "string"}]}
TIME = {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "string"}]}
CLIENT_ID = {"type": "string", "minLength": 1, "maxLength": 64}
ERROR = {"$ref": "#/components/schemas/Error"}


def _op(op_id: str, parameters: list[dict], ok_schema: dict | None = None, statuses=(400,)) -> dict:
    responses = {"200": {"description": "OK", "content": {"application/json": {"schema": ok_schema or {"type": "object"}}}}}
    for s in statuses:
        responses[str(s)] = {"description": "error", "content": {"application/json": {"schema": ERROR}}}
    return {"get": {"operationId": op_id, "parameters": parameters, "responses": responses}}


def query_contract() -> dict:
    level = {"type": "object", "required": ["price", "quantity"],
             "properties": {"price": {"type": "number"}, "quantity": {"type": "number"}}}
    book = {"type": "object", "required": ["instrument", "bids", "asks", "seq", "timestamp"],
            "properties": {"instrument": {"type": "string"}, "bids": {"type": "array", "items": level},
                           "asks": {"type": "array", "items": level}, "seq": {"type": "integer"},
                           "timestamp": {"type": "string"}}}
    trades = {"type": "object", "required": ["instrument", "trades", "count"],
              "properties": {"instrument": {"type": "string"}, "trades": {"type": "array"},
                             "count": {"type": "integer"}}}
    auth_statuses = (400, 401, 403)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Exchange query API (contract, DESIGN.md section 4)", "version": "1.0.0"},
        "paths": {
            "/market/orderbook": _op("GetOrderbook", [
                _q("instrument", INSTRUMENT), _q("levels", {"type": "integer", "minimum": 1, "maximum": 100})], book),
            "/market/trades": _op("GetTrades", [
                _q("instrument", INSTRUMENT), _q("limit", {"type": "integer", "minimum": 1, "maximum": 1000})], trades),
            "/market/analytics": _op("GetAnalytics", [
                _q("instrument", INSTRUMENT), _q("start_time", TIME), _q("end_time", TIME),
                _q("interval", {"type": "integer", "minimum": 1, "maximum": 10080})]),
            "/market/candles": _op("GetCandles", [
                _q("instrument", INSTRUMENT), _q("interval", {"enum": ["1m", "5m", "15m", "1h"]}),
                _q("limit", {"type": "integer", "minimum": 1, "maximum": 1000}), _q("end_time", TIME)]),
            "/market/ticker": _op("GetTicker", [_q("instrument", INSTRUMENT)]),
            "/market/instruments": _op("GetInstruments", [], statuses=()),
            "/market/positions/{client_id}": _op("GetPositions", [
                {"name": "client_id", "in": "path", "required": True, "schema": CLIENT_ID}], statuses=auth_statuses),
            "/market/orders": _op("GetOrders", [
                _q("status", {"enum": ["open", "closed"]}), _q("instrument", INSTRUMENT),
                _q("limit", {"type": "integer", "minimum": 1, "maximum": 500}), _q("cursor", {"type": "string"}),
                _q("client_id", CLIENT_ID)], statuses=auth_statuses),
            "/market/fills": _op("GetFills", [
                _q("instrument", INSTRUMENT), _q("limit", {"type": "integer", "minimum": 1, "maximum": 500}),
                _q("cursor", {"type": "string"}), _q("client_id", CLIENT_ID)], statuses=auth_statuses),
            "/healthz": _op("GetHealth", [], statuses=()),
            "/healthz/system": _op("GetSystemHealth", [], statuses=()),
        },
        "components": {"schemas": {"Error": {
            "type": "object", "required": ["error"],
            "properties": {"error": {"type": "object", "required": ["code", "message"],
                                     "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                                                    "field": {"type": "string"}}}}}}},
    }
