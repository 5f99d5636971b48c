
"""The projector: Kafka (exchange.events) -> Redis views, with the journal as the truth.

Consumer-group design. Every query replica runs a projector in the SAME consumer group.
The topic is keyed by instrument, so an instrument lives on one partition and the group
gives each partition (hence each instrument) to exactly one live replica; when a replica
dies the group reassigns its partitions after the session timeout (kept low for Tansu).
No extra leader election is needed, and the work spreads when there are several
partitions. Correctness never depends on the assignment: every batch is a compare-and-set
on the instrument's last_seq (WATCH last_seq, read state, MULTI ... SET last_seq EXEC), so
two projectors that briefly both hold a partition during a rebalance, or a journal
catch-up racing the Kafka path, can never apply an event twice or out of order - the
loser's EXEC fails and it retries against the new state (its events are then skipped).

Ordering of side effects per batch: Redis EXEC (views + last_seq) -> NATS publish of the
feed message -> Kafka offset commit. Offsets are committed only after the views hold the
events, so a crash re-delivers (harmless: seq <= last_seq is skipped). A lost NATS message
is detected by the replicas through prev_seq and repaired by resnapshotting.

The broker is memory-only and may lose data and offsets. Nothing here depends on it:
- a gap (next seq > last_seq + 1) or missing views (no last_seq) -> catch up from the
  journal (events with seq > last_seq, in chunks, each chunk one MULTI/EXEC);
- the watchdog compares the journal's max seq with last_seq every second: views that
  are empty, or that still miss events the journal had a whole interval ago (relay or
  broker down, offsets lost, topic recreated), are caught up from the journal too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict

import asyncpg
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.partitioner import murmur2
from aiokafka.structs import TopicPartition
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from contracts.instruments import Instruments
from contracts.messages import Event, decode_event
from contracts.topics import CURRENT_TOPIC_SQL, RELAYED_SUBJECT, feed_subject, generation_group, parse_relayed_notice
from query_service.bus import Bus
from query_service.feed import TickerFigures, build_feed
from query_service.journal import JournalReader
from query_service.metrics import QueryMetrics, observe_many
from query_service.projection import GapError, project
from query_service.redis_cluster import get_many, is_cluster
from query_service.redis_keys import Keys
from query_service.render import ticker_window
from query_service.settings import QuerySettings
from query_service.store import (
    StateCache,
    WatchedTx,
    delta_commands,
    merge_window,
    purge_commands,
    read_state,
)

log = logging.getLogger("query_service.projector")
BATCH_TIMEOUT_S = 30.0  # one bound per batch (reads + MULTI/EXEC), not per Redis reply
# Offsets are committed at most this often. Committing after every poll was one more
# broker request per poll (~6% of a replica's CPU at 2,000 orders/s); what a crash or a
# rebalance re-delivers within this window is skipped by seq <= last_seq.
COMMIT_INTERVAL_S = 0.25
GEN_CHECK_S = 0.25  # how often the projector looks for a newer topic generation
GEN_DRAIN_S = 5.0  # longest wait for the old generation's end before switching anyway
GEN_TAIL_POLL_S = 0.05  # journal reads per second and instrument while tailing
GEN_SWITCH_TAIL_S = 20.0  # longest journal tail while moving to a new generation
# With the relay's notices (relay/notices.py) a partition read to its end is paused; it is fetched
# again on a notice that it grew, and in any case after this long (a probe: one fetch, so that no
# lost notice or lost broker log can leave a partition unread for longer).
FETCH_PROBE_S = 1.0
# A store out of reach: the views are as they were (stale, not wrong), and the reads of every
# instrument fail the same way meanwhile. Anything else that keeps an instrument from being
# applied (a value the views cannot hold, a key of the wrong type, a gap the journal does not
# fill) leaves its views stuck: they lose the ready marker, so reads answer 503 (issue 20).
TRANSIENT_ERRORS = (ConnectionError, OSError, TimeoutError, RedisConnectionError, RedisTimeoutError,
                    asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError, asyncpg.InterfaceError)
# Set the ready marker only if the views still hold at least seq ARGV[1] (a Redis that restarted
# empty between our read and this write has no seq key: it must stay unready).
MARK_READY = """
local s = tonumber(redis.call('GET', KEYS[1]) or '0')
if s >= tonumber(ARGV[1]) then redis.call('SET', KEYS[2], '1') return 1 end
return 0
"""


class Projector:
    def __init__(
        self,
        settings: QuerySettings,
        instruments: Instruments,
        redis,
        bus: Bus,
        journal: JournalReader,
        metrics: QueryMetrics,
    ):
        self.settings = settings
        self.instruments = instruments
        self.redis = redis
        self.bus = bus
        self.journal = journal
        self.metrics = metrics
        self.keys = Keys(settings.redis_prefix)
        self._locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._books: dict[str, StateCache] = {}  # instrument -> what its last batch left (store.StateCache)
        self._inst_metrics: dict[str, tuple] = {}  # instrument -> its labelled metric children
        self._tasks: list[asyncio.Task] = []
        self._running = False
        self.consumer: AIOKafkaConsumer | None = None
        self.assigned: set[int] | None = None  # partitions held; None = not in a group (act on all)
        self.partition_count: int | None = None
        self.last_poll = 0.0
        self.kafka_failed = False  # the consumer's last start/poll raised
        self._to_commit: dict = {}
        self._commit_task: asyncio.Task | None = None
        # Topic generations (relay/generations.py): the topic being read, and since when a
        # switch to a newer generation has been waiting for the old one to drain.
        self.topic = settings.kafka_topic
        self._draining_since: float | None = None
        self._switched_at = 0.0
        self._tail_until = 0.0
        self._tail_task: asyncio.Task | None = None
        self._last_gen_check = 0.0
        # Fetching on the relay's notices (issue 19): what the relay said each partition ends at,
        # and when the paused partitions were last fetched.
        self._announced: dict[TopicPartition, int] = {}
        self._last_resume = 0.0
        self._applying: set[TopicPartition] = set()  # partitions whose fetched records are being applied
        if settings.kafka_fetch_on_notice:
            bus.subscribe_on_connect(RELAYED_SUBJECT, self._on_relayed_msg)
        received = metrics.projector_records_received
        self._received_notice = received.labels("notice")
        self._received_fetched = received.labels("fetch")

        # instrument -> why its views cannot be brought up to date (health reports it until an
        # apply or catch-up of that instrument succeeds again): never silently healthy.
        self.failing: dict[str, str] = {}
        self._side_tasks: set[asyncio.Task] = set()

    def _failed(self, instrument: str, exc: BaseException) -> None:
        self.failing[instrument] = f"{type(exc).__name__}: {str(exc)[:200]}"
        if not isinstance(exc, TRANSIENT_ERRORS):
            task = asyncio.get_running_loop().create_task(self._mark_stuck(instrument))
            self._side_tasks.add(task)  # a reference until it is done (the loop keeps only a weak one)
            task.add_done_callback(self._side_tasks.discard)

    async def _mark_stuck(self, instrument: str) -> None:
        # The watchdog marks the views ready again once they reach the journal after a repair.
        with contextlib.suppress(Exception):  # Redis gone too: the next failure tries again
            await self.redis.delete(self.keys.ready(instrument))

    # ------------------------------------------------------------------ lifecycle

    async def start(self, kafka: bool = True) -> None:
        self._running = True
        self._tasks.append(asyncio.create_task(self._drop_legacy_layout(), name="projector-legacy-layout"))
        self._tasks.append(asyncio.create_task(self._drop_all_indexes(), name="projector-all-indexes"))
        try:
            await asyncio.wait_for(self.mark_complete_views(), 5.0)
        except Exception as exc:  # PostgreSQL or Redis not there yet: the watchdog marks them later
            log.info("projector: views not marked at start (%s)", exc)
        if kafka:
            self._tasks.append(asyncio.create_task(self._consume_forever(), name="projector-kafka"))
        self._tasks.append(asyncio.create_task(self._watchdog(), name="projector-watchdog"))

    async def _drop_all_indexes(self) -> None:
        """Views written before issue 19's seventh round kept a third index per client and
        instrument, `co:{C}:all` (= open + closed, now merged on read): nothing reads or updates
        it any more, so it is dropped here, per instrument through its clients set (every key of
        an instrument is in its slot: the same on a Redis Cluster). Idempotent; a replica that
        starts later finds nothing to drop. Runs concurrently with projection: the keys are dead."""
        dropped = 0
        try:
            for inst in self.instruments.symbols:
                clients = await self.redis.smembers(self.keys.clients(inst))
                names = [self.keys.client_orders(c.decode(), "all", inst) for c in sorted(clients)]
                for n in range(0, len(names), 500):
                    dropped += await self.redis.unlink(*names[n:n + 500])
            if dropped:
                log.info("projector: dropped %d client order indexes of the old layout (co:*:all)", dropped)
        except Exception as exc:  # noqa: BLE001 - leftovers only cost memory; the next start tries again
            log.warning("projector: dropping the old client order indexes failed: %r", exc)

    async def _drop_legacy_layout(self) -> None:
        """Views of the layout before issue 14 (global record hash "{p}orders", keys without a hash
        tag) are never read: the new seq keys do not exist, so every instrument is rebuilt from the
        journal. Their keys are dropped once here so they do not hold memory forever. Only a single
        Redis can have them (a cluster could not run that layout: its batches spanned slots)."""
        if is_cluster(self.redis):
            return
        try:
            if not await self.redis.exists(self.keys.legacy()):
                return
            p = self.keys.p
            dropped = 0
            batch: list[bytes] = []
            async for k in self.redis.scan_iter(match=p + "*", count=1000):
                if not k.startswith(p.encode() + b"{"):
                    batch.append(k)
                if len(batch) >= 1000:
                    dropped += await self.redis.unlink(*batch)
                    batch = []
            if batch:
                dropped += await self.redis.unlink(*batch)
            log.info("projector: dropped %d keys of the old Redis layout (views rebuild from the journal)", dropped)
        except Exception as exc:  # noqa: BLE001 - leftovers only cost memory; the next start tries again
            log.warning("projector: dropping the old Redis layout failed: %r", exc)

    async def stop(self) -> None:
        self._running = False
        if self._tail_task is not None:
            self._tail_task.cancel()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):  # stopping: the tasks' own errors were logged where they happened
                await t
        self._tasks.clear()
        if self.consumer is not None:
            with contextlib.suppress(Exception):  # stopping without LeaveGroup; a consumer whose broker is gone may fail to stop cleanly
                await self.consumer.stop()

    # ------------------------------------------------------------------ applying

    async def apply(self, instrument: str, events: list[Event], mark_ready: bool | None = None) -> int:
        """Apply events of one instrument (sorted by seq; duplicates allowed) in one
        MULTI/EXEC. Returns how many were new. Raises GapError if they do not continue
        the views' last_seq. `mark_ready`: True = these events complete a rebuild (the views
        become readable in the same EXEC); None (the Kafka path) = only when the views are
        built from seq 1 here (a new instrument)."""
        spec = self.instruments.get(instrument)
        if spec is None:
            self.metrics.events_skipped.labels("unknown_instrument").inc(len(events))
            return 0
        async with self._locks[instrument]:
            async with asyncio.timeout(BATCH_TIMEOUT_S):
                return await self._apply_locked(spec, instrument, events, mark_ready)

    async def _apply_locked(self, spec, instrument: str, events: list[Event], mark_ready: bool | None = None) -> int:
        seq_key = self.keys.seq(instrument)
        for _attempt in range(100):
            # The cached state is handed over to this batch (project() changes its book in
            # place) and comes back only with the batch's EXEC: after a failure of any kind
            # the next batch reads everything from Redis instead.
            cache = self._books.pop(instrument, None)
            async with WatchedTx(self.redis, seq_key) as tx:
                read = await read_state(tx, self.keys, instrument, events, cache)
                state = read.state
                new = [e for e in events if e.seq > state.last_seq]
                if not new:
                    self._books[instrument] = read.known
                    self.metrics.events_skipped.labels("duplicate").inc(len(events))
                    return 0
                if new[0].seq != state.last_seq + 1:
                    raise GapError(instrument, state.last_seq, new[0].seq)
                cmds: list[tuple] = []
                reset = read.redis_seq_missing
                if reset:
                    # No last_seq: the views of this instrument are gone (FLUSHALL, new
                    # Redis) or were never built. Start from an empty state and remove any
                    # leftovers in the same transaction, so the rebuild equals a replay.
                    cmds += await purge_commands(tx, self.keys, instrument)
                    state = type(state)(instrument=instrument)
                    read.window_minutes, read.window_hours = [], []
                    read.known = StateCache(0, state.bids, state.asks, [])
                # The state was read for this batch only: its book and records are handed over.
                new_state, delta = project(state, new, consume_book=True, consume_records=True)
                ticker = None
                window = None
                if delta.trades:
                    now_s = delta.last_ts // 1_000_000_000
                    minutes, hours = merge_window(read, delta, now_s)
                    window = (*ticker_window(now_s), minutes, hours)
                    ticker = TickerFigures.of(
                        minutes + hours,
                        new_state.last_trade,
                        new_state.bids.peekitem(-1)[0] if new_state.bids else None,
                        new_state.asks.peekitem(0)[0] if new_state.asks else None,
                        delta.seq,
                        delta.last_ts,
                    )
                cmds += delta_commands(
                    delta, self.keys, spec, self.settings.recent_trades, self.settings.fills_per_client
                )
                if mark_ready or (mark_ready is None and reset and new[0].seq == 1):
                    cmds.append(("SET", self.keys.ready(instrument), "1"))
                if not await tx.commit(cmds):
                    # Another projector (rebalance overlap, a catch-up elsewhere) moved
                    # last_seq between our read and EXEC: nothing was applied; retry.
                    self.metrics.batch_conflicts.inc()
                    continue
            read.known.advance(new_state, delta, window)
            self._books[instrument] = read.known
            await self.bus.publish(feed_subject(instrument), build_feed(spec, delta, ticker, reset))
            self._observe(instrument, new, delta, new_state)
            return len(new)
        raise RuntimeError(f"{instrument}: too many concurrent updates of last_seq")

    def _observe(self, instrument, new, delta, state) -> None:
        ms = self._inst_metrics.get(instrument)
        if ms is None:
            # labels() is a locked dict lookup each, seven per batch: looked up once per instrument
            m = self.metrics
            ms = self._inst_metrics[instrument] = (
                m.projection_lag_seconds.labels(instrument), m.events_applied.labels(instrument),
                m.batches.labels(instrument), m.trades.labels(instrument), m.trade_volume.labels(instrument),
                m.orderbook_depth.labels(instrument, "buy"), m.orderbook_depth.labels(instrument, "sell"))
        lag, applied, batches, trades, volume, depth_buy, depth_sell = ms
        now = time.time_ns()
        observe_many(lag, [max(0, now - e.ts) / 1e9 for e in new])
        applied.inc(len(new))
        batches.inc()
        if delta.trades:
            trades.inc(len(delta.trades))
            spec = self.instruments.get(instrument)
            volume.inc(float(spec.lots_to_quantity(sum(t.quantity for t in delta.trades))))
        depth_buy.set(len(state.bids))
        depth_sell.set(len(state.asks))

    async def catch_up(self, instrument: str, reason: str) -> int:
        """Apply the journal's events after the views' last_seq, chunk by chunk."""
        if instrument not in self.instruments:
            return 0
        tail = reason == "generation"  # routine while moving to a new topic generation: not a rebuild
        if not tail:
            self.metrics.rebuilds.labels(instrument, reason).inc()
        total = 0
        while True:
            seq = int(await self.redis.get(self.keys.seq(instrument)) or 0)
            events = await self.journal.read(instrument, seq, self.settings.journal_chunk)
            if not events:
                # Nothing after the views' seq: they are complete (unless Redis lost them
                # since that GET: the script checks the seq again).
                await self.redis.eval(MARK_READY, 2, self.keys.seq(instrument), self.keys.ready(instrument), seq)
                break
            last = len(events) < self.settings.journal_chunk
            # The last chunk makes the views readable in its own EXEC: the seq a reader sees
            # move to the journal's end and the ready marker appear together.
            total += await self.apply(instrument, events, mark_ready=last)
            if last:
                break
        if total:
            log.log(logging.DEBUG if tail else logging.INFO,
                    "projector: %s caught up %d events from the journal (%s)", instrument, total, reason,
                    extra={"instrument": instrument, "reason": reason})
        return total

    async def apply_with_recovery(self, instrument: str, events: list[Event]) -> None:
        """Apply, repairing gaps from the journal; retry (never skip) while Redis/PG are down."""
        delay = 0.05
        while True:
            try:
                try:
                    await self.apply(instrument, events)
                except GapError as gap:
                    log.info("projector: %s", gap)
                    await self.catch_up(instrument, "gap")
                    # The journal holds every event Kafka delivered; whatever is left is new.
                    await self.apply(instrument, events)
                self.failing.pop(instrument, None)
                return
            except GapError as gap:
                log.error("projector: journal does not continue the views: %s", gap)
                self._failed(instrument, gap)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self._running:
                    raise
                self._failed(instrument, exc)
                log.warning("projector: %s apply failed (%s: %s); retrying", instrument, type(exc).__name__, exc,
                            extra={"instrument": instrument})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    # ------------------------------------------------------------------ Kafka

    def owns(self, instrument: str) -> bool:
        if self.assigned is None or not self.partition_count:
            return True
        return self.partition_of(instrument) in self.assigned

    def partition_of(self, instrument: str) -> int:
        # The relay produces with key = instrument and the default (murmur2) partitioner.
        return (murmur2(instrument.encode()) & 0x7FFFFFFF) % self.partition_count

    async def _consume_forever(self) -> None:
        delay = 0.5
        while self._running:
            try:
                await self._consume()
                delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.kafka_failed = True
                log.warning("projector: kafka consumer failed (%s: %s); restarting", type(exc).__name__, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                self.assigned = None
                self.metrics.projector_partitions.set(0)
                self._to_commit = {}
                if self._commit_task is not None:
                    self._commit_task.cancel()
                if self.consumer is not None:
                    with contextlib.suppress(Exception):  # the consumer is replaced after a failure already counted and logged
                        await self.consumer.stop()
                    self.consumer = None

    async def _consume(self) -> None:
        """Consume the current topic until the consumer fails or a newer topic generation
        takes over (then return: _consume_forever starts over on the new one)."""
        s = self.settings
        # The newest generation (a restart mid-roll skips the old one's tail: the journal
        # fills it through the gap rule). Never subscribe to a name that does not exist:
        # Tansu would auto-create it.
        topic = await self._current_topic()
        rolling = topic != s.kafka_topic
        # One consumer group per generation: moving on is joining a fresh group with a
        # fresh consumer, never changing a live group's subscription (a rebalance of the
        # old group while its members drain). A generation holds at most one roll period,
        # so a group new to it reads it from the start.
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.kafka_bootstrap,
            group_id=generation_group(s.kafka_group, topic) if rolling else s.kafka_group,
            client_id="query-projector",
            enable_auto_commit=False,
            auto_offset_reset="earliest" if rolling else s.kafka_offset_reset,
            session_timeout_ms=s.kafka_session_timeout_ms,
            heartbeat_interval_ms=s.kafka_heartbeat_interval_ms,
            rebalance_timeout_ms=s.kafka_rebalance_timeout_ms,
            max_poll_records=s.kafka_max_poll_records,
            fetch_max_wait_ms=s.kafka_fetch_max_wait_ms,
            metadata_max_age_ms=30_000,
            request_timeout_ms=10_000,
            retry_backoff_ms=100,
        )
        self.consumer = consumer
        self.topic = topic
        self._draining_since = None
        consumer.subscribe([self.topic], listener=_Rebalance(self))
        await consumer.start()
        _leave_without_leavegroup(consumer)
        self.kafka_failed = False
        log.info("projector: consuming %s as group %s", self.topic, consumer._group_id)
        while self._running:
            if await self._follow_generation(consumer):
                return
            # Fetching on notices, a partition not paused is either announced (its fetch answers at
            # once) or probed: give up on it after one empty fetch and pause it again.
            wait_ms = 200
            if self.notices_heard and consumer.paused() != consumer.assignment():
                wait_ms = s.kafka_fetch_max_wait_ms + 10
            batches = await consumer.getmany(timeout_ms=wait_ms, max_records=s.kafka_max_poll_records)
            # Before any await: the fetcher sends its next fetch on the loop's next turn.
            self._pause_read_to_end(consumer)
            self.last_poll = polled = time.monotonic()
            received_ns = time.time_ns()
            self.kafka_failed = False
            if not batches:
                continue
            offsets = {}
            values = []
            for tp, records in batches.items():
                if records:
                    values.append((tp, [r.value for r in records], records[0].offset))
                    offsets[tp] = records[-1].offset + 1
            self._received_fetched.inc(sum(len(v) for _, v, _ in values))
            # Until these are applied a notice must not apply what follows them (that would be a gap
            # in the views, filled from the journal): set before the first await after getmany.
            self._applying = set(offsets)
            try:
                await self._apply_values(values, received_ns)
            finally:
                self._applying = set()
            self.metrics.projector_poll_seconds.observe(time.monotonic() - polled)
            # Only now - the views hold every event up to these offsets - may they be
            # committed. The commit runs in the background so the next poll need not wait.
            self._schedule_commit(consumer, offsets)

    async def _apply_values(self, values: list[tuple[TopicPartition, list[bytes], int]], received_ns: int) -> None:
        """Decode record values (per partition, from `first` offset on) and apply them per instrument."""
        by_instrument: dict[str, list[Event]] = defaultdict(list)
        for tp, vals, first in values:
            for k, v in enumerate(vals):
                try:
                    e = decode_event(v)
                except Exception:
                    self.metrics.events_skipped.labels("undecodable").inc()
                    log.error("projector: undecodable event at %s offset %d", tp, first + k)
                    continue
                by_instrument[e.instrument].append(e)
        received = self.metrics.projector_received_lag_seconds
        for events in by_instrument.values():
            events.sort(key=_seq)
            received.observe(max(0, received_ns - events[0].ts) / 1e9)
        # Instruments are independent (own last_seq, own connection): apply them
        # concurrently so one poll costs the slowest instrument's round trips, not the sum.
        await asyncio.gather(*(self.apply_with_recovery(i, evs) for i, evs in by_instrument.items()))

    # ------------------------------------------------------------------ fetching on notices

    @property
    def notices_heard(self) -> bool:
        """Whether silence means something: only while the relay's notices can reach us."""
        return self.settings.kafka_fetch_on_notice and self.bus.connected

    async def _on_relayed_msg(self, msg) -> None:
        try:
            notice = parse_relayed_notice(msg.data)
        except ValueError:
            log.warning("projector: unreadable relay notice %r", bytes(msg.data[:200]))
            return
        topic = notice.topic
        announced = self._announced
        if len(announced) > 1000:  # entries of old generations: keep the current topic's only
            for tp in [tp for tp in announced if tp.topic != self.topic]:
                del announced[tp]
        for p, end in notice.ends.items():
            tp = TopicPartition(topic, p)
            if end > announced.get(tp, -1):
                announced[tp] = end
        consumer = self.consumer
        if consumer is not None and topic == self.topic:
            if notice.records:
                await self._apply_relayed(consumer, topic, notice.records)
            self._resume(consumer, probe=False)

    async def _apply_relayed(self, consumer: AIOKafkaConsumer, topic: str, records) -> None:
        """Apply the records a notice carries, for each partition of ours that is paused exactly
        where they begin (read to its end, nothing in flight for it), and move its position past
        them: no fetch for them. Anything else (a partition being fetched, a notice lost before
        this one) is left to the fetch that `_resume` starts. The broker acknowledged these
        records before the relay sent them, so the position never passes the topic's end."""
        paused = consumer.paused()
        if not paused:
            return
        runs: dict[TopicPartition, list] = {}
        for r in records:
            runs.setdefault(TopicPartition(topic, r.partition), []).append(r)
        values, moved = [], {}
        for tp, batches in runs.items():
            if tp not in paused or tp in self._applying:
                continue
            start = pos = _position(consumer, tp, None)
            if pos is None:
                continue
            # Two instruments can share a partition: their batches follow each other by offset.
            for b in sorted(batches, key=_base):
                if b.base > pos:
                    break  # a gap (an earlier notice was lost): the fetch fills it
                skip = pos - b.base
                if skip < len(b.values):
                    values.append((tp, b.values[skip:] if skip else b.values, pos))
                    pos = b.base + len(b.values)
            if pos > start:
                moved[tp] = (start, pos)
        if not moved:
            return
        self._received_notice.inc(sum(len(v) for _, v, _ in values))
        await self._apply_values(values, time.time_ns())
        if self.consumer is not consumer:
            return  # replaced meanwhile (failure, new generation): its group re-reads from its commits
        offsets = {}
        for tp, (start, end) in moved.items():
            # Only where nothing moved the position meanwhile (a probe's fetch of the same
            # records: applied twice, skipped by seq, and the fetch's position stands).
            if tp in consumer.assignment() and _position(consumer, tp, None) == start:
                consumer.seek(tp, end)
                offsets[tp] = end
        if offsets:
            self._schedule_commit(consumer, offsets)

    def _resume(self, consumer: AIOKafkaConsumer, probe: bool) -> None:
        """Resume the paused partitions the relay announced more for (all of them if `probe`)."""
        paused = consumer.paused()
        if not paused:
            return
        again = [tp for tp in paused if probe or self._announced.get(tp, -1) > _position(consumer, tp, -1)]
        if again:
            self._last_resume = time.monotonic()
            consumer.resume(*again)

    def _pause_read_to_end(self, consumer: AIOKafkaConsumer) -> None:
        """Pause every partition read to its end (the last fetch's high watermark and whatever the
        relay announced): a fetch of it now would be an empty one that Tansu holds for the whole
        fetch wait and still costs its ~0.4 ms. Only while the notices are heard: without them
        (NATS away) every partition is fetched as if there were no notices."""
        if not self.notices_heard:
            if consumer.paused():
                self._resume(consumer, probe=True)
            return
        if consumer.paused() and time.monotonic() - self._last_resume >= FETCH_PROBE_S:
            self._resume(consumer, probe=True)
            return
        done = []
        for tp in consumer.assignment():
            pos = _position(consumer, tp, None)
            hw = consumer.highwater(tp)
            if pos is not None and hw is not None and pos >= hw and pos >= self._announced.get(tp, 0):
                done.append(tp)
        if done:
            consumer.pause(*done)

    async def _current_topic(self) -> str:
        base = self.settings.kafka_topic
        topic = await self.journal._pool().fetchval(CURRENT_TOPIC_SQL, base)
        return base if topic is None else topic

    async def _follow_generation(self, consumer: AIOKafkaConsumer) -> bool:
        """True when it is time to move to a newer topic generation: this replica has read
        its partitions of the old one to the end (the relay writes nothing more to a sealed
        generation, so its end offsets are final), or GEN_DRAIN_S have passed (the journal
        fills whatever was skipped). While the new group forms nobody holds a partition, so
        meanwhile the views follow the journal directly."""
        now = time.monotonic()
        if now - self._last_gen_check < GEN_CHECK_S:
            return False
        self._last_gen_check = now
        try:
            newest = await self._current_topic()
        except Exception as exc:  # PostgreSQL away: stay on this generation, look again later
            log.debug("projector: generation check failed (%s)", exc)
            return False
        if newest == self.topic:
            return False
        if self._draining_since is None:
            self._draining_since = now
            self._tail_until = now + GEN_SWITCH_TAIL_S
            if self._tail_task is None or self._tail_task.done():
                self._tail_task = asyncio.create_task(self._tail_journal(), name="projector-generation-tail")
            log.info("projector: generation %s is current; draining %s", newest, self.topic)
        drained = self.assigned is not None  # None: not in the group yet
        tps = [tp for tp in consumer.assignment() if tp.topic == self.topic]
        if drained and tps:
            ends = await consumer.end_offsets(tps)
            for tp in tps:
                if await consumer.position(tp) < ends[tp]:
                    drained = False
                    break
        if not drained and now - self._draining_since < GEN_DRAIN_S:
            return False
        # Commit what was applied before leaving: a group whose offsets reach the end of
        # the generation is what lets the relay delete it early.
        offsets, self._to_commit = self._to_commit, {}
        if offsets:
            try:
                await consumer.commit(offsets)
            except Exception as exc:
                log.info("projector: offset commit before switching failed (%s)", exc)
        log.info("projector: switching %s -> %s (%s)", self.topic, newest,
                 "drained" if drained else f"not drained after {GEN_DRAIN_S:.0f} s")
        self._switched_at = time.monotonic()
        return True

    async def _tail_journal(self) -> None:
        """From noticing a newer generation until the new group hands us partitions nobody
        reads the new topic (stopping the old consumer and joining the new group take a few
        seconds on Tansu): the views follow the journal meanwhile, on a task of its own so
        that neither the drain nor the join holds it up."""
        while self._running and time.monotonic() < self._tail_until:
            try:
                await asyncio.gather(*(self.catch_up(i, "generation") for i in self.instruments.symbols))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("projector: generation tail failed (%s)", exc)
            await asyncio.sleep(GEN_TAIL_POLL_S)

    def _schedule_commit(self, consumer: AIOKafkaConsumer, offsets: dict) -> None:
        self._to_commit.update(offsets)
        if self._commit_task is None or self._commit_task.done():
            self._commit_task = asyncio.create_task(self._committer(consumer))

    async def _committer(self, consumer: AIOKafkaConsumer) -> None:
        while self._to_commit:
            offsets, self._to_commit = self._to_commit, {}
            try:
                await consumer.commit(offsets)
            except Exception as exc:  # rebalanced meanwhile: the next owner skips what we applied
                log.info("projector: offset commit failed (%s)", exc)
            await asyncio.sleep(COMMIT_INTERVAL_S)

    # ------------------------------------------------------------------ watchdog

    async def _watchdog(self) -> None:
        prev_journal: dict[str, int] = {}
        while self._running:
            await asyncio.sleep(self.settings.watchdog_interval_s)
            try:
                await self._watch_round(prev_journal)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("projector: watchdog skipped (%s)", exc)

    async def mark_complete_views(self) -> None:
        """At start, before the replica serves: mark the views that are already complete (a new
        instrument, views another replica built) so reads need not wait for the first round."""
        await self._watch_round({}, catch_up=False)

    async def _watch_round(self, prev_journal: dict[str, int], catch_up: bool = True) -> None:
        symbols = self.instruments.symbols
        jmax = await self.journal.max_seqs(symbols)
        raw = await get_many(self.redis, [self.keys.seq(i) for i in symbols] + [self.keys.ready(i) for i in symbols])
        ready = raw[len(symbols):]
        raw = raw[: len(symbols)]
        for inst, r, rd in zip(symbols, raw, ready):
            views = int(r or 0)
            journal = jmax.get(inst, 0)
            self.metrics.projection_lag_events.labels(inst).set(max(0, journal - views))
            self.metrics.projection_last_seq.labels(inst).set(views)
            # Behind on events the journal already had a whole interval ago (relay or
            # broker down, offsets lost), or views missing entirely: use the journal.
            behind = views < prev_journal.get(inst, 0) or (r is None and journal > 0)
            prev_journal[inst] = journal
            if r is not None and views >= journal and inst in self.failing:
                # Caught up with the journal (by Kafka, or a catch-up elsewhere) since the failure:
                # whatever failed (a Redis restart's closed connection) is over. Without this a
                # one-off failure of a watchdog catch-up stayed reported until the instrument's
                # next event (chaos: redis+query-1 left query-2 degraded for minutes).
                self.failing.pop(inst, None)
            if behind and catch_up and self.owns(inst):
                try:
                    await self.catch_up(inst, "empty" if r is None else "stalled")
                    self.failing.pop(inst, None)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self._failed(inst, exc)
                    log.warning("projector: watchdog catch-up of %s failed: %s", inst, exc, extra={"instrument": inst})
            elif rd is None and views >= journal:
                # Views complete but not marked (a new instrument, or views built by the
                # Kafka path alone): mark them, if Redis still holds that seq.
                with contextlib.suppress(Exception):  # next round again
                    await self.redis.eval(MARK_READY, 2, self.keys.seq(inst), self.keys.ready(inst), views)


def _leave_without_leavegroup(consumer: AIOKafkaConsumer) -> None:
    """Stop without sending LeaveGroup; the broker drops us when our session times out.

    Tansu 0.6 keeps naming a member that left gracefully as the group's leader: the live
    members then all wait as followers, every SyncGroup ends in REBALANCE_IN_PROGRESS
    after the rebalance timeout, and the group never stabilises (reproduced within 3-7
    graceful restart cycles of two replicas; never after kill -9, 15 of 15). A member
    that just goes away is what the broker handles correctly, so a graceful stop now
    looks like that: the partitions move after the session timeout (4 s) instead of at
    once, and the journal watchdog keeps the views moving meanwhile."""
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None or not hasattr(coordinator, "_maybe_leave_group"):
        return

    async def forget_generation() -> None:
        coordinator.reset_generation()

    coordinator._maybe_leave_group = forget_generation


def _position(consumer: AIOKafkaConsumer, tp: TopicPartition, unknown):
    """The consumer's next offset of `tp` without waiting (consumer.position() awaits a reset)."""
    sub = consumer._subscription.subscription
    if sub is None or sub.assignment is None or tp not in sub.assignment.tps:
        return unknown
    state = sub.assignment.state_value(tp)
    return state.position if state.has_valid_position else unknown


def _seq(e: Event) -> int:
    return e.seq


def _base(r) -> int:
    return r.base


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, projector: Projector):
        self.p = projector

    async def on_partitions_revoked(self, revoked) -> None:
        self.p.assigned = set()
        self.p.metrics.projector_partitions.set(0)

    async def on_partitions_assigned(self, assigned) -> None:
        p = self.p
        parts = p.consumer.partitions_for_topic(p.topic) if p.consumer else None
        p.partition_count = len(parts) if parts else None
        p.assigned = {tp.partition for tp in assigned if tp.topic == p.topic}
        if p._draining_since is None:
            p._tail_until = 0.0  # the new generation's group formed: Kafka again
        p.metrics.projector_partitions.set(len(p.assigned))
        log.info("projector: assigned partitions %s of %s", sorted(p.assigned), p.partition_count)
