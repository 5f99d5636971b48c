"""The test database, API keys, and the services started as processes against the real servers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import asyncpg
import httpx
import uvicorn

from command_service.api_keys import create as create_key_row
from ops.stack import ServiceProcess, free_port
from ops.stack import config as stack_config

__all__ = ["DSN", "ROOT", "InProcessServer", "ServiceProcess", "command_with_keys", "create_key", "event_count", "free_port",
           "nats_login", "reset_db"]

ROOT = Path(__file__).resolve().parent.parent.parent
# make test exports it; otherwise the test profile's, with its password (issue 20)
DSN = os.environ.get("EXCHANGE_PG_DSN") or stack_config("test").pg_dsn


def nats_login(identity: str) -> dict[str, str]:
    """nats.connect keywords to log in as one of the stack's NATS users, "command" (the command
    nodes), "query" (the projector and /stream) or "relay" (its notices), from the env `make test`
    exports (issue 20)."""
    from contracts.env import env_login, nats_login_kwargs

    var = {"command": "COMMAND", "query": "QUERY", "relay": "RELAY"}[identity]
    return nats_login_kwargs(env_login(f"EXCHANGE_NATS_{var}_USER", f"EXCHANGE_NATS_{var}_PASSWORD", identity))


async def reset_db(dsn: str = DSN) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("TRUNCATE events, orders, idempotency, snapshots, api_keys, relay_cursors")
        # tables added by later migrations, when present
        if await conn.fetchval("SELECT to_regclass('settlements')"):
            await conn.execute("TRUNCATE settlements, settlement_runs")
        # fills are keyed by trade id, which restarts with the journal: stale rows would be served
        # as history below the Redis horizon
        if await conn.fetchval("SELECT to_regclass('fills')"):
            await conn.execute("TRUNCATE fills")
    finally:
        await conn.close()


async def event_count(dsn: str = DSN) -> int:
    """Events in the journal: a refused request must leave it unchanged."""
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT count(*) FROM events")
    finally:
        await conn.close()


async def create_key(client_id: str, admin: bool = False, dsn: str = DSN) -> str:
    return await create_key_row(dsn, client_id, admin, "test")


@contextlib.asynccontextmanager
async def command_with_keys(clients, env: dict[str, str]):
    """A command service process with auth on and a trade key per client (plus "admin"): yields it
    with `.keys` (client -> key) and `.http` (an httpx client on its port); stopped afterwards."""
    keys = {c: await create_key(c) for c in clients}
    keys["admin"] = await create_key("ops", admin=True)
    proc = ServiceProcess("command_service", free_port(), {"EXCHANGE_AUTH": "enabled", **env}).start()
    try:
        await proc.wait_ready()
        proc.keys = keys
        async with httpx.AsyncClient(base_url=proc.url, timeout=10) as client:
            proc.http = client
            yield proc
    finally:
        proc.stop()


class InProcessServer:
    """A real ASGI app under uvicorn inside the test's event loop (lifespan included), so a test
    can reach its state and call its inner app directly."""

    def __init__(self, app, port: int):
        self.app = app
        self.port = port
        self.server: uvicorn.Server | None = None
        self.task: asyncio.Task | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self):
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, lifespan="on", log_level="warning",
                                ws="websockets", access_log=False)
        self.server = uvicorn.Server(config)
        self.server.capture_signals = contextlib.nullcontext  # the test process keeps its own handlers
        self.task = asyncio.create_task(self.server.serve())
        deadline = time.monotonic() + 15
        while not self.server.started:
            if self.task.done():
                self.task.result()
            if time.monotonic() > deadline:
                raise TimeoutError("server did not start")
            await asyncio.sleep(0.02)
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
            try:
                await asyncio.wait_for(self.task, 15)
            except asyncio.TimeoutError:
                self.server.force_exit = True
                await self.task


def auth(svc, who: str) -> dict[str, str]:
    """The Authorization header of `who`'s key on a `command_with_keys` service."""
    return {"Authorization": f"Bearer {svc.keys[who]}"}


async def place(svc, who: str, **body):
    """POST /orders as `who`: a 1-lot BTC-USD limit buy at 100 unless `body` says otherwise."""
    body = {"instrument": "BTC-USD", "side": "buy", "type": "limit", "price": "100", "quantity": "1", **body}
    return await svc.http.post("/orders", json=body, headers=auth(svc, who))


def error_of(r) -> tuple[int, str, str | None]:
    """(status, code, field) of an error answer."""
    e = r.json()["error"]
    return r.status_code, e["code"], e.get("field")
