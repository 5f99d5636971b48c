"""Several command nodes for tests (issue 14): real command-service processes with their own node ids
and instruments (fresh symbols that the spread gives every node some of), fast heartbeats."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid

import asyncpg
import httpx

from command_service.nodes import spread
from tests.support.query import instruments_file
from tests.support.services import DSN, ServiceProcess, free_port

LEASE_S = 1.5
FORWARD_TIMEOUT_S = 1.0
NODE_ENV = {"EXCHANGE_AUTH": "disabled", "EXCHANGE_RATE_LIMIT_PER_SECOND": "0", "EXCHANGE_NATS_ENABLED": "true",
            "EXCHANGE_NODE_HEARTBEAT_S": "0.2", "EXCHANGE_NODE_LEASE_S": str(LEASE_S),
            "EXCHANGE_FORWARD_TIMEOUT_S": str(FORWARD_TIMEOUT_S)}


def spread_symbols(nodes: list[str], n: int = 4) -> list[str]:
    """Fresh symbols that the spread (command_service.nodes.spread) gives to every one of `nodes` (so the test sees a
    spread whatever the random names)."""
    while True:
        syms = [f"N{uuid.uuid4().hex[:5].upper()}-USD" for _ in range(n)]
        if set(spread({n: syms for n in nodes}).values()) == set(nodes):
            return syms


class Nodes:
    def __init__(self, count: int = 2, env: dict[str, str] | None = None):
        self.env = {**NODE_ENV, **(env or {})}
        tag = uuid.uuid4().hex[:6]
        self.ids = [f"t{tag}-{k + 1}" for k in range(count)]
        self.symbols = spread_symbols(self.ids)
        self.file = instruments_file(self.symbols)
        self.procs = {nid: self._proc(nid) for nid in self.ids}

    def _proc(self, nid: str) -> ServiceProcess:
        return ServiceProcess("command_service", free_port(), {**self.env, "EXCHANGE_NODE_ID": nid,
                                                               "EXCHANGE_INSTRUMENTS_FILE": self.file},
                              log_name=f"command-{nid}")

    async def start(self) -> None:
        """Start every node together (they race for their shares, as in a deployment), then wait until
        each answers its health check."""
        for p in self.procs.values():
            p.start()
        for p in self.procs.values():
            await p.wait_ready()

    async def health(self, nid: str) -> dict:
        async with httpx.AsyncClient(timeout=3) as http:
            return (await http.get(self.procs[nid].url + "/healthz")).json()

    async def owners(self, nid: str) -> dict:
        return (await self.health(nid))["owners"]

    async def wait_owners(self, want, via: str, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        got = None
        while time.monotonic() < deadline:
            try:
                got = await self.owners(via)
                if want(got):
                    return got
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
        raise AssertionError(f"owners as seen by {via}: {got}")

    def stop(self) -> None:
        for p in self.procs.values():
            if p.proc is not None and p.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.proc.pid, signal.SIGCONT)
            p.stop()


async def place(url: str, sym: str, price: str = "100", timeout: float = 10) -> httpx.Response:
    async with httpx.AsyncClient(timeout=timeout) as http:
        return await http.post(url + "/orders", json={"client_id": "nodes", "instrument": sym, "side": "buy",
                                                      "type": "limit", "price": price, "quantity": "1"})


async def max_seq(sym: str) -> int:
    conn = await asyncpg.connect(DSN)
    try:
        return await conn.fetchval("SELECT coalesce(max(seq), 0) FROM events WHERE instrument = $1", sym)
    finally:
        await conn.close()
