"""No client can hurt another (issue 20, command side): unguessable order ids, another client's
order answers like an unknown one, unknown fields and query parameters refused, an explicit
cancel-all, strict numbers/times/media types, pre-trade risk limits and rate limits on every
entry point. A real `python -m command_service` against the real PostgreSQL, auth on."""

import json
import uuid

import pytest
import websockets

from tests.support.services import ROOT, auth, command_with_keys, error_of, event_count, place, reset_db

CLIENTS = ("alice", "bob", "carol", "dave", "erin")


@pytest.fixture(scope="module")
async def svc(tmp_path_factory):
    await reset_db()
    # SOL-USD with small risk limits (the shipped ones are far beyond what a test can fill)
    specs = json.loads((ROOT / "config" / "instruments.json").read_text())
    for s in specs:
        if s["symbol"] == "SOL-USD":
            s.update(max_order_notional="1000", max_position="5")
    instruments = tmp_path_factory.mktemp("risk") / "instruments.json"
    instruments.write_text(json.dumps(specs))
    async with command_with_keys(CLIENTS, {
        "EXCHANGE_RATE_LIMIT_PER_SECOND": "0",
        "EXCHANGE_MAX_OPEN_ORDERS": "5",
        "EXCHANGE_INSTRUMENTS_FILE": str(instruments),
    }) as proc:
        yield proc


# ------------------------------------------------------------------ order ids


async def test_server_order_ids_are_unguessable(svc):
    ids = []
    for _ in range(6):
        r = await place(svc, "alice", price="1")
        assert r.status_code == 201, r.text
        ids.append(r.json()["order"]["order_id"])
        await svc.http.post(f"/orders/{ids[-1]}/cancel", headers=auth(svc, "alice"))
    # UUID v7: the creation millisecond, then 74 random bits. Not prefix + counter: past the time and
    # the version, consecutive ids share no long common prefix.
    for a, b in zip(ids, ids[1:]):
        assert uuid.UUID(a).version == 7, a
        ra, rb = a.replace("-", "")[13:], b.replace("-", "")[13:]
        common = next((i for i, (x, y) in enumerate(zip(ra, rb)) if x != y), len(ra))
        assert common < 6, (a, b)


async def test_another_clients_order_answers_exactly_like_an_unknown_one(svc):
    r = await place(svc, "bob", price="2")
    oid = r.json()["order"]["order_id"]
    unknown = "00000000-0000-4000-8000-000000000000"
    for method, path, body in (("GET", "/orders/{}", None), ("POST", "/orders/{}/cancel", None),
                               ("POST", "/orders/{}/amend", {"quantity": "2"})):
        theirs = await svc.http.request(method, path.format(oid), json=body, headers=auth(svc, "alice"))
        nobody = await svc.http.request(method, path.format(unknown), json=body, headers=auth(svc, "alice"))
        assert theirs.status_code == nobody.status_code == 404, (path, theirs.text)
        assert theirs.text.replace(oid, unknown) == nobody.text
    r = await svc.http.get(f"/orders/{oid}", headers=auth(svc, "bob"))
    assert r.json()["order"]["status"] == "open"


@pytest.mark.parametrize("bad", ["cancel-all", "cancel-after", ".", ".."])
async def test_reserved_words_are_not_order_ids(svc, bad):
    before = await event_count()
    r = await place(svc, "alice", order_id=bad)
    assert error_of(r) == (400, "invalid_field", "order_id"), r.text
    assert await event_count() == before


async def test_a_nul_in_an_id_is_a_400_naming_the_field(svc):
    for path, method in (("/orders/a%00b", "GET"), ("/orders/a%00b/cancel", "POST"), ("/orders/a%00b/amend", "POST")):
        r = await svc.http.request(method, path, json={"quantity": "1"} if "amend" in path else None,
                                   headers=auth(svc, "alice"))
        assert error_of(r) == (400, "invalid_field", "order_id"), (path, r.text)
    for field in ("order_id", "client_id", "idempotency_key", "instrument"):
        r = await place(svc, "alice", **{field: "a\x00b"})
        assert r.status_code == 400 and error_of(r)[2] == field, (field, r.text)


# ------------------------------------------------------------------ unknown fields and parameters


async def test_unknown_body_fields_are_refused_naming_the_field(svc):
    before = await event_count()
    r = await place(svc, "alice", display_qty="0.1")
    assert error_of(r) == (400, "unknown_field", "display_qty"), r.text
    r = await svc.http.post("/orders/cancel-all", json={"all": True, "instrumnet": "BTC-USD"}, headers=auth(svc, "alice"))
    assert error_of(r) == (400, "unknown_field", "instrumnet"), r.text
    r = await svc.http.post("/orders/cancel-after", json={"timeout_ms": 0, "x": 1}, headers=auth(svc, "alice"))
    assert error_of(r) == (400, "unknown_field", "x"), r.text
    assert await event_count() == before


async def test_cancel_all_with_a_query_string_cancels_nothing(svc):
    keep = (await place(svc, "carol", instrument="ETH-USD", price="10")).json()["order"]["order_id"]
    other = (await place(svc, "carol", instrument="SOL-USD", price="10")).json()["order"]["order_id"]
    before = await event_count()
    r = await svc.http.post("/orders/cancel-all?instrument=ETH-USD&side=buy", headers=auth(svc, "carol"))
    assert error_of(r) == (400, "unknown_field", "instrument"), r.text
    r = await svc.http.post("/orders?foo=1", json={"instrument": "BTC-USD", "side": "buy", "type": "limit",
                                                    "price": "1", "quantity": "1"}, headers=auth(svc, "carol"))
    assert error_of(r) == (400, "unknown_field", "foo"), r.text
    r = await svc.http.get(f"/orders/{keep}?x=1", headers=auth(svc, "carol"))
    assert error_of(r) == (400, "unknown_field", "x"), r.text
    # An empty body is not "everything": that must be said.
    r = await svc.http.post("/orders/cancel-all", headers=auth(svc, "carol"))
    assert error_of(r) == (400, "missing_field", "all"), r.text
    r = await svc.http.post("/orders/cancel-all", json={}, headers=auth(svc, "carol"))
    assert error_of(r) == (400, "missing_field", "all"), r.text
    assert await event_count() == before
    r = await svc.http.post("/orders/cancel-all", json={"all": True}, headers=auth(svc, "carol"))
    assert r.status_code == 200 and sorted(r.json()["cancelled"]) == sorted([keep, other])


async def test_ws_cancel_all_needs_all_or_an_instrument(svc):
    oid = (await place(svc, "dave", instrument="SOL-USD", price="10")).json()["order"]["order_id"]
    async with websockets.connect(svc.url.replace("http", "ws") + "/ws",
                                  additional_headers=auth(svc, "dave")) as ws:
        await ws.send(json.dumps({"type": "cancel_all", "request_id": 1}))
        m = json.loads(await ws.recv())
        assert m["type"] == "error" and m["error"]["code"] == "missing_field" and m["error"]["field"] == "all"
        await ws.send(json.dumps({"type": "order", "order_type": "limit", "side": "buy", "price": "1",
                                  "quantity": "1", "instrument": "SOL-USD", "display_qty": "1", "request_id": 2}))
        m = json.loads(await ws.recv())
        assert m["type"] == "error" and (m["error"]["code"], m["error"]["field"]) == ("unknown_field", "display_qty")
        await ws.send(json.dumps({"type": "cancel_all", "all": True, "request_id": 3}))
        m = json.loads(await ws.recv())
        assert m["type"] == "cancel_all_accepted" and m["cancelled"] == [oid]


# ------------------------------------------------------------------ strict numbers, times, media types


@pytest.mark.parametrize("field,value", [
    ("quantity", "1_000"), ("quantity", "\u0661"), ("price", "1_00"), ("price", "\u0661\u0660\u0660"),
    ("quantity", " 1"), ("quantity", "1e2"),
])
async def test_numbers_are_ascii_decimals_only(svc, field, value):
    before = await event_count()
    r = await place(svc, "erin", **{field: value})
    assert r.status_code == 400 and error_of(r)[2] == field, r.text
    assert await event_count() == before


@pytest.mark.parametrize("value", ["2099-W01-1T00:00:00Z", "20990101T000000Z", "2099-01-01", "2099-01-01T00:00:00"])
async def test_times_are_rfc3339_only(svc, value):
    r = await place(svc, "erin", time_in_force="GTD", expire_time=value)
    assert error_of(r) == (400, "invalid_field", "expire_time"), r.text


async def test_rfc3339_expire_time_is_accepted(svc):
    r = await place(svc, "erin", price="3", time_in_force="GTD", expire_time="2099-01-01T00:00:00.5+01:00")
    assert r.status_code == 201, r.text
    await svc.http.post("/orders/cancel-all", json={"all": True}, headers=auth(svc, "erin"))


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
async def test_bodies_must_be_json(svc, ctype):
    body = json.dumps({"instrument": "BTC-USD", "side": "buy", "type": "limit", "price": "1", "quantity": "1"})
    before = await event_count()
    for path in ("/orders", "/orders/cancel-all", "/orders/cancel-after"):
        r = await svc.http.post(path, content=body, headers={**auth(svc, "erin"), "Content-Type": ctype})
        assert error_of(r)[:2] == (415, "unsupported_media_type"), (path, r.text)
    assert await event_count() == before
    r = await svc.http.post("/orders", content=body, headers={**auth(svc, "erin"),
                                                               "Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 201, r.text
    await svc.http.post("/orders/cancel-all", json={"all": True}, headers=auth(svc, "erin"))


@pytest.mark.parametrize("cutoff", ["0001-01-01T00:00:00Z", "1969-12-31T23:59:59Z", "2020-W01-1T00:00:00Z"])
async def test_settlement_cutoff_outside_rfc3339_or_before_1970_is_a_400(svc, cutoff):
    r = await svc.http.post("/admin/settlement", json={"cutoff": cutoff}, headers=auth(svc, "admin"))
    assert error_of(r) == (400, "invalid_field", "cutoff"), r.text


# ------------------------------------------------------------------ pre-trade risk limits


async def test_an_order_above_the_max_notional_is_refused_and_changes_nothing(svc):
    before = await event_count()
    r = await place(svc, "dave", instrument="SOL-USD", price="201", quantity="5")  # 1005 > 1000
    assert error_of(r) == (409, "risk_limit", "max_order_notional"), r.text
    assert "1000" in r.json()["error"]["message"]
    assert await event_count() == before
    r = await place(svc, "dave", instrument="SOL-USD", price="200", quantity="5")  # 1000: at the limit
    assert r.status_code == 201, r.text
    await svc.http.post("/orders/cancel-all", json={"all": True}, headers=auth(svc, "dave"))


async def test_open_orders_per_client_and_instrument_are_limited(svc):
    for i in range(5):
        r = await place(svc, "carol", instrument="ETH-USD", price=str(10 + i))
        assert r.status_code == 201, r.text
    before = await event_count()
    r = await place(svc, "carol", instrument="ETH-USD", price="20")
    assert error_of(r) == (409, "risk_limit", "max_open_orders"), r.text
    assert await event_count() == before
    async with websockets.connect(svc.url.replace("http", "ws") + "/ws", additional_headers=auth(svc, "carol")) as ws:
        await ws.send(json.dumps({"type": "order", "order_type": "limit", "side": "buy", "price": "21",
                                  "quantity": "1", "instrument": "ETH-USD", "request_id": 1}))
        m = json.loads(await ws.recv())
        assert m["type"] == "error" and (m["error"]["code"], m["error"]["field"]) == ("risk_limit", "max_open_orders")
    # other instruments and other clients are not affected; an IOC does not rest, so it may go
    assert (await place(svc, "carol", instrument="SOL-USD", price="1")).status_code == 201
    assert (await place(svc, "bob", instrument="ETH-USD", price="20")).status_code == 201
    r = await place(svc, "carol", instrument="ETH-USD", price="1", time_in_force="IOC")
    assert r.status_code == 201 and r.json()["order"]["status"] == "cancelled"
    await svc.http.post("/orders/cancel-all", json={"instrument": "ETH-USD"}, headers=auth(svc, "carol"))
    assert (await place(svc, "carol", instrument="ETH-USD", price="20")).status_code == 201
    for who in ("carol", "bob"):
        await svc.http.post("/orders/cancel-all", json={"all": True}, headers=auth(svc, who))


async def test_net_position_per_client_is_limited(svc):
    # erin sells 5 SOL in the book (her limit), alice buys them (hers), then one more is refused
    r = await place(svc, "erin", instrument="SOL-USD", side="sell", price="10", quantity="5")
    assert r.status_code == 201, r.text
    r = await place(svc, "alice", instrument="SOL-USD", type="market", price=None, quantity="5")
    assert r.status_code == 201 and r.json()["order"]["status"] == "filled", r.text
    before = await event_count()
    r = await place(svc, "alice", instrument="SOL-USD", price="10", quantity="0.01")
    assert error_of(r) == (409, "risk_limit", "max_position"), r.text
    assert await event_count() == before
    # an order that brings the position back toward zero is always allowed
    r = await place(svc, "alice", instrument="SOL-USD", side="sell", price="50", quantity="2")
    assert r.status_code == 201, r.text
    # erin is short 5: selling 1 more is refused, on every entry point
    r = await place(svc, "erin", instrument="SOL-USD", side="sell", price="60", quantity="1")
    assert error_of(r) == (409, "risk_limit", "max_position"), r.text
    for who in ("alice", "erin"):
        await svc.http.post("/orders/cancel-all", json={"all": True}, headers=auth(svc, who))


async def test_an_amend_cannot_walk_around_the_notional_limit(svc):
    oid = (await place(svc, "dave", instrument="SOL-USD", price="100", quantity="2")).json()["order"]["order_id"]
    r = await svc.http.post(f"/orders/{oid}/amend", json={"quantity": "5", "price": "201"}, headers=auth(svc, "dave"))
    assert error_of(r) == (409, "risk_limit", "max_order_notional"), r.text
    r = await svc.http.get(f"/orders/{oid}", headers=auth(svc, "dave"))
    assert (r.json()["order"]["quantity"], r.json()["order"]["price"]) == (2, 100)
    await svc.http.post("/orders/cancel-all", json={"all": True}, headers=auth(svc, "dave"))
