"""The leader's work: read rounds of committed rows after each instrument's cursor, send one
record batch per instrument, advance the cursors only after every acknowledgement.
(The ordering argument is in the package docstring, relay/__init__.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from contracts.topics import JOURNAL_NOTIFY_CHANNEL, RelayedRecords, generation_topic
from relay.generations import collect_old, current_generation, record_generation
from relay.lag import relay_lag
from relay.leader import open_lock_session, wait_for_leadership
from relay.metrics import RelayMetrics
from relay.notices import Notices
from relay.settings import RelaySettings
from relay.topic import ensure_topic

log = logging.getLogger("exchange.relay")

# --------------------------------------------------------------------------- SQL

# Loose index scan over the primary key: one index probe per instrument, not a table scan.
DISCOVER_SQL = """
WITH RECURSIVE i(instrument) AS (
    SELECT min(instrument) FROM events
    UNION ALL
    SELECT (SELECT min(e.instrument) FROM events e WHERE e.instrument > i.instrument)
    FROM i WHERE i.instrument IS NOT NULL
)
SELECT instrument FROM i WHERE instrument IS NOT NULL
UNION
SELECT instrument FROM relay_cursors
"""

# One round trip for all instruments; each LATERAL is a PK range scan. The seq range is
# bounded above as well (seq is gap-free, so (cursor, cursor+N] holds the next N events):
# with only "seq > cursor", stale statistics (a big backlog after an outage, a fresh bulk
# load) made the planner read the WHOLE backlog and sort it on disk in every round, which
# turns catching up quadratic. Bounded, every plan reads at most N rows.
FETCH_SQL = """
SELECT c.instrument, e.seq, e.payload
FROM unnest($1::text[], $2::bigint[]) AS c(instrument, cursor)
CROSS JOIN LATERAL (
    SELECT seq, payload FROM events
    WHERE events.instrument = c.instrument
      AND events.seq > c.cursor AND events.seq <= c.cursor + $3
    ORDER BY seq
) e
"""

# GREATEST: a cursor never moves back, even if a deposed leader that has not noticed yet
# writes an older position (what it writes was acknowledged anyway).
UPSERT_CURSORS_SQL = """
INSERT INTO relay_cursors (instrument, seq, updated_at)
SELECT instrument, seq, now() FROM unnest($1::text[], $2::bigint[]) AS c(instrument, seq)
ON CONFLICT (instrument) DO UPDATE
SET seq = GREATEST(relay_cursors.seq, EXCLUDED.seq), updated_at = now()
"""

# While every round finds rows the relay does not LISTEN: it reads again after each linger anyway,
# and a notification per commit (~500/s at 1,500 orders/s) woke a PostgreSQL backend and the relay
# for nothing. It stops listening after this many rounds in a row found rows, and listens again
# (then reads once more: a commit in between sent no notification) when a round finds none.
UNLISTEN_AFTER_ROUNDS = 3

# A sealed generation is deleted at most this long after every group is past it (it holds the
# broker's memory meanwhile; generations roll every 30 s in `make run`).
GEN_COLLECT_S = 5.0

# --------------------------------------------------------------------------- relay


class LeadershipLost(Exception):
    pass


class KafkaRoundError(Exception):
    pass


@dataclass
class Pending:
    """One instrument's record batch in a round: rows cursor+1 .. last."""

    name: str
    key: bytes
    last: int
    batch: object  # aiokafka BatchBuilder
    values: list  # the records' values (their count is the batch's), for the round's notice
    partition: int = -1


@dataclass
class Round:
    batches: list = field(default_factory=list)  # list[Pending], at most one per instrument
    backlog: bool = False  # some instrument had more rows than fitted


async def _settle(task: asyncio.Task | None) -> None:
    if task is not None:
        with contextlib.suppress(BaseException):
            await task


def _utc_iso() -> str:
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


class Relay:
    def __init__(self, settings: RelaySettings) -> None:
        self.s = settings
        self.metrics = RelayMetrics()
        self.role = "starting"
        self.kafka_ok = False
        self.pool: asyncpg.Pool | None = None  # health checks and lag only
        self._wake = asyncio.Event()
        self._lock_conn_lost = asyncio.Event()
        self._notified: set[str] = set()
        self._instruments: set[str] = set()
        self._cursors: dict[str, int] = {}
        self._partition_of: dict[tuple[str, int], int] = {}
        self._gap_logged: dict[str, float] = {}
        self._last_topic_check = 0.0
        self._last_offset: dict[int, int] = {}  # partition -> last offset we got acked
        self._row_bytes = 400.0  # estimated bytes per record in a batch (adapts)
        self._backoff = settings.backoff_min_ms / 1000
        self.last_lag: dict = {}
        self.topic = settings.topic  # the generation being written (relay/generations.py)
        self.gen = 0  # 0 = not rolling: the fixed topic
        self._gen_age_at = (0.0, 0.0)  # (monotonic time, age of the generation then)
        self._gc_task: asyncio.Task | None = None
        self._last_collect = 0.0
        self.notices = Notices(settings.nats_url, settings.nats_login, settings.name)

    # ----------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        """Forever: campaign for the lock, lead until it is lost, campaign again."""
        self.pool = await self._retry_pg(
            lambda: asyncpg.create_pool(self.s.pg_dsn, min_size=1, max_size=2)
        )
        lag_task = asyncio.create_task(self._lag_loop(), name="relay-lag")
        self.notices.start()
        try:
            while True:
                try:
                    await self._campaign()
                except asyncio.CancelledError:
                    raise
                except LeadershipLost as exc:
                    log.warning("relay %s lost leadership: %s", self.s.name, exc)
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    self.metrics.errors.labels("postgres").inc()
                    log.warning("relay %s postgres error: %r", self.s.name, exc)
                except Exception:  # keep the relay alive; count and retry
                    self.metrics.errors.labels("internal").inc()
                    log.exception("relay %s unexpected error", self.s.name)
                self.role = "standby"
                self.metrics.is_leader.set(0)
                await self._sleep_backoff()
        finally:
            lag_task.cancel()
            with contextlib.suppress(BaseException):
                await lag_task
            await self.notices.stop()
            await self.pool.close()

    async def _retry_pg(self, connect):
        while True:
            try:
                return await connect()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                self.metrics.errors.labels("postgres").inc()
                log.warning("relay %s cannot reach postgres: %r", self.s.name, exc)
                await self._sleep_backoff()

    async def _sleep_backoff(self) -> None:
        await asyncio.sleep(self._backoff)
        self._backoff = min(self._backoff * 2, self.s.backoff_max_ms / 1000)

    def _reset_backoff(self) -> None:
        self._backoff = self.s.backoff_min_ms / 1000

    async def _campaign(self) -> None:
        lock_conn = await open_lock_session(self.s.pg_dsn, self.s.name)
        data_conn = None
        self._lock_conn_lost.clear()
        lock_conn.add_termination_listener(lambda _c: self._on_lock_conn_lost())
        try:
            self.role = "standby"
            log.info("relay %s standby: waiting for lock %d", self.s.name, self.s.lock_key)
            await wait_for_leadership(lock_conn, self.s.lock_key)
            self.role = "leader"
            self.metrics.is_leader.set(1)
            log.info("relay %s is leader", self.s.name)
            # LISTEN before reading cursors: a commit between the two still wakes us.
            await lock_conn.add_listener(JOURNAL_NOTIFY_CHANNEL, self._on_notify)
            # Generic plans for the round's two statements (FETCH_SQL, UPSERT_CURSORS_SQL): their
            # plans do not depend on the values (every seq range is bounded), and re-planning them
            # in every round was PostgreSQL CPU per round for nothing (issue 19, docs/BENCHMARKS.md).
            # jit off: the generic fetch plan's cost estimate grows with the journal, and once past
            # jit_above_cost every round was JIT-compiled (~11 ms of CPU each; PostgreSQL 118 -> 356 us
            # per order from minute 7 of the sustained run).
            data_conn = await asyncpg.connect(
                self.s.pg_dsn, server_settings={"plan_cache_mode": "force_generic_plan", "jit": "off"})
            await self._lead(lock_conn, data_conn)
        finally:
            self.metrics.is_leader.set(0)
            for conn in (data_conn, lock_conn):
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 2)
                    if not conn.is_closed():
                        conn.terminate()

    def _on_lock_conn_lost(self) -> None:
        self._lock_conn_lost.set()
        self._wake.set()

    def _on_notify(self, _conn, _pid, _channel, payload: str) -> None:
        if payload:
            for name in payload.split(","):
                name = name.strip()
                if name:
                    self._notified.add(name)
        self._wake.set()

    # ----------------------------------------------------------------- leading

    async def _lead(self, lock_conn, data_conn) -> None:
        self._cursors = {
            r["instrument"]: r["seq"]
            for r in await data_conn.fetch("SELECT instrument, seq FROM relay_cursors")
        }
        self._instruments = {r["instrument"] for r in await data_conn.fetch(DISCOVER_SQL)}
        await self._load_generation(data_conn)
        producer: AIOKafkaProducer | None = None
        prepared: Round | None = None
        last_housekeeping = time.monotonic()
        listening = True  # _campaign LISTENs before calling us
        self.metrics.listening.set(1)
        busy_rounds = 0  # rounds in a row that found rows
        try:
            backlog = True  # read at once after taking over
            while True:
                if self._lock_conn_lost.is_set() or lock_conn.is_closed():
                    raise LeadershipLost("lock connection closed")
                if producer is None:
                    prepared = None  # its batches belong to the dropped producer
                    producer = await self._start_producer()
                    if producer is None:
                        await self._sleep_backoff()
                        continue
                now = time.monotonic()
                if now - self._last_topic_check >= self.s.topic_check_ms / 1000:
                    # Busy or idle: under steady load the relay is never idle, and a broker
                    # that restarted empty still acknowledges sends to the vanished topic.
                    if not await self._check_topic(producer):
                        await self._drop_producer(producer)
                        producer = None
                        backlog = True
                        await self._sleep_backoff()
                        continue
                if prepared is None and self._roll_due(now):
                    # Between rounds: every batch sent so far is acknowledged and its
                    # cursor written, so generation N holds everything before N+1.
                    await self._roll(data_conn)
                    await self._drop_producer(producer)
                    producer = None
                    backlog = True
                    continue
                if now - last_housekeeping >= self.s.poll_ms / 1000:
                    last_housekeeping = now
                    self._collect_generations()
                    try:  # is our session (and lock) alive?
                        await lock_conn.fetchval("SELECT 1")
                    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError) as exc:
                        # A terminated session can surface as InternalClientError ("another operation
                        # is in progress") when the kill lands mid-protocol: any failure here means the
                        # lock may be gone, so step down and campaign again (seen once in a test run).
                        raise LeadershipLost(f"lock session check failed: {exc!r}") from exc
                    await self._discover(data_conn)  # instruments that were never notified
                if prepared is None:
                    if not backlog:
                        if not listening:
                            if self.s.linger_ms > 0:
                                await asyncio.sleep(self.s.linger_ms / 1000)
                        # Poll fallback on timeout: read anyway, a notification may have
                        # been missed (or a writer does not notify).
                        elif await self._wait_for_work() and self.s.linger_ms > 0:
                            await asyncio.sleep(self.s.linger_ms / 1000)
                    prepared = await self._prepare(producer, data_conn, self._cursors)
                    if prepared is None:
                        busy_rounds = 0
                        backlog = False
                        if not listening:
                            await lock_conn.add_listener(JOURNAL_NOTIFY_CHANNEL, self._on_notify)
                            listening = True
                            self.metrics.listening.set(1)
                            backlog = True  # read once more before waiting for a notification
                        continue
                    busy_rounds += 1
                    if listening and busy_rounds >= UNLISTEN_AFTER_ROUNDS:
                        await lock_conn.remove_listener(JOURNAL_NOTIFY_CHANNEL, self._on_notify)
                        listening = False
                        self.metrics.listening.set(0)
                if self._lock_conn_lost.is_set():  # may have woken us: do not send as ex-leader
                    raise LeadershipLost("lock connection closed")
                try:
                    prepared = await self._publish(producer, data_conn, prepared)
                except KafkaRoundError as exc:
                    self.kafka_ok = False
                    self.metrics.kafka_up.set(0)
                    self.metrics.errors.labels("kafka").inc()
                    log.warning("relay %s kafka send failed, restarting from cursor: %s", self.s.name, exc)
                    await self._drop_producer(producer)
                    producer = None
                    prepared = None
                    backlog = True
                    await self._sleep_backoff()
                    continue
                backlog = prepared is not None
        finally:
            if producer is not None:
                await self._drop_producer(producer)
            if self._gc_task is not None:
                self._gc_task.cancel()
                await _settle(self._gc_task)
                self._gc_task = None

    # ----------------------------------------------------------------- generations

    async def _load_generation(self, data_conn) -> None:
        """The generation to write: the newest recorded one (another leader may have rolled),
        or generation 1 when rolling is on and there is none yet."""
        if self.s.topic_roll_s <= 0:
            self.topic, self.gen = self.s.topic, 0
            return
        current = await current_generation(data_conn, self.s.topic)
        if current is None:
            await ensure_topic(self.s.kafka_bootstrap, generation_topic(self.s.topic, 1),
                               self.s.topic_partitions, timeout_s=self.s.send_timeout_ms / 1000)
            await record_generation(data_conn, self.s.topic, 1)
            current = await current_generation(data_conn, self.s.topic)
        self.gen, self.topic, age = current
        self._gen_age_at = (time.monotonic(), age)
        self.metrics.topic_generation.set(self.gen)

    def _roll_due(self, now: float) -> bool:
        if self.s.topic_roll_s <= 0:
            return False
        at, age = self._gen_age_at
        return age + (now - at) >= self.s.topic_roll_s

    async def _roll(self, data_conn) -> None:
        """Move to the next generation: create its topic first, then record it (consumers
        look the topic up by that row), sealing the previous one in the same transaction."""
        gen = self.gen + 1
        topic = generation_topic(self.s.topic, gen)
        await ensure_topic(self.s.kafka_bootstrap, topic, self.s.topic_partitions,
                           timeout_s=self.s.send_timeout_ms / 1000)
        await record_generation(data_conn, self.s.topic, gen)
        await self._load_generation(data_conn)
        self._last_offset.clear()  # offsets are per topic
        self.metrics.topic_rolls.inc()
        log.info("relay %s rolled to topic generation %s", self.s.name, self.topic)

    def _collect_generations(self) -> None:
        """Delete old generations in the background (never blocks a round), at most every
        GEN_COLLECT_S: each pass opens a PostgreSQL session of its own, and at the housekeeping
        interval (200 ms) that alone was 6.5 % of a core with nothing to do (PostgreSQL 4.4 %,
        relay 2.1 %, topics rolling every 30 s as in `make run`; issue 19)."""
        now = time.monotonic()
        if self.gen <= 1 or (self._gc_task is not None and not self._gc_task.done()) \
                or now - self._last_collect < GEN_COLLECT_S:
            return
        self._last_collect = now
        self._gc_task = asyncio.create_task(self._collect(self.gen), name="relay-topic-gc")

    async def _collect(self, gen: int) -> None:
        try:
            conn = await asyncpg.connect(self.s.pg_dsn)
            try:
                deleted = await collect_old(conn, self.s.kafka_bootstrap, self.s.topic, gen, self.s.topic_keep_s)
                self.metrics.topic_deletes.inc(len(deleted))
            finally:
                await conn.close()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("relay %s topic generation cleanup failed: %r", self.s.name, exc)

    async def _wait_for_work(self) -> bool:
        if self._wake.is_set():
            return True
        try:
            await asyncio.wait_for(self._wake.wait(), self.s.poll_ms / 1000)
            return True
        except asyncio.TimeoutError:
            return False

    async def _discover(self, data_conn) -> None:
        self._instruments |= {r["instrument"] for r in await data_conn.fetch(DISCOVER_SQL)}

    async def _prepare(self, producer: AIOKafkaProducer, data_conn, positions: dict[str, int]):
        """Read the rows after `positions` and build one record batch per instrument.
        Returns a Round, or None when there is nothing to send."""
        self._wake.clear()  # before reading: a commit after this point wakes us again
        if self._notified:
            self._instruments |= self._notified
            self._notified = set()
        if not self._instruments:
            return None
        names = sorted(self._instruments)
        # Read no more rows than one record batch holds: rows read but not fitting would be
        # read again next round (measured: a third of the reading was wasted that way).
        limit = max(1, min(self.s.batch_size, int(self.s.max_batch_bytes / self._row_bytes)))
        rows = await data_conn.fetch(
            FETCH_SQL, names, [positions.get(n, 0) for n in names], limit
        )
        if not rows:
            return None
        by_instrument: dict[str, list] = {}
        size = 0
        for r in rows:
            by_instrument.setdefault(r[0], []).append(r)
            size += len(r[2])
        # Record size estimate (payload + key + ~30 B record overhead), a moving average.
        per_row = size / len(rows) + len(rows[0][0]) + 30
        self._row_bytes = 0.8 * self._row_bytes + 0.2 * per_row
        rnd = Round()
        for name, inst_rows in by_instrument.items():
            more = len(inst_rows) >= limit  # a full read: more may be waiting
            expected = positions.get(name, 0) + 1
            key = name.encode()
            batch = producer.create_batch()
            values: list[bytes] = []
            last = None
            hole = False
            for _, seq, payload in inst_rows:
                if seq != expected:
                    # A hole (or disorder): never skip it. Everything before it goes, the
                    # rest waits until the missing row is visible (the poll fallback
                    # retries, so no busy loop on a hole).
                    self._note_gap(name, expected, seq)
                    hole = True
                    more = False
                    break
                if batch.append(timestamp=None, key=key, value=payload) is None:
                    more = True  # batch full; the rest goes next round
                    break
                values.append(payload)
                last = seq
                expected += 1
            if not hole:
                self._clear_gap(name)
            if values:
                batch.close()
                rnd.batches.append(Pending(name, key, last, batch, values))
                rnd.backlog = rnd.backlog or more
        return rnd if rnd.batches else None

    async def _publish(self, producer: AIOKafkaProducer, data_conn, rnd: "Round"):
        """Send a prepared round, wait for every acknowledgement, then advance the cursors.
        While the broker works on the acks, the next round is read and built (if there is
        a backlog) - but it is only SENT after this one is fully acknowledged, so there is
        never more than one batch per instrument in flight. Returns the next Round or None.
        Raises KafkaRoundError; the caller then drops the producer and any prepared round."""
        partitions = sorted(producer.client.cluster.partitions_for_topic(self.topic) or ())
        if not partitions:
            raise KafkaRoundError(f"no metadata for topic {self.topic}")
        started = time.perf_counter()
        futures = []
        prefetch: asyncio.Task | None = None
        try:
            async with asyncio.timeout(self.s.send_timeout_ms / 1000):
                for p in rnd.batches:
                    p.partition = self._partition(p.key, p.name, partitions)
                    # Checked right before the call, with no await in between: send_batch
                    # asks for metadata naming the topic if it does not know it, and on
                    # this broker that auto-creates it with 4 partitions.
                    if producer.client.cluster.partitions_for_topic(self.topic) is None:
                        raise KafkaRoundError(f"topic {self.topic} vanished from metadata")
                    futures.append(await producer.send_batch(p.batch, self.topic, partition=p.partition))
                if rnd.backlog:
                    sent_up_to = {**self._cursors, **{p.name: p.last for p in rnd.batches}}
                    prefetch = asyncio.create_task(self._prepare(producer, data_conn, sent_up_to))
                results = await asyncio.gather(*futures, return_exceptions=True)
                acked = time.perf_counter()
        except KafkaRoundError:
            await _settle(prefetch)
            raise
        except Exception as exc:  # incl. TimeoutError, KafkaError, AssertionError (partition)
            await _settle(prefetch)
            raise KafkaRoundError(repr(exc)) from exc
        # The prefetch uses data_conn too; let it finish before the cursor write.
        nxt = await prefetch if prefetch is not None else None

        advanced_names, advanced_seqs, published, failures = [], [], 0, []
        ends: dict[int, int] = {}
        relayed: list[RelayedRecords] = []
        for p, result in zip(rnd.batches, results):
            if isinstance(result, BaseException):
                failures.append(f"{p.name}: {result!r}")
                continue
            # Offsets in a partition only grow. One that went back means the broker lost
            # its log (the memory broker restarted): the batch may sit in a topic that no
            # longer exists, so it counts as not delivered, and the topic is recreated.
            prev = self._last_offset.get(p.partition)
            if prev is not None and result.offset <= prev:
                self._last_offset.clear()
                failures.append(f"{p.name}: partition {p.partition} offset went back {prev} -> {result.offset}")
                continue
            count = len(p.values)
            self._last_offset[p.partition] = result.offset + count - 1
            ends[p.partition] = result.offset + count
            relayed.append(RelayedRecords(p.partition, result.offset, p.values))
            self._cursors[p.name] = p.last
            advanced_names.append(p.name)
            advanced_seqs.append(p.last)
            published += count
        if advanced_names:
            # The projectors apply the records of this notice (or fetch on it): the broker holds
            # them now (acked), so a projector never gets ahead of the topic. Before the cursor
            # write, whose commit under load would only delay the views.
            await self.notices.announce(self.topic, ends, relayed)
            # After the acks, never before: a crash before this line only causes duplicates.
            await data_conn.execute(UPSERT_CURSORS_SQL, advanced_names, advanced_seqs)
            self.metrics.published.inc(published)
            self.metrics.batch_size.observe(published)
            self.metrics.publish_seconds.observe(acked - started)
        if failures:
            raise KafkaRoundError("; ".join(failures))
        self.kafka_ok = True
        self.metrics.kafka_up.set(1)
        self._reset_backoff()
        return nxt

    def _partition(self, key: bytes, name: str, partitions: list[int]) -> int:
        # Same murmur2 partitioner as the Java client and aiokafka's default: other
        # producers of the same key would land on the same partition.
        cache_key = (name, len(partitions))
        p = self._partition_of.get(cache_key)
        if p is None:
            p = self._partition_of[cache_key] = DefaultPartitioner()(key, partitions, partitions)
        return p

    def _note_gap(self, name: str, expected: int, seen: int) -> None:
        self.metrics.journal_gap.labels(name).set(1)
        now = time.monotonic()
        if now - self._gap_logged.get(name, 0) > 10:
            self._gap_logged[name] = now
            log.error(
                "relay %s: %s expected seq %d, found %d; holding at the hole",
                self.s.name, name, expected, seen,
            )

    def _clear_gap(self, name: str) -> None:
        if self._gap_logged.pop(name, None) is not None:
            self.metrics.journal_gap.labels(name).set(0)

    # ----------------------------------------------------------------- kafka

    async def _start_producer(self) -> AIOKafkaProducer | None:
        """ensure_topic first (see module doc), then a fresh producer. None on failure."""
        producer = None
        try:
            count = await ensure_topic(
                self.s.kafka_bootstrap, self.topic, self.s.topic_partitions,
                timeout_s=self.s.send_timeout_ms / 1000,
            )
            self.metrics.topic_partitions.set(count)
            producer = AIOKafkaProducer(
                bootstrap_servers=self.s.kafka_bootstrap,
                client_id=f"relay-{self.s.name}",
                acks="all",
                enable_idempotence=False,  # unsupported by Tansu; ordering is ours (see above)
                compression_type=None,
                linger_ms=0,  # we hand over complete batches; the relay lingers itself
                max_batch_size=self.s.max_batch_bytes,
                max_request_size=max(1_048_576, self.s.max_batch_bytes + 65_536),
                request_timeout_ms=self.s.send_timeout_ms,
                retry_backoff_ms=100,
            )
            await asyncio.wait_for(producer.start(), self.s.send_timeout_ms / 1000)
            # The producer must learn the topic from metadata of ALL topics (its bootstrap,
            # or a refresh while it tracks no topic): if it ever asked for this topic by
            # name it would keep doing so on every refresh, and after a broker restart that
            # request would auto-create the topic with the wrong partition count.
            if producer.client.cluster.partitions_for_topic(self.topic) is None:
                await asyncio.wait_for(producer.client.force_metadata_update(), self.s.send_timeout_ms / 1000)
            if producer.client.cluster.partitions_for_topic(self.topic) is None:
                raise KafkaRoundError(f"topic {self.topic} not in metadata after create")
            self._last_offset.clear()  # a new producer may talk to a new broker incarnation
            self.kafka_ok = True
            self.metrics.kafka_up.set(1)
            self._last_topic_check = time.monotonic()
            log.info("relay %s producer ready (%s, topic %s, %d partitions)",
                     self.s.name, self.s.kafka_bootstrap, self.topic, count)
            return producer
        except Exception as exc:
            self.kafka_ok = False
            self.metrics.kafka_up.set(0)
            self.metrics.errors.labels("kafka").inc()
            log.warning("relay %s kafka not ready: %r", self.s.name, exc)
            if producer is not None:
                await self._drop_producer(producer)
            return None

    async def _drop_producer(self, producer: AIOKafkaProducer) -> None:
        # Anything still queued in it is at or after the cursor; if it lands later it is a
        # duplicate, never a hole (the next producer resends from the cursor in order).
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(producer.stop(), 2)

    async def _check_topic(self, producer: AIOKafkaProducer) -> bool:
        """Is the broker there and does the topic still exist (metadata of all topics,
        which names no topic and so creates none)? A memory broker that restarted is empty
        and still acknowledges sends to the vanished topic; False makes the caller drop the
        producer, and the next one recreates the topic with the right partition count."""
        self._last_topic_check = time.monotonic()
        try:
            metadata = await asyncio.wait_for(producer.client.fetch_all_metadata(), 5)
            partitions = metadata.partitions_for_topic(self.topic)
        except Exception as exc:
            self.kafka_ok = False
            self.metrics.kafka_up.set(0)
            self.metrics.errors.labels("kafka").inc()
            log.warning("relay %s kafka check failed: %r", self.s.name, exc)
            return False
        if partitions is None:
            log.warning("relay %s: topic %s is gone (broker restarted?), recreating",
                        self.s.name, self.topic)
            return False  # drop the producer; _start_producer recreates the topic first
        self.kafka_ok = True
        self.metrics.kafka_up.set(1)
        self.metrics.topic_partitions.set(len(partitions))
        return True

    # ----------------------------------------------------------------- health / lag

    async def _lag_loop(self) -> None:
        while True:
            try:
                lag = await asyncio.wait_for(relay_lag(self.pool), 5)
                self.last_lag = lag
                for name, v in lag["instruments"].items():
                    self.metrics.lag_events.labels(name).set(v["lag_events"])
                self.metrics.lag_seconds.set(lag["lag_seconds"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("relay lag query failed: %r", exc)
            await asyncio.sleep(1.0)

    async def health(self) -> tuple[int, dict]:
        checks = {"postgres": "unhealthy", "kafka": "unhealthy"}
        with contextlib.suppress(Exception):  # any failure here is what 'unhealthy' reports
            await asyncio.wait_for(self.pool.fetchval("SELECT 1"), 1.0)
            checks["postgres"] = "healthy"
        # The leader's own view (last round / metadata check) can be up to one send timeout
        # old while a round hangs on a dead broker, so it also needs the broker to answer now.
        kafka = await _tcp_probe(self.s.kafka_bootstrap)
        if self.role == "leader":
            kafka = kafka and self.kafka_ok
        checks["kafka"] = "healthy" if kafka else "unhealthy"
        ok = all(v == "healthy" for v in checks.values())
        body = {
            "status": "healthy" if ok else "unhealthy",
            "timestamp": _utc_iso(),
            "role": self.role,
            "name": self.s.name,
            "checks": checks,
            "lag": {k: self.last_lag.get(k) for k in ("lag_events", "lag_seconds")},
        }
        return (200 if ok else 503), body


async def _tcp_probe(bootstrap: str) -> bool:
    """Does the first bootstrap broker accept connections (a standby has no producer)?"""
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    try:
        _r, w = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 1.0)
        w.close()
        return True
    except Exception:
        return False

