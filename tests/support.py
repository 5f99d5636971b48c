"""Helpers for tests that run the real services as processes against the real servers."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx

from command_service.keys import create as create_key_row

ROOT = Path(__file__).resolve().parent.parent
DSN = os.environ["EXCHANGE_PG_DSN"]


async def reset_db(dsn: str = DSN) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("TRUNCATE events, orders, idempotency, snapshots, api_keys, relay_cursors")
        # tables added by later migrations, when present
        if await conn.fetchval("SELECT to_regclass('settlements')"):
            await conn.execute("TRUNCATE settlements, settlement_runs")
    finally:
        await conn.close()


async def create_key(client_id: str, admin: bool = False, dsn: str = DSN) -> str:
    return await create_key_row(dsn, client_id, admin, "test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServiceProcess:
    """`python -m <module>` with the test env plus overrides; waits for /healthz."""

    def __init__(self, module: str, port: int, env: dict | None = None, port_var: str = "EXCHANGE_COMMAND_PORT",
                 log_name: str | None = None):
        self.module = module
        self.port = port
        self.env = {**os.environ, port_var: str(port), **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"{log_name or module}-{port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ServiceProcess":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", self.module], cwd=ROOT, env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT)
        return self

    async def wait_ready(self, timeout: float = 30.0, path: str = "/healthz") -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.module} exited with {self.proc.returncode}; see {self.log_path}:\n"
                                       + self.log_path.read_text()[-3000:])
                try:
                    r = await client.get(self.url + path, timeout=1)
                    if r.status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        raise TimeoutError(f"{self.module} on {self.port} not ready after {timeout}s; see {self.log_path}")

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill9()
