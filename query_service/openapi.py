"""The read API's OpenAPI document, served at GET /schema/openapi.json (and through the
gateway at /docs/query.openapi.json).

The handlers parse their query parameters themselves (query_service/params.py, so every bad
value gets the API's error shape), so Litestar cannot generate the parameters from their
signatures. The document is therefore a table here, and tests/unit/test_query_openapi.py
checks it against the handlers: the same routes as the app, and for each handler the same
query parameters with the same defaults and bounds as its params.* calls. Response bodies
and the error shape come from contracts.schemas (shared with the command API and AsyncAPI)."""

from __future__ import annotations

import copy

from contracts import schemas
from contracts.instruments import Instruments

INT_PARAM = "integer"


def _q(name: str, schema: dict, description: str, required: bool = False) -> dict:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


def _int(name: str, default: int, lo: int, hi: int, description: str) -> dict:
    return _q(name, {"type": "integer", "minimum": lo, "maximum": hi, "default": default}, description)


TIME = copy.deepcopy(schemas.TIME)


def document(instruments: Instruments) -> dict:
    symbols = instruments.symbols
    instrument = _q("instrument", {"type": "string", "enum": symbols, "default": "BTC-USD"}, "instrument symbol")
    opt_instrument = _q("instrument", {"type": "string", "enum": symbols}, "only this instrument (default: all)")
    client_id = _q("client_id", {"type": "string"}, "default: the key's client; another client needs an admin key")
    cursor = _q("cursor", {"type": "string"}, "next_cursor of the previous page")

    def op(op_id: str, summary: str, parameters: list, ok: str, errors=(400, 503), secured=False,
           description: str | None = None) -> dict:
        o = {"operationId": op_id, "summary": summary, "parameters": parameters,
             "responses": schemas.responses(200, ok, errors)}
        if description:
            o["description"] = description
        if secured:
            o["security"] = [{"bearer": []}]
        return {"get": o}

    secured = (400, 401, 403, 503)
    paths = {
        "/market/orderbook": op("GetOrderbook", "L2 order book with its journal seq", [
            instrument, _int("levels", 20, 1, 100, "levels per side")], "OrderBook",
            description="`seq` is the same journal seq as the /stream orderbook messages: a client that holds "
                        "a live book can tell whether this answer is older or newer than its own."),
        "/market/trades": op("GetTrades", "Recent trades, newest first", [
            instrument, _int("limit", 50, 1, 1000, "how many")], "Trades"),
        "/market/analytics": op("GetAnalytics", "Trade aggregates per interval and VWAP", [
            instrument, _q("start_time", TIME, "default: end_time - 24 h"), _q("end_time", TIME, "default: now"),
            _int("interval", 1, 1, 10080, "bucket size in minutes")], "Analytics",
            description="At most 31 days per request. Without start_time and end_time: the last 24 hours."),
        "/market/candles": op("GetCandles", "OHLCV candles, oldest first", [
            instrument, _q("interval", {"type": "string", "enum": ["1m", "5m", "15m", "1h"], "default": "1m"},
                           "candle size"),
            _int("limit", 100, 1, 1000, "how many"), _q("end_time", TIME, "latest candle start (default: now)")],
            "Candles"),
        "/market/ticker": op("GetTicker", "24 h ticker", [instrument], "Ticker"),
        "/market/instruments": op("GetInstruments", "Instrument specs: tick and lot sizes, limits, trading "
                                  "status, order types and time-in-force values", [], "Instruments", errors=()),
        "/market/time": op("GetTime", "The server's clock (ISO 8601 and epoch ms)", [], "ServerTime", errors=()),
        "/market/positions/{client_id}": op("GetPositions", "A client's positions (its key or an admin key)", [
            {"name": "client_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "Positions", errors=secured, secured=True),
        "/market/orders": op("GetOrders", "The key's client's orders, newest first", [
            _q("status", {"type": "string", "enum": ["open", "closed"]}, "default: all"), opt_instrument,
            _int("limit", 50, 1, 500, "page size"), cursor, client_id], "Orders", errors=secured, secured=True),
        "/market/fills": op("GetFills", "The key's client's fills, newest first", [
            opt_instrument, _int("limit", 50, 1, 500, "page size"), cursor, client_id], "Fills", errors=secured,
            secured=True),
        "/market/settlements": op("GetSettlements", "The key's client's settlement records, newest first", [
            opt_instrument, _int("limit", 50, 1, 500, "how many"), client_id], "Settlements", errors=secured,
            secured=True),
        "/healthz": op("GetHealth", "This replica's dependencies (503 when unhealthy)", [], "Health", errors=(503,)),
        "/healthz/system": op("GetSystemHealth", "The whole exchange (503 when unhealthy); the gateway's /healthz",
                              [], "Health", errors=(503,)),
    }
    used = {"Error"} | {o["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
                        for o in paths.values()}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Exchange query API", "version": "1.0.0",
                 "description": "Read side: views projected from the journal (eventually consistent; `seq` says "
                                "how far). Numbers are exact decimals written as JSON numbers: parse them as "
                                "decimals. Errors: `{\"error\": {code, message, field}}`, every code in "
                                "docs/ERRORS.md. Live data: WS /stream, described by /docs/asyncapi.json."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": {name: copy.deepcopy(schemas.COMPONENTS[name]) for name in sorted(used)},
            "securitySchemes": copy.deepcopy(schemas.BEARER),
        },
    }
