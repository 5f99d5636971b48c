"""RateLimit headers (IETF httpapi fields) on every answer of the limited command routes,
counting down to a 429; the same figures on /ws answers (real service, real PostgreSQL).
In its own module: it runs its own command service, which needs the sequencer locks."""

from __future__ import annotations

import asyncio
import json

import httpx
import websockets

from tests.support.services import ServiceProcess, create_key, free_port, reset_db

# --------------------------------------------------------------------------- rate-limit headers


async def ask(ws, msg):
    await ws.send(json.dumps(msg))
    while True:
        reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
        if reply.get("request_id") == msg.get("request_id"):
            return reply


async def test_rate_limit_headers_count_down_to_429():
    await reset_db()
    key = await create_key("limited2")
    p = ServiceProcess("command_service", free_port(), {"EXCHANGE_AUTH": "enabled",
                                                        "EXCHANGE_RATE_LIMIT_PER_SECOND": "0.5",
                                                        "EXCHANGE_RATE_LIMIT_BURST": "4"},
                       log_name="command-ratelimit").start()
    try:
        await p.wait_ready()
        hdr = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=p.url, timeout=10) as http:
            seen = []
            for path in ("/orders", "/orders/x-1/cancel", "/orders/x-1/amend", "/orders/cancel-after"):
                body = ({"instrument": "BTC-USD", "side": "buy", "type": "limit", "price": 5, "quantity": 1}
                        if path == "/orders" else {"timeout_ms": 0} if path.endswith("after") else {"quantity": 1})
                r = await http.post(path, json=body, headers=hdr)
                assert r.headers["ratelimit-policy"] == '"default";q=4;w=8'
                seen.append(r.headers["ratelimit"])
            assert seen == ['"default";r=3;t=2', '"default";r=2;t=4', '"default";r=1;t=6', '"default";r=0;t=8']
            r = await http.post("/orders", json={}, headers=hdr)
            assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
            assert r.headers["ratelimit"].startswith('"default";r=0;') and int(r.headers["retry-after"]) >= 1
            r = await http.get("/orders/x-1", headers=hdr)
            assert r.status_code == 429
        key3 = await create_key("limited3")
        async with websockets.connect(p.url.replace("http", "ws") + "/ws",
                                      additional_headers={"Authorization": f"Bearer {key3}"}) as ws:
            left = []
            for i in range(5):
                m = await ask(ws, {"type": "cancel", "order_id": f"none-{i}", "request_id": i})
                left.append(m.get("rate_limit", {}).get("remaining"))
            assert left[:4] == [3, 2, 1, 0] and m["error"]["code"] == "rate_limited"
    finally:
        p.stop()
