"""Two command nodes behind the gateway (issue 14): the gateway spreads the command routes over both,
every instrument answers through it, and its /healthz lists the nodes and who owns what. The stack's
own services (ops.stack.spawn: command = command-1, command-2) on the test servers."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import httpx
import pytest

from command_service.nodes import spread
from ops import stack

CFG = dataclasses.replace(stack.config("test"), command_nodes=2)
FAST = {"EXCHANGE_AUTH": "disabled", "EXCHANGE_RATE_LIMIT_PER_SECOND": "0", "EXCHANGE_NODE_HEARTBEAT_S": "0.2",
        "EXCHANGE_NODE_LEASE_S": "1.5"}


@pytest.fixture
async def two_nodes():
    env = stack.service_env(CFG, **FAST)
    env["EXCHANGE_COMMAND_URLS"] = ",".join(f"http://{CFG.host}:{p}" for p in CFG.command_ports)
    procs = {name: stack.spawn(name, env, profile=CFG) for name in ("command", "command-2", "query-1")}
    try:
        for name in procs:
            assert stack.wait_port(CFG.service_port(name), CFG.host, 30), name
        stack.start_gateway(CFG)
        yield procs
    finally:
        stack.stop_gateway(CFG)
        for p in procs.values():
            stack.stop_process(p)


async def test_the_gateway_spreads_orders_over_both_nodes_and_lists_owners(two_nodes):
    symbols = ["BTC-USD", "ETH-USD", "SOL-USD"]
    want = spread({"command-1": symbols, "command-2": symbols})
    assert set(want.values()) == {"command-1", "command-2"}  # bounded loads: both nodes own some
    async with httpx.AsyncClient(base_url=CFG.gateway_url, timeout=10) as http:
        deadline = time.monotonic() + 30
        while True:
            h = await http.get("/healthz")
            body = h.json()
            if h.status_code == 200 and body.get("owners") == want:
                break
            assert time.monotonic() < deadline, body
            await asyncio.sleep(0.2)
        assert set(body["nodes"]) == {"command-1", "command-2"}
        assert all(n["status"] == "healthy" for n in body["nodes"].values())
        # Round robin over both nodes: every instrument answers, whichever node gets the request.
        for _ in range(4):
            for sym in symbols:
                r = await http.post("/orders", json={"client_id": "gw", "instrument": sym, "side": "buy",
                                                     "type": "limit", "price": "1", "quantity": "1"})
                assert r.status_code == 201, r.text
        r = await http.post("/orders/cancel-all", json={"client_id": "gw", "all": True})
        assert r.status_code == 200 and len(r.json()["cancelled"]) >= 12, r.text
        # Both nodes answered order entry (the gateway sends to both; forwarded ones reach the owner).
        counts = {}
        for name in ("command", "command-2"):
            text = (await http.get(f"http://{CFG.host}:{CFG.service_port(name)}/metrics")).text
            counts[name] = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                               if line.startswith("forwarded_commands_total{"))
        assert sum(counts.values()) > 0, counts
