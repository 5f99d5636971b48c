"""A whole exchange of the fuzz's own on the shared test servers: command service, relay and
one query replica, isolated from every other test.

Why not the e2e `system` fixture: it is session scoped and lives until the end of the run, and
its command service holds the per-instrument sequencer advisory locks of database `exchange`,
so a second command service on that database could never write. Here everything that could
clash is private:
- database: a new one in the test PostgreSQL (advisory locks are per database), migrated,
  dropped at the end;
- NATS: a nats-server of its own on a free port (feed subjects and the order request
  subject have no prefix, so another system's replicas would see our feed and take our
  orders);
- Kafka: its own topic (created with the right partition count before anything names it)
  and consumer group on the shared broker;
- Redis: its own key prefix (removed at the end);
- ports: free ones; logs under the test profile's log folder (fuzz-*.log).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import redis.asyncio as aioredis

from db.migrate import migrate
from ops import stack
from ops.stack.servers import _private_file
from tests.support.services import create_key, free_port

CFG = stack.config("test")
SERVICE_MODULES = {"command": "command_service", "relay": "relay", "query": "query_service"}


class PrivateExchange:
    def __init__(self, name: str = "fuzz", auth: str = "enabled"):
        self.tag = f"{name}_{uuid.uuid4().hex[:8]}"
        base = os.environ["EXCHANGE_PG_DSN"].rsplit("/", 1)[0]
        self.admin_dsn = f"{base}/postgres"
        self.database = f"exchange_{self.tag}"
        self.dsn = f"{base}/{self.database}"
        self.topic = f"exchange.events.{self.tag}"
        self.redis_prefix = f"{self.tag}:"
        self.auth = auth
        self.nats_port = free_port()
        self.command_port = free_port()
        self.query_port = free_port()
        self.relay_port = free_port()
        self.procs: dict[str, subprocess.Popen] = {}
        self.nats: subprocess.Popen | None = None
        self.keys: dict[str, str] = {}
        self.logs = CFG.logs
        self.log_name = name

    # ------------------------------------------------------------------ addresses

    @property
    def command_url(self) -> str:
        return f"http://127.0.0.1:{self.command_port}"

    @property
    def query_url(self) -> str:
        return f"http://127.0.0.1:{self.query_port}"

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    @property
    def nats_conf(self) -> Path:
        return CFG.state_dir / "nats" / f"private-{self.tag}.conf"

    def log_path(self, name: str) -> Path:
        return self.logs / f"{self.log_name}-{name}.log"

    def env(self) -> dict[str, str]:
        return stack.service_env(
            CFG,
            EXCHANGE_PG_DSN=self.dsn,
            EXCHANGE_NATS_URL=self.nats_url,
            EXCHANGE_KAFKA_TOPIC=self.topic,
            EXCHANGE_AUTH=self.auth,
            EXCHANGE_RATE_LIMIT_PER_SECOND="0",
            EXCHANGE_COMMAND_PORT=str(self.command_port),
            EXCHANGE_COMMAND_URL=self.command_url,
            EXCHANGE_QUERY_PORT=str(self.query_port),
            EXCHANGE_QUERY_URL=self.query_url,
            EXCHANGE_RELAY_METRICS_PORT=str(self.relay_port),
            EXCHANGE_QUERY_GROUP=f"query-{self.tag}",
            EXCHANGE_QUERY_REDIS_PREFIX=self.redis_prefix,
        )

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> "PrivateExchange":
        self.logs.mkdir(parents=True, exist_ok=True)
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            await conn.close()
        await migrate(self.dsn)
        # Before any client can name it: a consumer's metadata request would auto-create it on
        # Tansu with the broker's default partition count.
        await stack.ensure_topic(CFG.kafka_bootstrap, self.topic)
        # The stack's NATS users and permissions (issue 20): the fuzzed services log in as they do live.
        conf = _private_file(self.nats_conf, stack.nats_conf(CFG))
        self.nats = stack._popen([stack._which("nats-server"), "-c", str(conf), "-a", "127.0.0.1",
                                  "-p", str(self.nats_port)], self.log_path("nats"))
        if not await asyncio.to_thread(stack.wait_port, self.nats_port):
            raise RuntimeError(f"private nats-server did not listen; see {self.log_path('nats')}")
        self.keys["trader"] = await create_key("fuzz-trader", dsn=self.dsn)
        self.keys["other"] = await create_key("fuzz-other", dsn=self.dsn)
        self.keys["admin"] = await create_key("fuzz-ops", admin=True, dsn=self.dsn)
        for name in ("command", "relay", "query"):
            self.start_service(name)
        await self.wait_healthy()
        return self

    def start_service(self, name: str) -> None:
        # spawn() with a module name (not command/relay/query-N): no pid file of the profile is
        # written, so the test profile's own services are never confused with these.
        self.procs[name] = stack.spawn(SERVICE_MODULES[name], self.env(), profile=CFG,
                                       log_path=self.log_path(name), new_session=True)

    async def wait_healthy(self, timeout: float = 60.0) -> None:
        await wait_http(self.command_url + "/healthz", timeout, self.procs.get("command"), self.log_path("command"))
        await wait_http(f"http://127.0.0.1:{self.relay_port}/healthz", timeout, self.procs.get("relay"),
                        self.log_path("relay"))
        await wait_http(self.query_url + "/healthz", timeout, self.procs.get("query"), self.log_path("query"))

    def alive(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    async def stop(self) -> None:
        for name in ("query", "relay", "command"):
            proc = self.procs.pop(name, None)
            if proc is not None:
                await asyncio.to_thread(stack.stop_process, proc)
        if self.nats is not None:
            await asyncio.to_thread(stack.stop_process, self.nats)
            self.nats = None
        self.nats_conf.unlink(missing_ok=True)
        try:
            conn = await asyncpg.connect(self.admin_dsn)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            finally:
                await conn.close()
        except Exception as exc:  # noqa: BLE001 - cleanup must not hide the test's own result
            print(f"[fuzz] could not drop {self.database}: {exc!r}")
        try:
            r = aioredis.from_url(CFG.redis_url)
            try:
                keys = [k async for k in r.scan_iter(match=self.redis_prefix + "*", count=1000)]
                for i in range(0, len(keys), 1000):
                    await r.delete(*keys[i:i + 1000])
            finally:
                await r.aclose()
        except Exception as exc:  # noqa: BLE001
            print(f"[fuzz] could not remove redis keys {self.redis_prefix}*: {exc!r}")
        try:
            from aiokafka.admin import AIOKafkaAdminClient

            admin = AIOKafkaAdminClient(bootstrap_servers=CFG.kafka_bootstrap, request_timeout_ms=5000)
            await asyncio.wait_for(admin.start(), 10)
            try:
                await asyncio.wait_for(admin.delete_topics([self.topic]), 10)
            finally:
                await admin.close()
        except Exception as exc:  # noqa: BLE001
            print(f"[fuzz] could not delete topic {self.topic}: {exc!r}")

    def log_tail(self, name: str, chars: int = 4000) -> str:
        try:
            return self.log_path(name).read_text(errors="replace")[-chars:]
        except OSError:
            return ""


async def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = None
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
                raise RuntimeError(f"{url}: process exited with {proc.returncode}; {log}:\n{tail}")
            try:
                r = await client.get(url, timeout=2)
                if r.status_code == 200:
                    return
                last = f"{r.status_code} {r.text[:300]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{url} not healthy after {timeout}s: {last}")
