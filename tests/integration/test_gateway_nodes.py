"""Two command nodes behind the gateway (issue 14): the gateway spreads the command routes over both,
every instrument answers through it, and its /healthz lists the nodes and who owns what. The stack's
own services (ops.stack.spawn: command = command-1, command-2) on the test servers."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time

import httpx
import pytest

from command_service.nodes import spread
from ops import stack
from tests.support.services import create_key

CFG = dataclasses.replace(stack.config("test"), command_nodes=2)
FAST = {"EXCHANGE_AUTH": "disabled", "EXCHANGE_RATE_LIMIT_PER_SECOND": "0", "EXCHANGE_NODE_HEARTBEAT_S": "0.2",
        "EXCHANGE_NODE_LEASE_S": "1.5"}


@contextlib.asynccontextmanager
async def nodes_behind_gateway(**overrides: str):
    env = stack.service_env(CFG, **{**FAST, **overrides})
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


@pytest.fixture
async def two_nodes():
    async with nodes_behind_gateway() as procs:
        yield procs


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


async def test_one_key_charges_one_bucket_however_many_nodes_run():
    """The gateway routes by API key, so a key's orders meet one node's token bucket: with round robin
    each of the two nodes gave the key its own burst (about 40 accepted of 60, not 20)."""
    async with nodes_behind_gateway(EXCHANGE_AUTH="enabled", EXCHANGE_RATE_LIMIT_PER_SECOND="1",
                                    EXCHANGE_RATE_LIMIT_BURST="20"):
        key = await create_key("gw-limited")
        headers = {"Authorization": f"Bearer {key}"}
        body = {"instrument": "BTC-USD", "side": "buy", "type": "limit", "price": "1", "quantity": "1"}
        async with httpx.AsyncClient(base_url=CFG.gateway_url, timeout=10, headers=headers) as http:
            started = time.monotonic()
            answers = await asyncio.gather(*(http.post("/orders", json=body) for _ in range(60)))
            elapsed = time.monotonic() - started
        codes = [r.status_code for r in answers]
        assert set(codes) <= {201, 429}, [r.text for r in answers if r.status_code not in (201, 429)][:3]
        # one bucket: the burst plus what refilled at 1/s while the requests ran
        assert codes.count(201) <= 20 + int(elapsed) + 1, (codes.count(201), elapsed)
        assert codes.count(429) >= 60 - 20 - int(elapsed) - 1
