"""Faults on the write path: kill -9 of the command service under load, and PostgreSQL
going away under load. Nothing acknowledged may be lost; nothing false may be acknowledged."""

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx

from contracts.messages import decode_event
from db.migrate import migrate
from engine import OrderBook
from tests.support.services import DSN, ServiceProcess, free_port, reset_db

PG_BIN = Path("/usr/lib/postgresql/15/bin")
INSTRUMENTS = ("BTC-USD", "ETH-USD", "SOL-USD")
OPEN_ENV = {"EXCHANGE_AUTH": "disabled", "EXCHANGE_RATE_LIMIT_PER_SECOND": "0", "EXCHANGE_NATS_ENABLED": "false"}


def order_body(i: int) -> dict:
    side = "buy" if i % 2 else "sell"
    body = {"client_id": f"c{i % 7}", "instrument": INSTRUMENTS[i % 3], "side": side,
            "quantity": f"{(i % 5) + 1}"}
    if i % 9 == 0:
        body["type"] = "market"
    else:
        body["type"] = "limit"
        body["price"] = 100 + (i * 7) % 11 - (3 if side == "buy" else 0)
    return body


class Load:
    """Closed-loop load from `workers` connections, recording every answer."""

    def __init__(self, url: str, workers: int = 32):
        self.url = url
        self.workers = workers
        self.acked: dict[str, dict] = {}  # order_id -> order as acknowledged
        self.statuses: dict[int | str, int] = {}
        self._stop = asyncio.Event()
        self._i = 0

    async def _worker(self):
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as client:
            while not self._stop.is_set():
                self._i += 1
                try:
                    r = await client.post("/orders", json=order_body(self._i))
                    key = r.status_code
                    if r.status_code == 201:
                        order = r.json()["order"]
                        self.acked[order["order_id"]] = order
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                    await asyncio.sleep(0.05)
                self.statuses[key] = self.statuses.get(key, 0) + 1

    async def run_for(self, seconds: float):
        tasks = [asyncio.create_task(self._worker()) for _ in range(self.workers)]
        await asyncio.sleep(seconds)
        return tasks

    async def stop(self, tasks):
        self._stop.set()
        await asyncio.gather(*tasks)


async def journal_book(dsn: str, instrument: str, upto: int | None = None) -> OrderBook:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT seq, payload FROM events WHERE instrument=$1 AND seq <= $2 ORDER BY seq",
                                instrument, upto if upto is not None else 2**62)
    finally:
        await conn.close()
    book = OrderBook(instrument)
    for i, r in enumerate(rows, 1):
        assert r["seq"] == i, f"{instrument}: journal gap at {i}"
        book.apply(decode_event(r["payload"]))
    return book


async def assert_acked_orders_present(dsn: str, acked: dict[str, dict]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        rows = {r["order_id"]: r for r in await conn.fetch("SELECT order_id, filled_quantity, quantity, status"
                                                              " FROM orders WHERE order_id = ANY($1)", list(acked))}
    finally:
        await conn.close()
    missing = set(acked) - set(rows)
    assert not missing, f"{len(missing)} acknowledged orders lost, e.g. {sorted(missing)[:3]}"


async def test_kill_9_under_load_loses_nothing_and_recovers_the_same_book():
    await reset_db()
    port = free_port()
    svc = ServiceProcess("command_service", port, {**OPEN_ENV, "EXCHANGE_SNAPSHOT_EVERY_EVENTS": "0"}).start()
    try:
        await svc.wait_ready()
        load = Load(svc.url)
        tasks = await load.run_for(1.0)
        async with httpx.AsyncClient(base_url=svc.url) as client:  # recovery will start from this snapshot
            assert (await client.post("/admin/snapshot")).status_code == 201
        await asyncio.sleep(1.0)
        svc.kill9()  # while requests are in flight
        await load.stop(tasks)
        assert len(load.acked) > 100, load.statuses

        svc = ServiceProcess("command_service", port, OPEN_ENV).start()
        await svc.wait_ready()
        await assert_acked_orders_present(DSN, load.acked)
        async with httpx.AsyncClient(base_url=svc.url) as client:
            for oid, order in list(load.acked.items())[:200]:
                r = await client.get(f"/orders/{oid}")
                assert r.status_code == 200
                now = r.json()["order"]
                assert now["filled_quantity"] >= order["filled_quantity"]
                assert (now["client_id"], now["price"], now["quantity"]) == (
                    order["client_id"], order["price"], order["quantity"])
            r = await client.post("/admin/snapshot")
            snaps = r.json()["snapshots"]
        conn = await asyncpg.connect(DSN)
        try:
            for s in snaps:
                data = await conn.fetchval("SELECT data FROM snapshots WHERE instrument=$1 AND seq=$2",
                                           s["instrument"], s["seq"])
                recovered = OrderBook.restore(data)
                recovered.validate()
                rebuilt = await journal_book(DSN, s["instrument"], s["seq"])
                assert recovered.snapshot() == rebuilt.snapshot(), s["instrument"]
        finally:
            await conn.close()
    finally:
        svc.stop()


class PrivatePostgres:
    """A PostgreSQL of this test's own, so it can be stopped without disturbing the others."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="exchange-outage-", dir="/var/tmp"))
        self.port = free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/exchange"
        shutil.chown(self.dir, "postgres")
        os.chmod(self.dir, 0o755)

    def _pg(self, *args):
        return subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, cwd="/")

    def init(self):
        self._pg(str(PG_BIN / "initdb"), "-D", str(self.dir / "data"), "-U", "postgres", "--auth=trust",
                 "-E", "UTF8", "--locale=C.UTF-8")
        self.start()
        subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-c",
                        "CREATE DATABASE exchange"], check=True, capture_output=True)

    def start(self):
        self._pg(str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-w", "-l", str(self.dir / "log"), "-o",
                 f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir}", "start")

    def stop(self, mode="immediate"):
        self._pg(str(PG_BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-w", "-m", mode, "stop")

    def remove(self):
        try:
            self.stop("fast")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


async def test_postgres_outage_gives_503_never_a_false_success_and_service_resumes():
    pg = PrivatePostgres()
    pg.init()
    svc = None
    try:
        await migrate(pg.dsn)
        svc = ServiceProcess("command_service", free_port(), {**OPEN_ENV, "EXCHANGE_PG_DSN": pg.dsn}).start()
        await svc.wait_ready()
        load = Load(svc.url, workers=16)
        tasks = await load.run_for(1.0)
        # On a loaded machine the first commits can take over a second: the outage starts once
        # orders are flowing (bounded), so the test is about the outage, not the warm-up.
        deadline = time.monotonic() + 15
        while len(load.acked) <= 50 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        before_outage = len(load.acked)
        pg.stop()
        await asyncio.sleep(2.0)
        during = dict(load.statuses)
        pg.start()
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient(base_url=svc.url) as client:
            while (await client.get("/healthz")).status_code != 200:
                assert time.monotonic() < deadline, "service did not resume after PostgreSQL came back"
                await asyncio.sleep(0.2)
        acked_at_resume = len(load.acked)
        deadline = time.monotonic() + 15
        while len(load.acked) <= acked_at_resume + 50 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await load.stop(tasks)

        assert before_outage > 50, load.statuses
        assert during.get(503, 0) > 0, during
        assert set(load.statuses) <= {201, 503}, load.statuses  # no 500, no dropped connection
        assert len(load.acked) > acked_at_resume + 50, f"orders not accepted after the database came back: {load.statuses}"
        await assert_acked_orders_present(pg.dsn, load.acked)
        for sym in INSTRUMENTS:
            (await journal_book(pg.dsn, sym)).validate()
    finally:
        if svc:
            svc.stop()
        pg.remove()
