"""Rolling topic generations (issue 18) against the real PostgreSQL, Tansu, Redis and NATS:
the relay (`python -m relay`) rolls to a new topic every ~1.5 s while a journal is written,
the projector follows generation by generation - restarted in the middle of it - and every
event reaches the views exactly once per seq; old generations are deleted from the broker
once the group is past them (the keep-time fallback is set far out of reach here)."""

from __future__ import annotations

import asyncio
import os
import random
import time

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from ops.stack import ServiceProcess, free_port
from query_service.app import Services
from query_service.projector import Projector
from tests.support.order_flow import OrderFlow
from tests.support.query import (
    JournalSeeder,
    Replica,
    dump,
    settings_for_test,
    unique,
    wait_for_seq,
    wipe,
)


def start_relay(tmp_path, topic: str, **env: str) -> ServiceProcess:
    return ServiceProcess("relay", free_port(), port_var="EXCHANGE_RELAY_METRICS_PORT",
                          log_path=tmp_path / "relay.log", env={
        "EXCHANGE_KAFKA_TOPIC": topic,
        "EXCHANGE_RELAY_LOCK_KEY": str(random.randint(10**9, 2 * 10**9)),
        "EXCHANGE_RELAY_NAME": "gen-test",
        "EXCHANGE_RELAY_SEND_TIMEOUT_MS": "3000",
        "EXCHANGE_RELAY_BACKOFF_MAX_MS": "500",
        **env,
    }).start()


async def topics(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def reference_views(settings, symbols):
    ref = settings.replace(redis_prefix=settings.redis_prefix + "ref:")
    s = Services(ref)
    await s.journal.start()
    p = Projector(ref, s.instruments, s.redis, s.bus, s.journal, s.metrics)
    try:
        for sym in symbols:
            await p.catch_up(sym, "test")
        return await dump(ref.redis_url, ref.redis_prefix)
    finally:
        await wipe(ref.redis_url, ref.redis_prefix)
        await s.journal.stop()


def applied(replica: Replica, symbols) -> int:
    return int(sum(replica.services.metrics.events_applied.labels(s)._value.get() for s in symbols))


async def test_projectors_follow_generations_exactly_once_and_old_ones_are_deleted(tmp_path):
    symbols = [unique("GA") + "-USD", unique("GB") + "-USD"]
    # A long watchdog interval: the views must come from the topics (and the gap rule), not
    # from the once-a-second journal comparison.
    settings = settings_for_test(symbols, watchdog_interval_s=60.0)
    base = settings.kafka_topic
    journals = {s: OrderFlow(instrument=s, seed=7 + n).run(1500) for n, s in enumerate(symbols)}
    total = sum(len(evs) for evs in journals.values())
    pg = await asyncpg.connect(settings.pg_dsn)
    relay = start_relay(tmp_path, base, EXCHANGE_TOPIC_ROLL_S="1.5", EXCHANGE_TOPIC_KEEP_S="600")
    replicas: list[Replica] = []
    try:
        async with JournalSeeder(settings.pg_dsn) as journal:
            await journal.clear(symbols)
            # The base topic is never written with rolling on; the replica must start only
            # once the relay recorded generation 1 (it would otherwise look for the base topic,
            # which the stack creates but this test does not).
            deadline = time.monotonic() + 15
            while await pg.fetchval("SELECT count(*) FROM topic_generations WHERE base = $1", base) == 0:
                assert time.monotonic() < deadline, relay.log()
                await asyncio.sleep(0.05)
            first = await Replica(settings.replace(port=free_port())).start()
            replicas.append(first)
            # ~8 s of writing in 40 slices: several generations go by.
            slices = 40
            for k in range(slices):
                for evs in journals.values():
                    n = len(evs)
                    await journal.append(evs[k * n // slices:(k + 1) * n // slices])
                if k == slices // 2:
                    # Restart the projector in the middle of a roll-over: a new replica of
                    # the same group (the first one just goes away, as after a crash).
                    await first.stop()
                    second = await Replica(settings.replace(port=free_port())).start()
                    replicas.append(second)
                await asyncio.sleep(0.2)
            await wait_for_seq(settings.redis_url, settings.redis_prefix,
                               {s: evs[-1].seq for s, evs in journals.items()}, timeout=60)

            # Every seq applied exactly once across both replicas, and the views equal a
            # replay of the journal.
            assert sum(applied(r, symbols) for r in replicas) == total
            assert await dump(settings.redis_url, settings.redis_prefix) == await reference_views(settings, symbols)

            gens = await pg.fetch("SELECT gen, topic, sealed_at, deleted_at FROM topic_generations"
                                  " WHERE base = $1 ORDER BY gen", base)
            assert len(gens) >= 3, f"the relay rolled only {len(gens)} times: {relay.log()}"
            # The group is past every sealed generation: the relay deletes them (keep time 600 s).
            deadline = time.monotonic() + 30
            while True:
                rows = await pg.fetch("SELECT gen, topic, deleted_at FROM topic_generations"
                                      " WHERE base = $1 ORDER BY gen", base)
                newest = rows[-1]["gen"]
                live = await topics(settings.kafka_bootstrap)
                old = [r for r in rows if r["gen"] < newest - 1]
                if old and all(r["deleted_at"] is not None and r["topic"] not in live for r in old):
                    break
                assert time.monotonic() < deadline, f"old generations not deleted: {rows} {live} {relay.log()}"
                await asyncio.sleep(0.5)
            assert rows[-1]["topic"] in live
            await journal.clear(symbols)
    finally:
        relay.stop()
        for r in replicas:
            await r.stop()
        await wipe(settings.redis_url, settings.redis_prefix)
        rows = await pg.fetch("SELECT topic FROM topic_generations WHERE base = $1", base)
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            live = set(await admin.list_topics())
            await admin.delete_topics([r["topic"] for r in rows if r["topic"] in live])
        finally:
            await admin.close()
        await pg.execute("DELETE FROM topic_generations WHERE base = $1", base)
        await pg.execute("DELETE FROM relay_cursors WHERE instrument = ANY($1::text[])", symbols)
        await pg.close()


def test_relay_roll_settings_are_read_from_env(monkeypatch):
    from relay.settings import RelaySettings

    monkeypatch.setenv("EXCHANGE_TOPIC_ROLL_S", "30")
    monkeypatch.setenv("EXCHANGE_TOPIC_KEEP_S", "120")
    monkeypatch.setenv("EXCHANGE_KAFKA_TOPIC_RETENTION_MS", "604800000")
    s = RelaySettings.from_env()
    assert (s.topic_roll_s, s.topic_keep_s, s.topic_retention_ms) == (30.0, 120.0, 604800000)


async def test_a_generation_whose_group_switched_before_its_end_is_past_once_the_next_group_commits():
    # The projector's groups are per generation (<group>@<topic>). A replica that switches to
    # the next generation before reading the old one to its end (GEN_DRAIN_S; the journal fills
    # the rest) leaves the old group behind its end for good: the old generation must still be
    # collectable (it once stayed for EXCHANGE_TOPIC_KEEP_S, and every later one with it).
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    from contracts.topics import generation_group, generation_topic
    from relay.generations import groups_past
    from relay.topic import ensure_topic

    bootstrap = os.environ["EXCHANGE_KAFKA_BOOTSTRAP"]
    base, group = f"gen-past-{unique('T')}", f"gen-past-{unique('G')}"
    g1, g2 = generation_topic(base, 1), generation_topic(base, 2)
    for t in (g1, g2):
        await ensure_topic(bootstrap, t, 2)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(10):
            await producer.send_and_wait(g1, b"x%d" % i, partition=0)
        await producer.send_and_wait(g2, b"y", partition=0)
    finally:
        await producer.stop()

    async def commit(topic: str, offset: int) -> None:
        tp = TopicPartition(topic, 0)
        c = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=generation_group(group, topic),
                             enable_auto_commit=False)
        await c.start()
        try:
            c.assign([tp])
            await c.commit({tp: offset})
        finally:
            await c.stop()

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await commit(g1, 3)  # read 3 of 10, then switched
        ok, reason = await groups_past(bootstrap, g1, [g2])
        assert not ok and "3/10" in reason, reason  # nobody has read on: generation 1 is kept
        await commit(g2, 1)  # the group of generation 2 reads and commits
        ok, reason = await groups_past(bootstrap, g1, [g2])
        assert ok, reason
    finally:
        await admin.start()
        try:
            await admin.delete_topics([g1, g2])
        finally:
            await admin.close()


if os.environ.get("EXCHANGE_KAFKA_BOOTSTRAP") is None:  # pragma: no cover - run under make test
    pytest.skip("needs the test servers (make test)", allow_module_level=True)
