"""The query side against the real servers: seed a journal through the journal writer, publish
it to the broker like the relay, run a replica in-process, read the views back.

Tests use their own instrument symbols, Redis key prefix, Kafka topic and consumer group, so
they never touch data other suites use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import time
import uuid

import asyncpg
import nats
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from command_service.journal import Batch, JournalWriter
from contracts.auth import hash_api_key
from contracts.messages import Event, encode_event
from contracts.topics import RELAYED_SUBJECT, RelayedRecords, relayed_notice
from ops.stack import free_port
from query_service.app import create_asgi
from query_service.redis_cluster import connect as redis_connect
from query_service.redis_cluster import delete_prefix
from query_service.redis_keys import Keys
from query_service.settings import QuerySettings
from tests.support.services import InProcessServer, nats_login

BTC_LIKE = {"tick_size": "0.01", "lot_size": "0.00000001", "min_quantity": "0.00000001",
            "max_quantity": "1000", "max_price": "10000000"}


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def instruments_file(symbols: list[str]) -> str:
    """A temporary instruments file with BTC-USD-like specs for the given symbols."""
    specs = [{"symbol": s, "base": s.split("-")[0], "quote": "USD", **BTC_LIKE} for s in symbols]
    fd, path = tempfile.mkstemp(prefix="qs-instruments-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(specs, f)
    return path


def settings_for_test(symbols: list[str], **overrides) -> QuerySettings:
    """QuerySettings from the EXCHANGE_* environment with per-test topic/group/prefix and fast
    group joins and watchdog."""
    base = QuerySettings.from_env()
    tag = uuid.uuid4().hex[:8]
    values = dict(
        kafka_topic=f"qs-test-{tag}",
        kafka_group=f"qs-test-{tag}",
        kafka_offset_reset="earliest",
        kafka_session_timeout_ms=1500,
        kafka_heartbeat_interval_ms=200,
        kafka_rebalance_timeout_ms=1500,
        redis_prefix=f"qt{tag}:",
        instruments_file=instruments_file(symbols),
        watchdog_interval_s=0.3,
        port=free_port(),
        ws_heartbeat_s=60.0,
        command_urls=(),  # the system health asks command_url (a test's own command service)
    )
    values.update(overrides)
    return base.replace(**values)


async def create_topic(settings: QuerySettings, partitions: int = 6) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(settings.kafka_topic, partitions, 1)])
    finally:
        await admin.close()


async def delete_topic(settings: QuerySettings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        with contextlib.suppress(Exception):  # clean-up: the topic may not exist
            await admin.delete_topics([settings.kafka_topic])
    finally:
        await admin.close()


class JournalSeeder:
    """Puts events into the journal exactly as the command service does (JournalWriter, one batch
    statement per instrument), plus the API keys the query side authenticates against."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self.pool: asyncpg.Pool | None = None
        self.conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> "JournalSeeder":
        self.pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=1)
        self.conn = await asyncpg.connect(self.dsn)
        self.writer = JournalWriter(self.pool)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.conn.close()
        await self.pool.close()

    async def clear(self, instruments: list[str]) -> None:
        await self.conn.execute("DELETE FROM events WHERE instrument = ANY($1::text[])", instruments)

    async def append(self, events: list[Event]) -> None:
        by_instrument: dict[str, list[Event]] = {}
        for e in events:
            by_instrument.setdefault(e.instrument, []).append(e)
        for instrument, evs in by_instrument.items():
            for i in range(0, len(evs), 5000):
                await self.writer.append(Batch(instrument, events=evs[i:i + 5000]))

    async def add_key(self, key: str, client_id: str, kind: str = "trader") -> None:
        await self.conn.execute(
            "INSERT INTO api_keys(key_hash, client_id, kind, label) VALUES ($1, $2, $3, 'query-test')"
            " ON CONFLICT (key_hash) DO UPDATE SET client_id = $2, kind = $3, revoked_at = NULL",
            hash_api_key(key), client_id, kind,
        )

    async def remove_keys(self, keys: list[str]) -> None:
        await self.conn.execute("DELETE FROM api_keys WHERE key_hash = ANY($1::bytea[])", [hash_api_key(k) for k in keys])


class Publisher:
    """Publishes events like the relay: key = instrument, value = the journal payload, and after the
    broker's acknowledgement the relay's notice of where the partitions now end (`notify=False`: a
    relay whose notices are lost; `carry=True`: the notice carries the records, as the relay's do)."""

    def __init__(self, settings: QuerySettings, notify: bool = True, carry: bool = False):
        self.settings = settings
        self.notify = notify
        self.carry = carry
        self.producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=2)
        self.nc = None

    async def __aenter__(self) -> "Publisher":
        await self.producer.start()
        if self.notify:  # as the relay: its own NATS login
            self.nc = await nats.connect(self.settings.nats_url, **nats_login("relay"))
        return self

    async def __aexit__(self, *exc) -> None:
        await self.producer.stop()
        if self.nc is not None:
            await self.nc.close()

    async def publish(self, events: list[Event]) -> None:
        topic = self.settings.kafka_topic
        futs = [await self.producer.send(topic, key=e.instrument.encode(), value=encode_event(e)) for e in events]
        await self.producer.flush()
        ends: dict[int, int] = {}
        carried: dict[int, list[tuple[int, bytes]]] = {}
        for f, e in zip(futs, events):
            md = await f
            ends[md.partition] = max(ends.get(md.partition, 0), md.offset + 1)
            carried.setdefault(md.partition, []).append((md.offset, encode_event(e)))
        records = []
        if self.carry:
            for p, recs in carried.items():
                recs.sort()
                records.append(RelayedRecords(p, recs[0][0], [v for _, v in recs]))
        if self.nc is not None and ends:
            await self.nc.publish(RELAYED_SUBJECT, relayed_notice(topic, ends, records))
            await self.nc.flush()


class Replica(InProcessServer):
    """One query replica (the real app under uvicorn) inside the test's event loop."""

    def __init__(self, settings: QuerySettings):
        self.settings = settings
        super().__init__(create_asgi(settings), settings.port)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.settings.port}/stream"

    @property
    def services(self):
        return self.app.state.services


async def wipe(redis_url: str, prefix: str) -> int:
    """Delete every key under prefix at once (atomically per instrument, like FLUSHALL does for
    these views: a projector writing meanwhile sees all of an instrument's keys or none).
    redis_url may name a Redis Cluster (redis+cluster://)."""
    r = redis_connect(redis_url)
    try:
        return await delete_prefix(r, prefix)
    finally:
        await r.aclose()


async def dump(redis_url: str, prefix: str) -> dict:
    """Every view key under prefix with its full value, comparable with ==."""
    r = redis_connect(redis_url)
    out = {}
    try:
        keys = sorted([k async for k in r.scan_iter(match=prefix + "*", count=1000)])
        for k in keys:
            t = (await r.type(k)).decode()
            if t == "string":
                v = await r.get(k)
            elif t == "hash":
                v = dict(sorted((await r.hgetall(k)).items()))
            elif t == "zset":
                v = await r.zrange(k, 0, -1, withscores=True)
            elif t == "list":
                v = await r.lrange(k, 0, -1)
            elif t == "set":
                v = sorted(await r.smembers(k))
            else:
                v = t
            out[k.decode()[len(prefix):]] = v
    finally:
        await r.aclose()
    return out


async def wait_for_seq(redis_url: str, prefix: str, want: dict[str, int], timeout: float = 20.0,
                       ready: bool = True) -> None:
    """Until the views of each instrument are at the seq wanted (and marked ready: reads
    answer 503 before, see query_service/redis_keys.py). redis_url may name a Redis Cluster."""
    r = redis_connect(redis_url)
    keys = Keys(prefix)
    try:
        deadline = time.monotonic() + timeout
        while True:
            got = {i: int(await r.get(keys.seq(i)) or 0) for i in want}
            if got == want and (not ready or all([await r.exists(keys.ready(i)) for i in want])):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"views at {got}, want {want}")
            await asyncio.sleep(0.02)
    finally:
        await r.aclose()
