"""POST /orders below ASGI (command_service/fastpath.py order_route_nowait, contracts/http_transport.py
direct_routes) against a real `python -m command_service`: a new order by a cached key is answered by
the connection itself, everything else on the route by order_route - and a client cannot tell which:
the same statuses, error shapes, X-Request-Id and RateLimit headers, one token per request, answers
in request order on a connection, Connection: close honoured, an oversized body refused."""

import asyncio
import json
import re

import pytest

from tests.support.services import auth, command_with_keys, reset_db

ORDER = {"instrument": "ETH-USD", "side": "buy", "type": "limit", "price": "10", "quantity": "1"}


@pytest.fixture(scope="module")
async def svc():
    await reset_db()
    async with command_with_keys(("hp-a",), {"EXCHANGE_RATE_LIMIT_PER_SECOND": "0.001",
                                             "EXCHANGE_RATE_LIMIT_BURST": "1000"}) as proc:
        yield proc


def _request(key: str, body: bytes, request_id: str, close: bool = False) -> bytes:
    return (b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + key.encode() + b"\r\nX-Request-Id: " + request_id.encode() + b"\r\n"
            + (b"Connection: close\r\n" if close else b"")
            + b"Content-Length: %d\r\n\r\n" % len(body) + body)


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], dict]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    headers = dict(line.split(": ", 1) for line in head[1:] if line)
    headers = {k.lower(): v for k, v in headers.items()}
    body = await reader.readexactly(int(headers["content-length"]))
    return status, headers, json.loads(body)


def _left(headers: dict[str, str]) -> int:
    return int(re.search(r";r=(\d+);", headers["ratelimit"]).group(1))


async def test_pipelined_orders_are_answered_in_order_with_their_ids_and_one_token_each(svc):
    key = svc.keys["hp-a"]
    assert (await svc.http.post("/orders", json=ORDER, headers=auth(svc, "hp-a"))).status_code == 201  # key cached
    reader, writer = await asyncio.open_connection("127.0.0.1", svc.port)
    try:
        plain = json.dumps(ORDER).encode()
        keyed = json.dumps({**ORDER, "idempotency_key": "hp-key-1"}).encode()  # order_route's way
        bad = json.dumps({**ORDER, "quantity": "-1"}).encode()
        # five requests in one write: the connection answers them one after another, in order
        writer.write(b"".join([_request(key, plain, "r-1"), _request(key, keyed, "r-2"), _request(key, bad, "r-3"),
                               _request(key, keyed, "r-4"), _request(key, plain, "r-5")]))
        answers = [await _response(reader) for _ in range(5)]
    finally:
        writer.close()
    assert [a[0] for a in answers] == [201, 201, 400, 201, 201]
    assert [a[1]["x-request-id"] for a in answers] == ["r-1", "r-2", "r-3", "r-4", "r-5"]
    assert answers[2][2]["error"]["field"] == "quantity"
    assert answers[1][2]["order"]["order_id"] == answers[3][2]["order"]["order_id"]  # the replay of hp-key-1
    assert answers[0][2]["order"]["order_id"] != answers[4][2]["order"]["order_id"]
    assert "orderbook" in answers[0][2] and answers[0][2]["order"]["status"] == "open"
    # every request, whichever way it went, took exactly one token (the bucket refills ~never here)
    left = [_left(a[1]) for a in answers]
    assert left == [left[0] - i for i in range(5)], left


async def test_an_unknown_key_an_oversized_body_and_connection_close(svc):
    reader, writer = await asyncio.open_connection("127.0.0.1", svc.port)
    try:
        writer.write(_request("not-a-key", json.dumps(ORDER).encode(), "u-1"))
        status, headers, body = await _response(reader)
        assert (status, body["error"]["code"], headers["x-request-id"]) == (401, "unauthorized", "u-1")
        big = json.dumps({**ORDER, "client_id": "x" * 40_000}).encode()  # over the 16 KiB body limit
        writer.write(_request(svc.keys["hp-a"], big, "u-2"))
        status, headers, body = await _response(reader)
        assert (status, body["error"]["code"], headers["x-request-id"]) == (413, "payload_too_large", "u-2")
    finally:
        writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", svc.port)
    try:
        writer.write(_request(svc.keys["hp-a"], json.dumps(ORDER).encode(), "c-1", close=True))
        status, headers, body = await _response(reader)
        assert status == 201 and headers.get("connection") == "close"
        assert await asyncio.wait_for(reader.read(), 5) == b""  # and the server closed the connection
    finally:
        writer.close()
