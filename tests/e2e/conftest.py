"""The whole exchange, started as `make run` starts it (command service, relay, two query
replicas, nginx gateway) on the test profile, against the servers `make test` started."""

import asyncio
import os
import time
import uuid

import httpx
import pytest
import redis.asyncio as aioredis

from ops import stack
from tests.support.services import create_key, reset_db

CFG = stack.config("test")
GATEWAY = CFG.gateway_url


class System:
    def __init__(self, topic: str):
        self.topic = topic
        self.procs: dict[str, object] = {}
        self.keys: dict[str, str] = {}
        self.gateway = GATEWAY
        self.command_url = CFG.command_url
        self.query_urls = CFG.query_urls

    def env(self) -> dict:
        # Rate and open-order limits off: the chaos load (tests/chaos, on this system) runs closed loops
        # whose clients leave resting orders they never cancel (only 201/503 may answer there); both
        # limits have their own integration tests (test_entry_limits, test_client_isolation).
        return stack.service_env(CFG, EXCHANGE_KAFKA_TOPIC=self.topic, EXCHANGE_AUTH="enabled",
                                 EXCHANGE_RATE_LIMIT_PER_SECOND="0", EXCHANGE_LOG_ORDER_EVENTS="1",
                                 EXCHANGE_MAX_OPEN_ORDERS="0")

    def start(self, name: str):
        self.procs[name] = stack.spawn(name, self.env(), profile=CFG, new_session=True)

    def kill9(self, name: str):
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait(10)

    def stop(self, name: str):
        proc = self.procs.pop(name, None)
        if proc is not None:
            stack.stop_process(proc)

    def auth(self, who: str) -> dict:
        return {"Authorization": f"Bearer {self.keys[who]}"}


async def wait_healthy(url: str, timeout: float = 60.0, path: str = "/healthz") -> None:
    deadline = time.monotonic() + timeout
    last = None
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            try:
                r = await client.get(url + path, timeout=2)
                if r.status_code == 200:
                    return
                last = r.text
            except httpx.HTTPError as exc:
                last = repr(exc)
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{url}{path} not healthy after {timeout}s: {last}")


@pytest.fixture(scope="session")
async def system():
    await reset_db()
    r = aioredis.from_url(os.environ["EXCHANGE_REDIS_URL"])
    await r.flushall()
    await r.aclose()
    sysm = System(f"exchange.events.e2e-{uuid.uuid4().hex[:8]}")
    for who in ("client-A", "client-B", "client-C"):
        sysm.keys[who] = await create_key(who)
    sysm.keys["admin"] = await create_key("ops", admin=True)
    try:
        for name in ("command", "relay", "query-1", "query-2"):
            sysm.start(name)
        stack.start_gateway(CFG)
        await wait_healthy(sysm.command_url)
        for url in sysm.query_urls:
            await wait_healthy(url)
        await wait_healthy(GATEWAY)
        yield sysm
    finally:
        for name in list(sysm.procs):
            sysm.stop(name)
        stack.stop_gateway(CFG)


async def eventually(check, timeout: float = 10.0, interval: float = 0.05):
    """Poll an async check until it returns a truthy value (read views are eventually consistent)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = await check()
            if last:
                return last
        except AssertionError as exc:
            last = exc
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s; last: {last!r}")
