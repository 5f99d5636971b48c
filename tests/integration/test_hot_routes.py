"""The hot routes have one code path: POST /orders and POST /orders/{id}/cancel answered by the
fast ASGI path (what clients reach) and by the Litestar handlers that carry the OpenAPI schema
give the same answers - status, error bodies, headers and order shapes - for the same requests."""

import uuid

import httpx
import msgspec
import pytest

from command_service.app import create_asgi
from command_service.settings import CommandSettings
from ops.stack import free_port
from tests.support.query import instruments_file
from tests.support.services import InProcessServer, create_key

SYMBOL = f"HOT{uuid.uuid4().hex[:4].upper()}-USD"  # its own instrument: its own advisory lock
VOLATILE = {"orderbook", "order_id", "created_at", "updated_at", "trade_id", "buy_order_id", "sell_order_id", "timestamp", "seq"}


@pytest.fixture(scope="module")
async def both():
    settings = msgspec.structs.replace(
        CommandSettings.from_env(), instruments_file=instruments_file([SYMBOL]), port=free_port(), auth_enabled=True,
        nats_enabled=False, rate_limit_per_second=0, max_body_bytes=2048,
    )
    server = await InProcessServer(create_asgi(settings), settings.port).start()
    key = await create_key(f"hot-{uuid.uuid4().hex[:6]}")
    fast = httpx.AsyncClient(base_url=server.url, timeout=10)
    # The Litestar app behind the fast path, called directly: its lifespan ran under uvicorn.
    framework = httpx.AsyncClient(transport=httpx.ASGITransport(app=server.app.app), base_url="http://framework",
                                  timeout=10)
    try:
        yield fast, framework, key
    finally:
        await fast.aclose()
        await framework.aclose()
        await server.stop()


def stable(body):
    """The answer without what differs between two orders placed one after the other."""
    if isinstance(body, dict):
        return {k: stable(v) for k, v in body.items() if k not in VOLATILE}
    if isinstance(body, list):
        return [stable(v) for v in body]
    return body


async def same_answer(fast, framework, method, path, **kw):
    a = await fast.request(method, path, **kw)
    b = await framework.request(method, path, **kw)
    assert a.status_code == b.status_code, (path, a.text, b.text)
    assert a.headers.get("content-type") == b.headers.get("content-type")
    assert a.headers.get("retry-after") == b.headers.get("retry-after")
    assert stable(a.json()) == stable(b.json()), (a.text, b.text)
    return a, b


async def test_errors_are_identical_on_both_paths(both):
    fast, framework, key = both
    auth = {"Authorization": f"Bearer {key}"}
    jauth = {**auth, "Content-Type": "application/json"}
    order = {"instrument": SYMBOL, "side": "buy", "type": "limit", "price": "100.00", "quantity": "1"}
    cases = [
        ("POST", "/orders", {"json": order}),  # no key
        ("POST", "/orders", {"json": order, "headers": {"Authorization": "Bearer nope"}}),
        ("POST", "/orders", {"content": b"{not json", "headers": jauth}),
        ("POST", "/orders", {"content": b"[1, 2]", "headers": jauth}),
        ("POST", "/orders", {"content": b"[1, 2]", "headers": auth}),  # no Content-Type: 415
        ("POST", "/orders", {"json": {**order, "price": "100.001"}, "headers": auth}),  # off the tick grid
        ("POST", "/orders", {"json": {**order, "instrument": "NOPE-USD"}, "headers": auth}),
        ("POST", "/orders", {"json": {k: v for k, v in order.items() if k != "side"}, "headers": auth}),
        ("POST", "/orders", {"json": {**order, "quantity": "-1"}, "headers": auth}),
        ("POST", "/orders", {"content": b'{"instrument": "' + b"x" * 4096 + b'"}', "headers": jauth}),  # > 2048 B
        ("POST", f"/orders/{uuid.uuid4()}/cancel", {"headers": auth}),  # unknown order
        ("POST", f"/orders/{uuid.uuid4()}/cancel", {}),  # no key
    ]
    statuses = []
    for method, path, kw in cases:
        a, _ = await same_answer(fast, framework, method, path, **kw)
        statuses.append(a.status_code)
        assert set(a.json()) == {"error"} and a.json()["error"]["code"]
    assert statuses == [401, 401, 400, 400, 415, 400, 400, 400, 400, 413, 404, 401]


async def test_orders_and_cancels_are_identical_on_both_paths(both):
    fast, framework, key = both
    auth = {"Authorization": f"Bearer {key}"}
    order = {"instrument": SYMBOL, "side": "sell", "type": "limit", "price": "250.50", "quantity": "2"}
    a, b = await same_answer(fast, framework, "POST", "/orders", json=order, headers=auth)
    assert a.status_code == 201 and a.json()["order"]["status"] == "open"
    assert a.json()["orderbook"]["asks"] and b.json()["orderbook"]["asks"]
    ids = [a.json()["order"]["order_id"], b.json()["order"]["order_id"]]
    # a buy against the client's own sells: self-trade prevention answers the same on both paths
    buy = {**order, "side": "buy", "quantity": "1"}
    a, b = await same_answer(fast, framework, "POST", "/orders", json=buy, headers=auth)
    assert a.status_code == 201 and a.json()["trades"] == []
    # cancel the first sell through the fast path, the second through the framework: same answer
    ca = await fast.post(f"/orders/{ids[0]}/cancel", headers=auth)
    cb = await framework.post(f"/orders/{ids[1]}/cancel", headers=auth)
    assert ca.status_code == cb.status_code == 200
    assert stable(ca.json()) == stable(cb.json())
    # and cancelling again is the same conflict on both
    await same_answer(fast, framework, "POST", f"/orders/{ids[0]}/cancel", headers=auth)


async def test_amends_are_identical_on_both_paths(both):
    """POST /orders/{id}/amend (issue 15) takes the same one code path."""
    fast, framework, key = both
    auth = {"Authorization": f"Bearer {key}"}
    order = {"instrument": SYMBOL, "side": "buy", "type": "limit", "price": "90.00", "quantity": "3"}
    ids = [(await client.post("/orders", json=order, headers=auth)).json()["order"]["order_id"]
           for client in (fast, framework)]
    aa = await fast.post(f"/orders/{ids[0]}/amend", json={"quantity": "2"}, headers=auth)
    ab = await framework.post(f"/orders/{ids[1]}/amend", json={"quantity": "2"}, headers=auth)
    assert aa.status_code == ab.status_code == 200
    assert stable(aa.json()) == stable(ab.json())
    assert aa.json()["order"]["quantity"] == 2
    for body in ({"quantity": "2"}, {}, {"price": "90.001"}):  # nothing to change, nothing given, off the grid
        await same_answer(fast, framework, "POST", f"/orders/{ids[0]}/amend", json=body, headers=auth)
    await same_answer(fast, framework, "POST", f"/orders/{uuid.uuid4()}/amend", json={"quantity": "1"},
                      headers=auth)
    await same_answer(fast, framework, "POST", f"/orders/{ids[0]}/amend", content=b"{no", headers=auth)
