"""The write side's edge: every malformed order is refused with a code and the field, and
good input becomes exact integer ticks and lots."""

import pytest

from command_service.edge import (
    decode_order_request,
    request_hash,
    spec_for,
    to_place,
)
from contracts.api import ApiError
from contracts.instruments import load_instruments

INSTRUMENTS = load_instruments()
BTC = INSTRUMENTS.get("BTC-USD")


def place(body: bytes):
    req = decode_order_request(body)
    spec = spec_for(INSTRUMENTS, req.instrument)
    return to_place(req, req.client_id or "c", req.order_id or "oid", spec)


def refused(body: bytes) -> ApiError:
    with pytest.raises(ApiError) as info:
        place(body)
    assert info.value.status == 400
    return info.value


def test_seed_limit_order_becomes_exact_ticks_and_lots():
    cmd = place(b'{"idempotency_key":"test-order-1","client_id":"client-A","instrument":"BTC-USD",'
                b'"side":"buy","type":"limit","price":70150.5,"quantity":0.25}')
    assert (cmd.price, cmd.quantity) == (7015050, 25_000_000)
    assert (cmd.side.value, cmd.order_type.value, cmd.tif.value) == ("buy", "limit", "GTC")


def test_decimal_strings_are_accepted_and_exact():
    cmd = place(b'{"client_id":"a","side":"sell","type":"limit","price":"0.3","quantity":"0.1"}')
    assert (cmd.price, cmd.quantity) == (30, 10_000_000)


def test_instrument_defaults_to_btc_usd():
    assert place(b'{"client_id":"a","side":"sell","type":"market","quantity":1}').instrument == "BTC-USD"


@pytest.mark.parametrize("body, code, field", [
    (b'{"side":"buy","type":"limit","price":0,"quantity":1}', "must_be_positive", "price"),
    (b'{"side":"buy","type":"limit","price":-5,"quantity":1}', "must_be_positive", "price"),
    (b'{"side":"buy","type":"limit","price":"NaN","quantity":1}', "invalid_number", "price"),
    (b'{"side":"buy","type":"limit","price":"Infinity","quantity":1}', "invalid_number", "price"),
    (b'{"side":"buy","type":"limit","price":100.001,"quantity":1}', "off_tick", "price"),
    (b'{"side":"buy","type":"limit","price":100,"quantity":0.000000001}', "out_of_range", "quantity"),
    (b'{"side":"buy","type":"limit","price":100,"quantity":0.123456789}', "off_lot", "quantity"),
    (b'{"side":"buy","type":"limit","price":100,"quantity":1000.00000001}', "out_of_range", "quantity"),
    (b'{"side":"buy","type":"limit","price":1e400,"quantity":1}', "out_of_range", "price"),
    (b'{"side":"buy","type":"limit","price":100,"quantity":99999999999999999999999999999999999}',
     "out_of_range", "quantity"),
    (b'{"side":"buy","type":"limit","quantity":1}', "missing_field", "price"),
    (b'{"side":"buy","type":"market","price":5,"quantity":1}', "invalid_field", "price"),
    (b'{"side":"buy","type":"limit","price":5}', "missing_field", "quantity"),
    (b'{"type":"limit","price":5,"quantity":1}', "missing_field", "side"),
    (b'{"side":"up","type":"limit","price":5,"quantity":1}', "invalid_field", "side"),
    (b'{"side":"buy","type":"iceberg","price":5,"quantity":1}', "invalid_field", "type"),
    (b'{"side":"buy","type":"limit","price":true,"quantity":1}', "invalid_type", "price"),  # the documented code for a non-number
    (b'{"side":"buy","type":"limit","price":[1],"quantity":1}', "invalid_type", "price"),
    (b'{"side":"buy","type":"limit","price":"12abc","quantity":1}', "invalid_number", "price"),
    (b'{"side":"buy","type":"limit","price":5,"quantity":1,"instrument":"DOGE-USD"}', "unknown_instrument",
     "instrument"),
    (b'{"side":"buy","type":"limit","price":5,"quantity":1,"time_in_force":"GTX"}', "invalid_field",
     "time_in_force"),
    (b'{"side":"buy","type":"limit","price":5,"quantity":1,"time_in_force":"GTD"}', "missing_field",
     "expire_time"),
    (b'{"side":"buy","type":"limit","price":5,"quantity":1,"time_in_force":"GTD","expire_time":"2001-01-01T00:00:00Z"}',
     "invalid_field", "expire_time"),
    (b'{"side":"buy","type":"limit","price":5,"quantity":1,"time_in_force":"GTD","expire_time":"soon"}',
     "invalid_field", "expire_time"),
    (b'{"side":"buy","type":"limit","price":5,"quantity":1,"expire_time":"2100-01-01T00:00:00Z"}',
     "invalid_field", "expire_time"),
    (b'{"side":"buy","type":"market","quantity":1,"time_in_force":"GTD","expire_time":"2100-01-01T00:00:00Z"}',
     "invalid_field", "time_in_force"),
    (b'{"side":"buy","type":"limit","price":5,"quantity":1,"display_quantity":1}', "invalid_field",
     "display_quantity"),
    (b'{"side":"buy","type":"limit","price":5,"quantity":2,"display_quantity":0}', "must_be_positive",
     "display_quantity"),
    (b'{"side":"buy","type":"limit","price":5,"quantity":2,"display_quantity":1,"time_in_force":"IOC"}',
     "invalid_field", "display_quantity"),
    (b'{"side":"buy","type":"market","quantity":2,"display_quantity":1}', "invalid_field", "display_quantity"),
    (b'{"side":"buy","type":"market","quantity":1,"post_only":true}', "invalid_field", "post_only"),
    (b'{"side":"buy","type":"limit","price":5,"quantity":1,"order_id":"has space"}', "invalid_field", "order_id"),
    (b'{"side":"buy","type":"stop_limit","price":5,"quantity":1}', "missing_field", "stop_price"),
    (b'{"side":"buy","type":"limit","price":5,"stop_price":4,"quantity":1}', "invalid_field", "stop_price"),
])
def test_bad_orders_are_refused_with_code_and_field(body, code, field):
    err = refused(body)
    assert (err.code, err.field) == (code, field), err.message


@pytest.mark.parametrize("body", [b"", b"{", b"not json", b'{"side": NaN}', b"[1,2]", b"null",
                                  b'{"x":' + b"[" * 40000 + b"]" * 40000 + b"}", b'{"side":"\xff"}', b"[" * 50000])
def test_malformed_json_is_refused(body):
    err = refused(body)
    assert err.code in ("invalid_json", "invalid_field", "unknown_field")


def test_request_hash_changes_with_the_request_and_not_with_formatting():
    a = place(b'{"client_id":"a","side":"buy","type":"limit","price":100,"quantity":1}')
    b = place(b'{"quantity":"1.0","price":"100.00","type":"limit","side":"buy","client_id":"a"}')
    c = place(b'{"client_id":"a","side":"buy","type":"limit","price":100.01,"quantity":1}')
    assert request_hash(a, None) == request_hash(b, None)
    assert request_hash(a, None) != request_hash(c, None)
    assert request_hash(a, None) != request_hash(a, "my-id")


def test_control_characters_in_idempotency_key_are_refused():
    err = refused(b'{"side":"buy","type":"limit","price":1,"quantity":1,"idempotency_key":"a\\u0000b"}')
    assert (err.code, err.field) == ("invalid_field", "idempotency_key")


def test_book_view_equals_a_fresh_rendering_after_every_command():
    # book_view reuses a side's bytes while its top rows are unchanged; after any sequence
    # of commands the JSON must equal a rendering from scratch of the book at that moment.
    import json
    import random
    from decimal import Decimal

    from command_service.edge import book_view
    from contracts.api import json_encoder
    from contracts.enums import OrderType, Side
    from contracts.messages import CancelOrder, PlaceOrder
    from engine import OrderBook

    spec = load_instruments().get("ETH-USD")
    book, rnd, live = OrderBook("ETH-USD"), random.Random(7), []
    for n in range(600):
        if live and rnd.random() < 0.3:
            book.execute(CancelOrder(live.pop(rnd.randrange(len(live))), "c", "ETH-USD", n + 1))
        else:
            oid = f"o{n}"
            side = rnd.choice((Side.BUY, Side.SELL))
            price = 350_000 + rnd.randint(-30, 30) + (-40 if side == Side.BUY else 40)
            book.execute(PlaceOrder(order_id=oid, client_id=f"c{n % 7}", instrument="ETH-USD", side=side,
                                    order_type=OrderType.LIMIT, price=price, quantity=rnd.randint(1, 50), ts=n + 1))
            live.append(oid)
        got = json.loads(json_encoder.encode(book_view(book, spec, 5)), parse_float=Decimal)
        bids, asks = book.l2(5)

        def rows(levels):
            out, cum = [], 0
            for p, q in levels:
                cum += q
                out.append({"price": spec.ticks_to_price(p), "quantity": spec.lots_to_quantity(q),
                            "cumulative": spec.lots_to_quantity(cum)})
            return out

        assert got == {"instrument": "ETH-USD", "bids": rows(bids), "asks": rows(asks), "seq": book.seq}
