"""Rate limits on every entry point (issue 20): orders forwarded from /stream over NATS charge the
key's one bucket like HTTP and /ws; failed authentications are limited per client address before
any lookup. A real `python -m command_service` with NATS, against the real PostgreSQL."""

import asyncio
import json
import os

import nats
import pytest
import websockets

from contracts.topics import ORDER_REQUEST_SUBJECT
from tests.support.services import auth, command_with_keys, error_of, nats_login, reset_db

# ------------------------------------------------------------------ rate limits on every entry point


@pytest.fixture(scope="module")
async def limited():
    await reset_db()
    async with command_with_keys(("rl-a", "rl-b"), {
        "EXCHANGE_RATE_LIMIT_PER_SECOND": "0.5",
        "EXCHANGE_RATE_LIMIT_BURST": "4",
        "EXCHANGE_UNAUTH_RATE_LIMIT_PER_SECOND": "0.5",
        "EXCHANGE_UNAUTH_RATE_LIMIT_BURST": "3",
    }) as proc:
        yield proc


async def test_orders_forwarded_over_nats_charge_the_keys_bucket(limited):
    order = {"instrument": "SOL-USD", "side": "buy", "type": "limit", "price": "1", "quantity": "1"}
    for _ in range(4):  # the burst, over HTTP
        r = await limited.http.post("/orders", json=order, headers=auth(limited, "rl-a"))
        assert r.status_code == 201, r.text
    # /stream's order forwarder logs in as the query user (issue 20)
    nc = await nats.connect(os.environ["EXCHANGE_NATS_URL"], **nats_login("query"))
    try:
        for _ in range(50):  # the bridge subscribes once the service is up: wait for a responder
            try:
                raw = await nc.request(ORDER_REQUEST_SUBJECT, json.dumps(
                    {"api_key": limited.keys["rl-a"], "body": order}).encode(), timeout=2)
                break
            except nats.errors.NoRespondersError:
                await asyncio.sleep(0.1)
        reply = json.loads(raw.data)
        assert reply["status"] == 429 and reply["body"]["error"]["code"] == "rate_limited", reply
        # another key's bucket is its own
        raw = await nc.request(ORDER_REQUEST_SUBJECT, json.dumps(
            {"api_key": limited.keys["rl-b"], "body": order}).encode(), timeout=2)
        assert json.loads(raw.data)["status"] == 201
    finally:
        await nc.close()
    r = await limited.http.post("/orders", json=order, headers=auth(limited, "rl-a"))
    assert error_of(r)[:2] == (429, "rate_limited")


async def test_failed_authentications_are_limited_per_address(limited):
    good = auth(limited, "rl-b")
    assert (await limited.http.get("/orders/nope", headers=good)).status_code == 404  # key now cached
    for i in range(3):
        r = await limited.http.get("/orders/nope", headers={"Authorization": f"Bearer exk_unknown{i}"})
        assert error_of(r)[:2] == (401, "unauthorized"), r.text
    for path in ("/orders/nope", "/orders"):
        r = await limited.http.request("GET" if path != "/orders" else "POST", path,
                                       headers={"Authorization": "Bearer exk_unknown9"})
        assert error_of(r)[:2] == (429, "rate_limited"), r.text
        assert int(r.headers["retry-after"]) >= 1
    async with websockets.connect(limited.url.replace("http", "ws") + "/ws",
                                  additional_headers={"Authorization": "Bearer exk_unknown10"}) as ws:
        m = json.loads(await ws.recv())
        assert m["error"]["code"] == "rate_limited"
    # a known key from the same address still works; another address (behind the gateway) is its own
    assert (await limited.http.get("/orders/nope", headers=good)).status_code == 404
    r = await limited.http.get("/orders/nope", headers={"Authorization": "Bearer exk_unknown11",
                                                         "X-Real-IP": "192.0.2.7"})
    assert error_of(r)[:2] == (401, "unauthorized"), r.text
