"""The AsyncAPI 3.0 document of the two WebSocket endpoints (served at /docs/asyncapi.json,
rendered to docs/asyncapi.yaml by `python -m contracts.asyncapi`):

- /ws (command service): order entry and cancel, many requests in flight, each answered after commit;
- /stream (query service): market data subscriptions (order book snapshot + updates chained by
  prev_seq, trades, the client's own orders, ticker, heartbeats) and order entry forwarded to
  the command service.

The operations describe the exchange: `receive` = a message the client sends, `send` = one the
exchange sends. Payload schemas reuse the API's views (contracts.schemas), so an order or a
trade has one definition over HTTP and WebSocket. tests/unit/test_asyncapi.py validates the
document; tests/conftest.py checks every frame the tests send or receive against it.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

from contracts import schemas as S
from contracts.schemas import Schema

# name -> (summary, payload schema, example payloads)
Messages = dict[str, tuple[str, Schema, list[Schema]]]

RENDERED = Path(__file__).resolve().parent.parent / "docs" / "asyncapi.yaml"


def _t(value: str) -> Schema:
    return {"type": "string", "const": value}


REQUEST_ID = {"description": "any JSON value (a string or an integer is usual); echoed as it was sent in the "
                             "answer, which ties answers to requests"}
CHANNEL_NAMES = ["trades", "orders", "orderbook", "ticker"]
ORDER_FIELDS = {
    "side": S.SIDE, "quantity": S.DEC_IN, "price": S.DEC_IN, "stop_price": S.DEC_IN,
    "instrument": {"type": "string", "default": "BTC-USD"}, "time_in_force": S.TIF,
    "post_only": {"type": "boolean", "default": False},
    "self_trade_prevention": {"type": "string", "enum": ["cancel_newest", "cancel_oldest", "cancel_both"]},
    "client_order_id": {"type": "string", "description": "your own id for the new order, unique among all your "
                        "orders ever (409 duplicate_client_order_id when reused; other clients may use the same "
                        "one); the order's order_id is always the server's"},
    "order_id": {"type": "string", "description": "deprecated alias of client_order_id (seed API); not both"},
    "idempotency_key": {"type": "string", "description": "same key + same order again = the original answer"},
    "client_id": {"type": "string", "description": "optional with a key; must be the key's"},
    "display_quantity": {**S.DEC_IN, "description": "iceberg: the part shown at a time (GTC/GTD limit only)"},
    "expire_time": {**S.TIME, "description": "GTD only: when the order expires (in the future)"},
}
TARGET_ID = {"type": "string", "description": "the order: its server order_id or your client_order_id (one of "
                                          "order_id and client_order_id is required; another client's is "
                                          "not_found, like an unknown one)"}
TARGET_COID = {"type": "string", "description": "the order by your own client_order_id (instead of order_id)"}
RATE_LIMIT = S.obj({"limit": S.INT, "remaining": S.INT, "reset": S.INT}, ["limit", "remaining", "reset"],
                   "the RateLimit header figures of the key's token bucket (absent when limits are off)")
ORDER_TYPE = {"type": "string", "enum": ["limit", "market", "stop_limit", "stop_market"]}
ERROR_MSG = S.obj({"type": _t("error"), "request_id": REQUEST_ID, "error": S.ERROR, "rate_limit": RATE_LIMIT,
                   "status": {"type": "integer", "description": "/stream: the HTTP status of a refused order"}},
                  ["type", "error"])

ORDER_EX = {"order_id": "5f2c1e8a-7d41-4b8e-9c1a-0d2e3f4a5b6c", "client_order_id": "my-42", "client_id": "client-A", "instrument": "BTC-USD",
            "side": "buy", "type": "limit", "price": 70000, "quantity": 0.25, "filled_quantity": 0.1,
            "remaining_quantity": 0.15, "status": "partially_filled", "time_in_force": "GTC", "post_only": False,
            "average_price": 70000, "created_at": "2026-12-06T04:00:00.000Z", "updated_at": "2026-12-06T04:00:00.000Z"}
TRADE_EX = {"trade_id": "BTC-USD-42", "buy_order_id": "5f2c1e8a-7d41-4b8e-9c1a-0d2e3f4a5b6c",
            "sell_order_id": "7a1b2c3d-0000-4000-8000-000000000001", "instrument": "BTC-USD", "price": 70000,
            "quantity": 0.1, "taker_side": "sell", "timestamp": "2026-12-06T04:00:01.250Z", "seq": 42}

# name -> (summary, payload schema, examples)
WS_IN: Messages = {
    "WsOrder": ("Place an order (answered after commit by order_accepted or error)", S.obj(
        {"type": _t("order"), "order_type": ORDER_TYPE, "request_id": REQUEST_ID, **ORDER_FIELDS},
        ["type", "order_type", "side", "quantity"]),
        [{"type": "order", "order_type": "limit", "side": "buy", "price": "70000", "quantity": "0.25",
          "instrument": "BTC-USD", "request_id": "r1"}]),
    "WsSeedOrder": ("Place an order in the seed's form: the order type in `type`", S.obj(
        {"type": ORDER_TYPE, "request_id": REQUEST_ID, **ORDER_FIELDS}, ["type", "side", "quantity"]),
        [{"type": "market", "side": "sell", "quantity": 0.1, "instrument": "BTC-USD", "request_id": 7}]),
    "WsCancel": ("Cancel one of your orders (answered by cancel_accepted or error)", S.obj(
        {"type": _t("cancel"), "order_id": TARGET_ID, "client_order_id": TARGET_COID, "request_id": REQUEST_ID},
        ["type"]),
        [{"type": "cancel", "order_id": "5f2c1e8a-7d41-4b8e-9c1a-0d2e3f4a5b6c", "request_id": "r2"}]),
    "WsAmend": ("Amend one of your orders: quantity = new total and/or price (answered by amend_accepted or "
                "error)", S.obj({"type": _t("amend"), "order_id": TARGET_ID, "client_order_id": TARGET_COID,
                                 "quantity": S.DEC_IN, "price": S.DEC_IN, "request_id": REQUEST_ID}, ["type"]),
                [{"type": "amend", "order_id": "5f2c1e8a-7d41-4b8e-9c1a-0d2e3f4a5b6c", "quantity": "0.2",
                  "request_id": "a1"}]),
    "WsCancelAll": ("Cancel your open orders of one instrument, or with all: true of every instrument; "
                    "optionally of one side (answered by cancel_all_accepted or error; neither instrument nor "
                    "all: true is an error, nothing is cancelled)", S.obj(
        {"type": _t("cancel_all"), "instrument": {"type": "string"},
         "all": {"type": "boolean", "description": "true: every instrument (instead of instrument)"}, "side": S.SIDE,
         "client_id": {"type": "string", "description": "optional: the key's own client, or any with an admin key"},
         "request_id": REQUEST_ID},
        ["type"]), [{"type": "cancel_all", "instrument": "BTC-USD", "request_id": "c1"}]),
    "WsSession": ("Session settings: cancel_on_disconnect cancels the orders placed over this socket when it "
                  "closes (answered by session)", S.obj(
        {"type": _t("session"), "cancel_on_disconnect": {"type": "boolean"}, "request_id": REQUEST_ID},
        ["type", "cancel_on_disconnect"]),
        [{"type": "session", "cancel_on_disconnect": True, "request_id": "s1"}]),
    "WsPing": ("Liveness check (answered by pong)", S.obj({"type": _t("ping"), "request_id": REQUEST_ID}, ["type"]),
               [{"type": "ping", "request_id": "p1"}]),
}
WS_OUT: Messages = {
    "WsOrderAccepted": ("The order was committed", S.obj(
        {"type": _t("order_accepted"), "request_id": REQUEST_ID, "order": S.ORDER, "trades": S.array(S.TRADE),
         "replayed": {"type": "boolean", "description": "true: an earlier answer to the same idempotency_key"},
         "rate_limit": RATE_LIMIT},
        ["type", "request_id", "order", "trades"]),
        [{"type": "order_accepted", "request_id": "r1", "order": ORDER_EX, "trades": [TRADE_EX]}]),
    "WsCancelAccepted": ("The cancel was committed", S.obj(
        {"type": _t("cancel_accepted"), "request_id": REQUEST_ID, "order": S.ORDER, "rate_limit": RATE_LIMIT},
        ["type", "request_id", "order"]),
        [{"type": "cancel_accepted", "request_id": "r2", "order": {**ORDER_EX, "status": "cancelled"}}]),
    "WsError": ("A request failed (code: docs/ERRORS.md); the connection stays open", ERROR_MSG,
                [{"type": "error", "request_id": "r1",
                  "error": {"code": "off_tick", "message": "price must be a multiple of 0.01", "field": "price"}}]),
    "WsPong": ("Answer to ping", S.obj({"type": _t("pong"), "request_id": REQUEST_ID, "rate_limit": RATE_LIMIT},
                                       ["type"]),
               [{"type": "pong", "request_id": "p1"}]),
    "WsAmendAccepted": ("The amend was committed", S.obj(
        {"type": _t("amend_accepted"), "request_id": REQUEST_ID, "order": S.ORDER, "trades": S.array(S.TRADE),
         "rate_limit": RATE_LIMIT}, ["type", "request_id", "order", "trades"]),
        [{"type": "amend_accepted", "request_id": "a1", "order": {**ORDER_EX, "quantity": 0.2,
                                                                  "remaining_quantity": 0.1}, "trades": []}]),
    "WsCancelAllAccepted": ("The cancels were committed", S.obj(
        {"type": _t("cancel_all_accepted"), "request_id": REQUEST_ID, "cancelled": S.array(S.STR),
         "unavailable_instruments": S.array(S.STR), "rate_limit": RATE_LIMIT}, ["type", "request_id", "cancelled"]),
        [{"type": "cancel_all_accepted", "request_id": "c1", "cancelled": ["5f2c1e8a-7d41-4b8e-9c1a-0d2e3f4a5b6c"]}]),
    "WsSessionSet": ("The session settings now in force", S.obj(
        {"type": _t("session"), "request_id": REQUEST_ID, "cancel_on_disconnect": {"type": "boolean"},
         "rate_limit": RATE_LIMIT}, ["type", "cancel_on_disconnect"]),
        [{"type": "session", "request_id": "s1", "cancel_on_disconnect": True}]),
}
SUB = {"type": _t("subscribe"), "channels": {"type": "array", "items": {"enum": CHANNEL_NAMES}, "minItems": 1},
       "channel": {"enum": CHANNEL_NAMES, "description": "one channel (instead of channels)"},
       "instrument": {"type": "string", "default": "BTC-USD"},
       "api_key": {"type": "string", "description": "orders channel: the key whose orders to follow"},
       "client_id": {"type": "string", "description": "orders channel with auth disabled"},
       "depth": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100,
                 "description": "orderbook: levels per side in the snapshot (out_of_range outside 1..1000)"}}
STREAM_IN: Messages = {
    "StreamSubscribe": ("Subscribe to channels of one instrument (answered by subscribed; orderbook then "
                        "starts with a snapshot)", S.obj(SUB, ["type"]),
                        [{"type": "subscribe", "channels": ["orderbook", "trades"], "instrument": "BTC-USD"}]),
    "StreamUnsubscribe": ("Unsubscribe (answered by unsubscribed)", S.obj({**SUB, "type": _t("unsubscribe")}, ["type"]),
                          [{"type": "unsubscribe", "channels": ["trades"], "instrument": "BTC-USD"}]),
    "StreamOrder": ("Place an order through the query service (forwarded to the command service)", S.obj(
        {"type": _t("order"), "order_type": ORDER_TYPE, "request_id": REQUEST_ID, "api_key": {"type": "string"},
         **ORDER_FIELDS}, ["type", "order_type", "side", "quantity"]),
        [{"type": "order", "order_type": "limit", "side": "sell", "price": 70100, "quantity": 0.5,
          "instrument": "BTC-USD", "request_id": "s1"}]),
    "StreamPing": ("Liveness check (answered by pong)", S.obj({"type": _t("ping"), "request_id": REQUEST_ID}, ["type"]),
                   [{"type": "ping"}]),
}
SEQS = {"type": "object", "additionalProperties": S.SEQ}
STREAM_OUT: Messages = {
    "StreamConnected": ("Sent on open", S.obj(
        {"type": _t("connected"), "timestamp": S.TIME, "instruments": S.array(S.STR), "client_id": S.STR},
        ["type", "timestamp", "instruments"]),
        [{"type": "connected", "timestamp": "2026-12-06T04:00:00.000Z", "instruments": ["BTC-USD", "ETH-USD"]}]),
    "StreamSubscribed": ("Subscription confirmed", S.obj(
        {"type": _t("subscribed"), "channels": S.array({"enum": CHANNEL_NAMES}), "instrument": S.STR,
         "client_id": S.STR}, ["type", "channels", "instrument"]),
        [{"type": "subscribed", "channels": ["orderbook", "trades"], "instrument": "BTC-USD"}]),
    "StreamUnsubscribed": ("Unsubscription confirmed", S.obj(
        {"type": _t("unsubscribed"), "channels": S.array({"enum": CHANNEL_NAMES}), "instrument": S.STR},
        ["type", "channels", "instrument"]),
        [{"type": "unsubscribed", "channels": ["trades"], "instrument": "BTC-USD"}]),
    "OrderbookSnapshot": ("The best `depth` levels of each side at `seq` (first orderbook message, and again after "
                          "a resubscribe). Updates carry changes at every depth: when a side of the snapshot has "
                          "`depth` levels, your book is exact at prices at or better than its last level; deeper "
                          "levels appear as they change", S.obj(
        {"type": _t("orderbook"), "action": _t("snapshot"), "instrument": S.STR, "seq": S.SEQ,
         "depth": {"type": "integer", "minimum": 1},
         "bids": S.array(S.LEVEL_PLAIN), "asks": S.array(S.LEVEL_PLAIN)}),
        [{"type": "orderbook", "action": "snapshot", "instrument": "BTC-USD", "seq": 41, "depth": 100,
          "bids": [{"price": 70000, "quantity": 0.25}], "asks": [{"price": 70100, "quantity": 0.5}]}]),
    "OrderbookUpdate": ("Changed levels: `quantity` is the level's new total (0 removes it). `prev_seq` is the seq "
                        "of the previous orderbook message: if it is not the seq you hold, you missed one - "
                        "unsubscribe and subscribe again for a new snapshot", S.obj(
        {"type": _t("orderbook"), "action": _t("update"), "instrument": S.STR, "prev_seq": S.SEQ, "seq": S.SEQ,
         "changes": S.array(S.obj({"side": S.SIDE, "price": S.DEC, "quantity": S.DEC}))}),
        [{"type": "orderbook", "action": "update", "instrument": "BTC-USD", "prev_seq": 41, "seq": 43,
          "changes": [{"side": "buy", "price": 70000, "quantity": 0.15}]}]),
    "StreamTrade": ("A trade (trades channel)", S.obj({"type": _t("trade"), **S.TRADE["properties"]},
                                                      ["type", "instrument", "seq", "price", "quantity"]),
                    [{"type": "trade", **TRADE_EX}]),
    "StreamOrderUpdate": ("A change of one of your orders (orders channel)", S.obj(
        {"type": _t("order_update"), "instrument": S.STR, "seq": S.SEQ, "order": S.ORDER}),
        [{"type": "order_update", "instrument": "BTC-USD", "seq": 42, "order": {**ORDER_EX, "seq": 42}}]),
    "StreamTicker": ("24 h statistics (ticker channel; once on subscribe, then on every change)", S.obj(
        {"type": _t("ticker"), **S.TICKER["properties"]}, ["type", "instrument"]),
        [{"type": "ticker", "instrument": "BTC-USD", "last_price": 70000, "last_quantity": 0.1,
          "last_trade_at": "2026-12-06T04:00:01.250Z", "best_bid": 70000, "best_ask": 70100, "open_24h": 69000,
          "high_24h": 70500, "low_24h": 68800, "volume_24h": 12.5, "quote_volume_24h": 871250,
          "trade_count_24h": 310, "vwap_24h": 69700, "change_24h": 1000, "change_percent_24h": 1.45, "seq": 42}]),
    "StreamHeartbeat": ("Every few seconds: the latest seq of each subscribed instrument", S.obj(
        {"type": _t("heartbeat"), "seqs": SEQS, "timestamp": S.TIME}, ["type", "seqs"]),
        [{"type": "heartbeat", "seqs": {"BTC-USD": 43}, "timestamp": "2026-12-06T04:00:05.000Z"}]),
    "StreamPong": ("Answer to ping", S.obj({"type": _t("pong"), "timestamp": S.TIME, "request_id": REQUEST_ID},
                                           ["type"]),
                   [{"type": "pong", "timestamp": "2026-12-06T04:00:05.000Z"}]),
    "StreamOrderAccepted": ("A forwarded order was committed", S.obj(
        {"type": _t("order_accepted"), "request_id": REQUEST_ID, "order": S.ORDER, "trades": S.array(S.TRADE)},
        ["type", "order", "trades"]),
        [{"type": "order_accepted", "request_id": "s1", "order": {**ORDER_EX, "side": "sell", "status": "open",
                                                                 "filled_quantity": 0, "average_price": None},
          "trades": []}]),
    "StreamError": ("A frame or an order failed (code: docs/ERRORS.md); the connection stays open", ERROR_MSG,
                    [{"type": "error", "error": {"code": "invalid_channel",
                                                 "message": "unknown channel 'gossip'", "field": "channels"}},
                     {"type": "error", "request_id": "s1", "status": 400,
                      "error": {"code": "off_lot", "message": "quantity must be a multiple of 0.00000001",
                                "field": "quantity"}}]),
}

# channel id -> (address, description, messages received by the exchange, messages it sends)
CHANNELS: dict[str, tuple[str, str, Messages, Messages]] = {
    "orderEntry": ("/ws", "Command service: order entry and cancel. Authenticated at the upgrade "
                          "(Authorization: Bearer <key>); many requests may be in flight, each is answered after "
                          "its batch commits, in completion order (request_id ties answers to requests). An "
                          "unknown or missing key is answered with an error and close code 4401; a session whose key is "
                          "revoked gets an unauthorized error and close code 4401 within 35 s (key cache ttl 30 s + "
                          "a re-check every 5 s). Frames up to 64 KiB: a larger one is refused with close code 1009.",
                   WS_IN, WS_OUT),
    "marketData": ("/stream", "Query service: live market data and order entry. No key needed except for the "
                              "orders channel (Authorization header at the upgrade, or api_key in the subscribe "
                              "message). A client that cannot keep up is closed with code 1008 and a reason. A session "
                              "whose key is revoked gets an unauthorized error and close code 4401 within 35 s. "
                              "Limits per connection: frames up to 64 KiB (a larger one is refused with close code "
                              "1009 before it is read), 200 messages per second (burst 400; beyond: a "
                              "too_many_messages error and close code 1008), 10 subscribes per second (burst 20) "
                              "and 32 open subscriptions (instrument and channel; beyond: a too_many_subscriptions "
                              "error, the connection stays open).",
                   STREAM_IN, STREAM_OUT),
}


def messages(channel: str, direction: str) -> Messages:
    """direction 'in' (client -> exchange) or 'out' (exchange -> client)."""
    _, _, inbound, outbound = CHANNELS[channel]
    return inbound if direction == "in" else outbound


def document() -> Schema:
    comp_messages: Schema = {}
    channels: Schema = {}
    operations: Schema = {}
    for cid, (address, description, inbound, outbound) in CHANNELS.items():
        ch_msgs: Schema = {}
        for name, (summary, payload, examples) in {**inbound, **outbound}.items():
            comp_messages[name] = {
                "name": name, "title": name, "summary": summary, "contentType": "application/json",
                "payload": copy.deepcopy(payload),
                "examples": [{"name": f"{name}-{i + 1}", "payload": ex} for i, ex in enumerate(examples)],
            }
            ch_msgs[name] = {"$ref": f"#/components/messages/{name}"}
        channels[cid] = {"address": address, "title": address, "description": description, "messages": ch_msgs,
                         "servers": [{"$ref": "#/servers/gateway"}]}
        for action, group in (("receive", inbound), ("send", outbound)):
            op: Schema = {"action": action, "channel": {"$ref": f"#/channels/{cid}"},
                  "summary": ("messages a client sends to " if action == "receive" else "messages the exchange sends on ")
                  + address,
                  "messages": [{"$ref": f"#/channels/{cid}/messages/{n}"} for n in group]}
            if cid == "orderEntry":
                op["security"] = [{"$ref": "#/components/securitySchemes/bearer"}]
            operations[f"{action}{cid[0].upper()}{cid[1:]}"] = op
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "Exchange WebSockets", "version": "1.0.0",
                 "description": "Order entry (/ws) and market data (/stream) over WebSocket, JSON text frames. "
                                "Prices and quantities are exact decimals: JSON numbers out (parse them as "
                                "decimals), a number or a decimal string in. Errors never close the connection "
                                "and carry {code, message, field}: every code in docs/ERRORS.md."},
        "defaultContentType": "application/json",
        "servers": {"gateway": {"host": "127.0.0.1:3000", "protocol": "ws",
                                "description": "the gateway of `make run` (3000 + EXCHANGE_PORT_OFFSET)"}},
        "channels": channels,
        "operations": operations,
        "components": {"messages": comp_messages,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "Authorization: Bearer <API key> on the upgrade"}}},
    }


def render_yaml() -> str:
    import yaml  # type: ignore[import-untyped]  # dev dependency; the services serve JSON

    head = "# Rendered from contracts/asyncapi.py by `python -m contracts.asyncapi`; edit that file, not this one.\n"
    text: str = yaml.safe_dump(json.loads(json.dumps(document())), sort_keys=False, allow_unicode=True, width=110)
    return head + text


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        sys.exit(0 if RENDERED.read_text() == render_yaml() else 1)
    RENDERED.write_text(render_yaml())
    print(f"wrote {RENDERED}")
