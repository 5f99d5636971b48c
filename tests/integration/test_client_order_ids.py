"""Client order ids (issue 20): a client-chosen id may not block or reveal another client's order.

The order_id is always the server's; a client's own id is `client_order_id`, unique per client
(for good: open, closed, rejected or in flight), so two clients may use the same one. GET, cancel
and amend (HTTP and /ws) take either id, a client order id resolved among the caller's orders only.
The seed API's `order_id` on place is a deprecated alias. A real `python -m command_service`
against the real PostgreSQL, auth on."""

import asyncio
import json

import pytest
import websockets

from tests.support.services import auth, command_with_keys, error_of, event_count, place, reset_db

CLIENTS = ("alice", "bob", "carol")


@pytest.fixture(scope="module")
async def svc():
    await reset_db()
    async with command_with_keys(CLIENTS, {"EXCHANGE_RATE_LIMIT_PER_SECOND": "0"}) as proc:
        yield proc


async def test_two_clients_may_use_the_same_client_order_id_and_each_sees_only_its_own(svc):
    a = await place(svc, "alice", client_order_id="shared-1", price="101")
    b = await place(svc, "bob", client_order_id="shared-1", price="102")
    assert a.status_code == 201 and b.status_code == 201, (a.text, b.text)  # before: bob got 409
    a, b = a.json()["order"], b.json()["order"]
    assert a["client_order_id"] == b["client_order_id"] == "shared-1"
    assert a["order_id"] != b["order_id"] and "shared-1" not in (a["order_id"], b["order_id"])
    for who, mine in (("alice", a), ("bob", b)):
        r = await svc.http.get("/orders/shared-1", headers=auth(svc, who))
        assert r.status_code == 200 and r.json()["order"]["order_id"] == mine["order_id"], r.text
        assert r.json()["order"]["client_order_id"] == "shared-1" and r.json()["order"]["price"] == mine["price"]
    # cancel by the client order id cancels the caller's own order only
    r = await svc.http.post("/orders/shared-1/cancel", headers=auth(svc, "alice"))
    assert r.status_code == 200 and r.json()["order"]["order_id"] == a["order_id"], r.text
    assert r.json()["order"]["client_order_id"] == "shared-1"
    r = await svc.http.get(f"/orders/{b['order_id']}", headers=auth(svc, "bob"))
    assert r.json()["order"]["status"] == "open"


async def test_reusing_an_own_client_order_id_is_409_open_or_closed(svc):
    r = await place(svc, "carol", client_order_id="mine-1")
    assert r.status_code == 201
    before = await event_count()
    r = await place(svc, "carol", client_order_id="mine-1", price="99")
    assert error_of(r) == (409, "duplicate_client_order_id", "client_order_id"), r.text
    assert await event_count() == before
    # closed: still taken (unique per client for good)
    assert (await svc.http.post("/orders/mine-1/cancel", headers=auth(svc, "carol"))).status_code == 200
    r = await place(svc, "carol", client_order_id="mine-1", price="98")
    assert error_of(r) == (409, "duplicate_client_order_id", "client_order_id"), r.text
    # the seed alias names the same id space
    r = await place(svc, "carol", order_id="mine-1", price="98")
    assert error_of(r) == (409, "duplicate_client_order_id", "client_order_id"), r.text
    assert await event_count() == before + 1  # only the cancel


async def test_concurrent_requests_with_one_client_order_id_make_one_order(svc):
    rs = await asyncio.gather(*[place(svc, "alice", client_order_id="race-1", instrument="SOL-USD", price="3",
                                      quantity="0.01") for _ in range(10)])
    assert sorted(r.status_code for r in rs) == [201] + [409] * 9, [r.text for r in rs]
    assert {r.json()["error"]["code"] for r in rs if r.status_code == 409} == {"duplicate_client_order_id"}
    # another client's concurrent uses of the same id are not affected
    rs = await asyncio.gather(*[place(svc, who, client_order_id="race-2", instrument="SOL-USD", price="3",
                                      quantity="0.01") for who in CLIENTS])
    assert [r.status_code for r in rs] == [201, 201, 201], [r.text for r in rs]


async def test_another_clients_ids_answer_like_unknown_ones(svc):
    r = await place(svc, "alice", client_order_id="alice-secret", price="97")
    oid = r.json()["order"]["order_id"]
    unknown = error_of(await svc.http.get("/orders/no-such-order", headers=auth(svc, "bob")))
    assert unknown[:2] == (404, "not_found")
    for ident in (oid, "alice-secret"):
        assert error_of(await svc.http.get(f"/orders/{ident}", headers=auth(svc, "bob"))) == unknown
        r = await svc.http.post(f"/orders/{ident}/cancel", headers=auth(svc, "bob"))
        assert error_of(r) == unknown, r.text
        r = await svc.http.post(f"/orders/{ident}/amend", json={"quantity": "2"}, headers=auth(svc, "bob"))
        assert error_of(r) == unknown, r.text
    r = await svc.http.get(f"/orders/{oid}", headers=auth(svc, "alice"))
    assert r.json()["order"]["status"] == "open"


async def test_a_client_order_id_equal_to_another_clients_order_id_names_the_callers_order(svc):
    """Server order ids are public (trades carry them): one used as a client order id must still
    name the caller's own order, never the other client's."""
    theirs = (await place(svc, "alice", price="96")).json()["order"]["order_id"]
    r = await place(svc, "bob", client_order_id=theirs, price="95")
    assert r.status_code == 201, r.text
    mine = r.json()["order"]["order_id"]
    r = await svc.http.get(f"/orders/{theirs}", headers=auth(svc, "bob"))
    assert r.status_code == 200 and r.json()["order"]["order_id"] == mine
    r = await svc.http.post(f"/orders/{theirs}/cancel", headers=auth(svc, "bob"))
    assert r.status_code == 200 and r.json()["order"]["order_id"] == mine
    r = await svc.http.get(f"/orders/{theirs}", headers=auth(svc, "alice"))
    assert r.json()["order"]["status"] == "open"


async def test_seed_body_with_order_id_works_and_both_ids_is_400(svc):
    r = await place(svc, "bob", order_id="seed-7", price="94")
    assert r.status_code == 201, r.text
    order = r.json()["order"]
    assert order["client_order_id"] == "seed-7" and order["order_id"] != "seed-7"
    r = await svc.http.get("/orders/seed-7", headers=auth(svc, "bob"))
    assert r.status_code == 200 and r.json()["order"]["order_id"] == order["order_id"]
    before = await event_count()
    r = await place(svc, "bob", order_id="seed-8", client_order_id="seed-8")
    assert error_of(r) == (400, "invalid_field", "order_id"), r.text
    assert await event_count() == before
    # without a client order id the view says so
    r = await place(svc, "bob", price="93")
    assert r.json()["order"]["client_order_id"] is None


async def test_amend_by_client_order_id(svc):
    r = await place(svc, "carol", client_order_id="amend-me", price="92", quantity="2")
    oid = r.json()["order"]["order_id"]
    r = await svc.http.post("/orders/amend-me/amend", json={"quantity": "1"}, headers=auth(svc, "carol"))
    assert r.status_code == 200, r.text
    assert (r.json()["order"]["order_id"], r.json()["order"]["client_order_id"], r.json()["order"]["quantity"]) == (
        oid, "amend-me", 1)


async def test_ws_place_cancel_and_amend_by_client_order_id(svc):
    url = svc.url.replace("http", "ws") + "/ws"
    async with websockets.connect(url, additional_headers=auth(svc, "alice")) as wa, \
            websockets.connect(url, additional_headers=auth(svc, "bob")) as wb:
        async def ask(ws, msg):
            await ws.send(json.dumps(msg))
            while True:
                m = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if m.get("request_id") == msg["request_id"]:
                    return m

        order = {"type": "order", "order_type": "limit", "side": "sell", "price": "5000", "quantity": "1",
                 "instrument": "ETH-USD", "client_order_id": "ws-1"}
        a = await ask(wa, {**order, "request_id": 1})
        b = await ask(wb, {**order, "request_id": 1})
        assert a["type"] == b["type"] == "order_accepted", (a, b)
        assert a["order"]["client_order_id"] == b["order"]["client_order_id"] == "ws-1"
        m = await ask(wa, {**order, "request_id": 2})
        assert (m["type"], m["error"]["code"]) == ("error", "duplicate_client_order_id"), m
        m = await ask(wb, {"type": "amend", "client_order_id": "ws-1", "quantity": "0.5", "request_id": 3})
        assert m["type"] == "amend_accepted" and m["order"]["order_id"] == b["order"]["order_id"], m
        m = await ask(wa, {"type": "cancel", "order_id": "ws-1", "request_id": 4})
        assert m["type"] == "cancel_accepted" and m["order"]["order_id"] == a["order"]["order_id"], m
        m = await ask(wb, {"type": "cancel", "order_id": a["order"]["order_id"], "request_id": 5})
        assert (m["type"], m["error"]["code"]) == ("error", "not_found"), m
        m = await ask(wb, {"type": "cancel", "client_order_id": "ws-1", "request_id": 6})
        assert m["type"] == "cancel_accepted" and m["order"]["order_id"] == b["order"]["order_id"], m


async def test_idempotent_retry_with_a_client_order_id_replays(svc):
    body = dict(client_order_id="idem-coid", idempotency_key="k-coid", price="91")
    first = await place(svc, "alice", **body)
    again = await place(svc, "alice", **body)
    assert first.status_code == again.status_code == 201
    assert again.headers.get("Idempotent-Replayed") == "true" and again.content == first.content
    r = await place(svc, "alice", client_order_id="idem-coid", idempotency_key="k-other", price="91")
    assert error_of(r) == (409, "duplicate_client_order_id", "client_order_id")
