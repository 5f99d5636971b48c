"""exchange_client without I/O: exact decimals, the book's prev_seq rules, typed errors and
the retry decisions (Retry-After honoured, only safe requests repeated)."""

from decimal import Decimal

import httpx
import pytest

from exchange_client import BookState, Conflict, InvalidRequest, RateLimited, Unavailable, codec, stream_url
from exchange_client.client import _Call, _Policy
from exchange_client.errors import ConnectionFailed, error_from


def test_decimals_go_out_as_strings_and_come_back_as_decimals():
    assert codec.dumps({"price": Decimal("70000.10"), "quantity": Decimal("1E-8")}) == \
        '{"price":"70000.10","quantity":"0.00000001"}'
    with pytest.raises(TypeError):
        codec.dumps({"price": 0.1})
    body = codec.loads(b'{"order":{"price":70150.5,"quantity":3,"filled_quantity":0.30000000000000004,'
                       b'"seq":7},"trades":[{"price":100,"seq":9}]}')
    assert body["order"]["price"] == Decimal("70150.5") and isinstance(body["order"]["quantity"], Decimal)
    assert body["order"]["filled_quantity"] == Decimal("0.30000000000000004")  # not rounded through a float
    assert body["order"]["seq"] == 7 and isinstance(body["order"]["seq"], int)
    assert body["trades"][0]["price"] == Decimal(100)


def test_book_applies_updates_that_continue_it_and_reports_a_gap():
    b = BookState("BTC-USD")
    assert b.apply({"type": "orderbook", "action": "update", "instrument": "BTC-USD", "prev_seq": 1, "seq": 2,
                    "changes": []}) == "ignored"  # before the snapshot
    assert b.apply({"type": "orderbook", "action": "snapshot", "instrument": "BTC-USD", "seq": 10,
                    "bids": [{"price": Decimal("99.5"), "quantity": Decimal(2)}],
                    "asks": [{"price": Decimal(101), "quantity": Decimal(1)}]}) == "snapshot"
    assert b.apply({"type": "orderbook", "action": "update", "instrument": "BTC-USD", "prev_seq": 10, "seq": 12,
                    "changes": [{"side": "buy", "price": Decimal("99.5"), "quantity": Decimal(0)},
                                {"side": "buy", "price": Decimal(100), "quantity": Decimal("0.25")}]}) == "update"
    assert b.seq == 12 and b.bids == {Decimal(100): Decimal("0.25")} and b.best_ask() == Decimal(101)
    assert b.as_rest()["bids"] == [{"price": Decimal(100), "quantity": Decimal("0.25"),
                                    "cumulative": Decimal("0.25")}]
    # a heartbeat moves the seq the book reflects, not the chain the next update continues
    assert b.apply({"type": "heartbeat", "seqs": {"BTC-USD": 15}}) == "heartbeat"
    assert (b.seq, b.as_of_seq) == (12, 15)
    assert b.apply({"type": "heartbeat", "seqs": {"BTC-USD": 14}}) == "ignored"
    assert b.apply({"type": "orderbook", "action": "update", "instrument": "BTC-USD", "prev_seq": 13, "seq": 14,
                    "changes": []}) == "gap"
    assert b.seq is None and b.as_of_seq is None  # nothing applied until the next snapshot
    assert b.apply({"type": "orderbook", "action": "update", "instrument": "ETH-USD", "prev_seq": 1, "seq": 2,
                    "changes": []}) == "ignored"


def test_typed_errors_from_the_error_body():
    e = error_from(400, {"error": {"code": "off_tick", "message": "price ...", "field": "price"}})
    assert isinstance(e, InvalidRequest) and (e.code, e.field, e.status) == ("off_tick", "price", 400)
    assert isinstance(error_from(409, {"error": {"code": "order_closed", "message": "x"}}), Conflict)
    e = error_from(502, "not json")
    assert isinstance(e, Unavailable) and e.code == "error"


def _resp(status, body=b'{"error":{"code":"x","message":"y"}}', headers=None):
    return httpx.Response(status, content=body, headers=headers or {})


def test_retry_decisions():
    p = _Policy(max_retries=2, max_wait=5.0, backoff=0.1)
    order = _Call("POST", "/orders", body={"idempotency_key": "k"})
    risky = _Call("POST", "/x", safe_to_repeat=False)
    # 429 with Retry-After: wait that long (capped), then give up with RateLimited after the retries
    assert p.decide(order, 0, _resp(429, headers={"Retry-After": "2"}), None) == (None, None, 2.0)
    assert p.decide(order, 0, _resp(429, headers={"Retry-After": "60"}), None)[2] == 5.0
    _, err, wait = p.decide(order, 2, _resp(429, headers={"Retry-After": "1"}), None)
    assert isinstance(err, RateLimited) and err.retry_after == 1.0 and wait is None
    # 503 is always retried (refused before it was done); 504 only for a request safe to repeat
    assert p.decide(risky, 0, _resp(503), None)[2] == 0.1
    assert isinstance(p.decide(risky, 0, _resp(504), None)[1], Unavailable)
    assert p.decide(order, 1, _resp(504), None)[2] == 0.2
    # no answer at all: retried when safe, else ConnectionFailed
    assert p.decide(order, 0, None, httpx.ConnectTimeout("t"))[2] == 0.1
    assert isinstance(p.decide(risky, 0, None, httpx.ConnectTimeout("t"))[1], ConnectionFailed)
    # 4xx: raised at once
    assert isinstance(p.decide(order, 0, _resp(400), None)[1], InvalidRequest)
    result, err, wait = p.decide(order, 0, _resp(201, b'{"order":{"price":1.5}}'), None)
    assert result == {"order": {"price": Decimal("1.5")}} and err is None and wait is None


def test_stream_url():
    assert stream_url("http://127.0.0.1:3000") == "ws://127.0.0.1:3000/stream"
    assert stream_url("https://x.example/") == "wss://x.example/stream"
    assert stream_url("ws://h:1/stream") == "ws://h:1/stream"
