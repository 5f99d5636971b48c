"""The partitioned journal (issue 18) against the real PostgreSQL, command service, relay and
broker: a database with the old (unpartitioned) schema and a live order book is migrated; the
command service recovers its book across partitions (restart and kill -9), keeps trading into new
partitions created ahead, settlement and the relay read across partitions, and an old partition
is detached only once nothing needs it any more."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import defaultdict

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from contracts.messages import TradeExecuted, decode_event
from db import partitions
from db.migrate import MIGRATIONS, migrate
from relay.topic import ensure_topic
from tests.support.services import DSN, ServiceProcess, free_port

OPEN_ENV = {"EXCHANGE_AUTH": "disabled", "EXCHANGE_RATE_LIMIT_PER_SECOND": "0", "EXCHANGE_NATS_ENABLED": "false",
            "EXCHANGE_HOUSEKEEPING_S": "0.3", "EXCHANGE_SNAPSHOT_EVERY_EVENTS": "0"}
SIZE = 40  # seqs per partition in this test (production: 10,000,000)


def scratch_dsn(name: str) -> str:
    return DSN.rsplit("/", 1)[0] + "/" + name


async def place(http, client, side, price, qty="1") -> dict:
    r = await http.post("/orders", json={"client_id": client, "instrument": "BTC-USD", "side": side,
                                         "type": "limit", "price": str(price), "quantity": qty})
    assert r.status_code == 201, r.text
    return r.json()["order"]


async def start_command(dsn: str) -> ServiceProcess:
    svc = ServiceProcess("command_service", free_port(), {**OPEN_ENV, "EXCHANGE_PG_DSN": dsn}).start()
    await svc.wait_ready()
    return svc


async def read_topic(bootstrap: str, topic: str, want: int, timeout: float = 30.0) -> dict[str, list[int]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    seqs: dict[str, list[int]] = defaultdict(list)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in parts])
        await consumer.seek_to_beginning()
        deadline = asyncio.get_running_loop().time() + timeout
        while sum(len(v) for v in seqs.values()) < want and asyncio.get_running_loop().time() < deadline:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                for r in records:
                    e = decode_event(r.value)
                    seqs[e.instrument].append(e.seq)
    finally:
        await consumer.stop()
    return seqs


async def test_old_database_migrates_and_everything_works_across_partitions(tmp_path):
    name = f"ptest_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(DSN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = scratch_dsn(name)
    svc = relay = None
    topic = f"test.partitions.{uuid.uuid4().hex[:8]}"
    bootstrap = os.environ["EXCHANGE_KAFKA_BOOTSTRAP"]
    try:
        # 1. The old schema, and a book with resting orders and trades in it.
        await migrate(dsn, upto="006_fills.sql")
        # Today's command service also needs its node registry (008) and the orders' client order id
        # column (009), both independent of 007.
        conn = await asyncpg.connect(dsn)
        await conn.execute((MIGRATIONS / "008_command_nodes.sql").read_text())
        await conn.execute((MIGRATIONS / "009_client_order_ids.sql").read_text())
        await conn.close()
        svc = await start_command(dsn)
        async with httpx.AsyncClient(base_url=svc.url, timeout=10) as http:
            resting = [await place(http, "maker", "sell", 2000 + i) for i in range(10)]
            for i in range(5):
                await place(http, "taker", "buy", 2000 + i)  # fills the five lowest asks
        svc.stop()
        conn = await asyncpg.connect(dsn)
        old_rows = await conn.fetchval("SELECT count(*) FROM events")
        old_max = await conn.fetchval("SELECT max(seq) FROM events")
        assert await conn.fetchval("SELECT relkind::text FROM pg_class WHERE oid = 'events'::regclass") == "r"

        # 2. The migration: small partitions for the test (the table is read by 006 when present).
        await conn.execute("CREATE TABLE events_partitioning (one boolean PRIMARY KEY DEFAULT true CHECK (one),"
                           " size bigint NOT NULL CHECK (size > 0), ahead integer NOT NULL CHECK (ahead > 0))")
        await conn.execute("INSERT INTO events_partitioning (size, ahead) VALUES ($1, 2)", SIZE)
        assert "007_events_partitioned.sql" in await migrate(dsn)
        assert await conn.fetchval("SELECT relkind::text FROM pg_class WHERE oid = 'events'::regclass") == "p"
        assert await conn.fetchval("SELECT count(*) FROM events") == old_rows
        parts = await partitions.partitions(conn)
        assert parts[0]["name"] == "events_p0" and parts[0]["upper"] > old_max
        assert len(parts) >= 3  # p0 + two ahead

        # 3. Recovery across partitions, then trading far into new partitions (created ahead by
        #    the housekeeping), with a kill -9 in the middle.
        svc = await start_command(dsn)
        async with httpx.AsyncClient(base_url=svc.url, timeout=10) as http:
            # the book survived the migration + restart: the next ask is 2005
            assert (await place(http, "taker", "buy", 2005))["status"] == "filled"
            for i in range(60):
                await place(http, "maker", "buy", 1000 + i % 7)
                if i % 15 == 0:
                    await asyncio.sleep(0.4)  # let housekeeping keep partitions ahead
        svc.kill9()
        svc = await start_command(dsn)
        async with httpx.AsyncClient(base_url=svc.url, timeout=10) as http:
            order = await place(http, "taker", "buy", 2006)
            assert order["status"] == "filled"  # the ask from before the migration is still there
            left = (await http.get(f"/orders/{resting[9]['order_id']}")).json()["order"]
            assert left["status"] == "open"
            top = await conn.fetchval("SELECT max(seq) FROM events WHERE instrument = 'BTC-USD'")
            used = await conn.fetchval("SELECT count(DISTINCT tableoid) FROM events")
            assert used >= 3, f"events in {used} partitions only (max seq {top})"

            # 4. Settlement across partitions: every trade in the journal is counted once.
            r = await http.post("/admin/settlement", json={})
            assert r.status_code == 201, r.text
            trades = 0
            for (payload,) in await conn.fetch("SELECT payload FROM events WHERE instrument = 'BTC-USD'"):
                trades += isinstance(decode_event(bytes(payload)), TradeExecuted)
            settled = sum(run["trade_count"] for run in r.json()["runs"] if run.get("instrument", "BTC-USD") == "BTC-USD")
            assert settled == trades > 0

        # 5. The relay publishes every seq of every instrument, in order, across partitions.
        await ensure_topic(bootstrap, topic)
        relay = ServiceProcess("relay", free_port(), port_var="EXCHANGE_RELAY_METRICS_PORT",
                               log_path=tmp_path / "relay.log",
                               env={"EXCHANGE_PG_DSN": dsn, "EXCHANGE_KAFKA_TOPIC": topic,
                                    "EXCHANGE_RELAY_LOCK_KEY": "918273", "EXCHANGE_TOPIC_ROLL_S": "0"}).start()
        heads = {r[0]: r[1] for r in await conn.fetch("SELECT instrument, max(seq) FROM events GROUP BY instrument")}
        got = await read_topic(bootstrap, topic, sum(heads.values()))
        for inst, head in heads.items():
            assert got[inst] == list(range(1, head + 1)), relay.log()

        # 6. Detach: refused while recovery still needs p0, allowed once a snapshot is past it.
        reasons = await partitions.blockers(conn, "events_p0")
        assert any("snapshot" in why for why in reasons), reasons
        try:
            await partitions.detach(dsn, "events_p0")
            raise AssertionError("detached a partition recovery still needs")
        except RuntimeError:
            pass
        async with httpx.AsyncClient(base_url=svc.url, timeout=10) as http:
            assert (await http.post("/admin/snapshot")).status_code == 201
        deadline = asyncio.get_running_loop().time() + 20
        while await partitions.blockers(conn, "events_p0"):  # relay cursor catching up
            assert asyncio.get_running_loop().time() < deadline, await partitions.blockers(conn, "events_p0")
            await asyncio.sleep(0.2)
        p0_rows = await conn.fetchval("SELECT count(*) FROM events_p0")
        await partitions.detach(dsn, "events_p0")
        assert "events_p0" not in [p["name"] for p in await partitions.partitions(conn)]
        assert await conn.fetchval("SELECT count(*) FROM events_p0") == p0_rows >= old_rows  # kept for archiving
        assert await conn.fetchval("SELECT count(*) FROM events WHERE seq <= $1", old_max) == 0
        svc.stop()
        svc = await start_command(dsn)  # recovery from the snapshot, without p0
        async with httpx.AsyncClient(base_url=svc.url, timeout=10) as http:
            assert (await place(http, "taker", "buy", 2007))["status"] == "filled"
        await conn.close()
    finally:
        if svc is not None:
            svc.stop()
        if relay is not None:
            relay.stop()
        a = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await a.start()
        try:
            if topic in await a.list_topics():
                await a.delete_topics([topic])
        finally:
            await a.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
