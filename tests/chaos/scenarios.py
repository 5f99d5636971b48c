"""Fault scenarios against the whole running exchange (the e2e `System`: command service,
relay, two query replicas, gateway, on the test profile's shared servers), while orders flow.

Used by tests/e2e/test_faults_short.py (make test: one short run of each fault) and
tests/chaos/ (make chaos: longer runs, repeated, and random sequences of faults).

A scenario: start the load (workers posting orders and some cancels through the command
service, each worker a client with its own API key, every 201 recorded), let it run, inject
the fault, repair it (restart the process or the server and wait until it answers), let the
load run on, stop it, let the system settle, and check (tests/chaos/invariants.py):
nothing acknowledged lost, no trade twice, every replica's views equal the journal, books
valid; and the load made progress after the repair. Every scenario leaves every service and
server running and healthy, because the servers and the System are shared with later tests.

What each server fault means here:
- PostgreSQL (pg_ctl stop -m fast, start): the command service answers 503 meanwhile (never a
  false 201), its sequencers fail stop and recover from the journal; relay and projectors
  reconnect.
- Redis (no persistence: restarts empty): the projector's watchdog sees views without
  last_seq and rebuilds them from the journal; the read API answers 503 meanwhile.
- NATS: the live feed and WS order entry pause; clients reconnect, the hub resnapshots.
- Kafka-API broker (Tansu, memory only): after the restart the topic is gone. What the relay
  does (relay/publisher.py): its periodic topic check (every topic_check_ms, 1 s)
  fails, or a send fails or returns an offset that went back; it drops its producer,
  recreates the topic with the right partition count (ensure_topic) and republishes from its
  per-instrument cursor (the last seq the old broker acknowledged) - NOT from seq 1: the
  events before the cursor are gone from Kafka for good. The projectors do not need them: a
  consumer that resumes on the new topic sees seq > last_seq + 1 (a gap) or nothing new, and
  the gap handler / watchdog catches the views up from the journal (PostgreSQL).
  The scenario also recreates the profile's default topic (exchange.events), which
  `make test` created and the restart removed.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import time
import uuid
from dataclasses import dataclass, field

import asyncpg
import httpx
import redis.asyncio as aioredis

from contracts.topics import EVENTS_TOPIC_PARTITIONS
from ops import stack
from tests.chaos.invariants import SYMBOLS, assert_exchange_sound
from tests.support.services import DSN, create_key, reset_db

CFG = stack.config("test")
SERVICES = ("command", "relay", "query-1", "query-2")
SERVERS = ("postgres", "redis", "nats", "kafka")


# ---------------------------------------------------------------------------- load


def order_body(client_id: str, i: int, rng: random.Random) -> dict:
    """Like tests/integration/test_command_faults.order_body: prices on a narrow band around
    100 so orders cross and trade; a market order now and then."""
    side = rng.choice(("buy", "sell"))
    body = {"client_id": client_id, "instrument": SYMBOLS[i % len(SYMBOLS)], "side": side,
            "quantity": str(rng.randint(1, 5))}
    if i % 9 == 0:
        body["type"] = "market"
    else:
        body["type"] = "limit"
        body["price"] = str(100 + rng.randint(-5, 5) - (2 if side == "buy" else 0))
    return body


class Load:
    """Closed-loop load through the command service: `workers` connections, each a client with
    its own key; every 201 is recorded. About one request in eight cancels one of the worker's
    own earlier orders (200, or 409 when it was filled meanwhile), one in ten reads one back
    (GET /orders/{id}, the committed state: same client, price, quantity, and at least the
    filled quantity it was acknowledged with)."""

    ORDER_OK = {201, 503}  # 503: the service says it cannot take orders now (declared outage)
    CANCEL_OK = {200, 409, 503}
    READ_OK = {200, 503}

    def __init__(self, url: str, keys: dict[str, str], seed: int | None = None):
        self.url = url
        self.keys = keys  # client_id -> api key, one worker each
        self.seed = seed if seed is not None else random.randrange(2**32)
        self.acked: dict[str, dict] = {}
        self.acked_at: list[float] = []  # monotonic time of every 201
        self.orders = collections.Counter()  # status or exception name -> count
        self.cancels = collections.Counter()
        self.reads = collections.Counter()
        self.unexpected: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    async def _worker(self, n: int, client_id: str, key: str) -> None:
        rng = random.Random(f"{self.seed}-{n}")
        mine: list[str] = []  # own orders that may still rest (cancel candidates)
        own: list[str] = []  # own acknowledged orders (read candidates)
        i = n
        async with httpx.AsyncClient(base_url=self.url, timeout=10,
                                     headers={"Authorization": f"Bearer {key}"}) as client:
            while not self._stop.is_set():
                i += len(self.keys)
                pick = rng.random()
                cancel = bool(mine) and pick < 0.125
                read = not cancel and bool(own) and pick < 0.225
                try:
                    if read:
                        oid = own[rng.randrange(len(own))]
                        r = await client.get(f"/orders/{oid}")
                        self.reads[r.status_code] += 1
                        if r.status_code == 200:
                            self._check_read(oid, r.json()["order"])
                        elif r.status_code not in self.READ_OK:
                            self.unexpected.append(f"read {r.status_code} {r.text[:200]}")
                    elif cancel:
                        r = await client.post(f"/orders/{mine.pop(rng.randrange(len(mine)))}/cancel")
                        self.cancels[r.status_code] += 1
                        if r.status_code not in self.CANCEL_OK:
                            self.unexpected.append(f"cancel {r.status_code} {r.text[:200]}")
                    else:
                        r = await client.post("/orders", json=order_body(client_id, i, rng))
                        self.orders[r.status_code] += 1
                        if r.status_code == 201:
                            order = r.json()["order"]
                            self.acked[order["order_id"]] = order
                            self.acked_at.append(time.monotonic())
                            if order["status"] in ("open", "partially_filled") and len(mine) < 200:
                                mine.append(order["order_id"])
                            if len(own) < 500:
                                own.append(order["order_id"])
                        elif r.status_code not in self.ORDER_OK:
                            self.unexpected.append(f"order {r.status_code} {r.text[:200]}")
                    if r.status_code == 503:
                        await asyncio.sleep(0.05)
                except httpx.HTTPError as exc:  # the service is down or was killed mid-request
                    (self.reads if read else self.cancels if cancel else self.orders)[type(exc).__name__] += 1
                    await asyncio.sleep(0.05)

    def _check_read(self, oid: str, now: dict) -> None:
        acked = self.acked[oid]
        same = all(now.get(k) == acked.get(k) for k in ("order_id", "client_id", "instrument", "side", "price",
                                                         "quantity"))
        if not same or now["filled_quantity"] < acked["filled_quantity"]:
            self.unexpected.append(f"read {oid}: {now} does not continue the acknowledged {acked}")

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker(n, cid, key))
                       for n, (cid, key) in enumerate(self.keys.items())]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def acked_since(self, t: float) -> int:
        return sum(1 for a in self.acked_at if a >= t)

    def summary(self) -> str:
        return (f"{len(self.acked)} acked; orders {dict(self.orders)}; cancels {dict(self.cancels)}; "
                f"reads {dict(self.reads)}")


async def load_keys(workers: int, prefix: str = "chaos") -> dict[str, str]:
    tag = uuid.uuid4().hex[:6]
    return {f"{prefix}-{tag}-{n}": await create_key(f"{prefix}-{tag}-{n}") for n in range(workers)}


# ---------------------------------------------------------------------------- health


async def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        async with httpx.AsyncClient() as client:
            return (await client.get(url, timeout=timeout)).status_code == 200
    except httpx.HTTPError:
        return False


def health_urls(system) -> dict[str, str]:
    return {
        "command": system.command_url + "/healthz",
        "relay": f"http://{CFG.host}:{CFG.relay_metrics_port}/healthz",
        "query-1": system.query_urls[0] + "/healthz",
        "query-2": system.query_urls[1] + "/healthz",
        "gateway": system.gateway + "/healthz",
    }


async def wait_all_healthy(system, timeout: float = 60.0) -> None:
    urls = health_urls(system)
    deadline = time.monotonic() + timeout
    pending = dict(urls)
    while pending:
        for name, url in list(pending.items()):
            if await http_ok(url):
                pending.pop(name)
        if not pending:
            return
        if time.monotonic() > deadline:
            details = []
            async with httpx.AsyncClient() as client:
                for name, url in pending.items():
                    try:
                        r = await client.get(url, timeout=2)
                        details.append(f"{name}: {r.status_code} {r.text[:300]}")
                    except httpx.HTTPError as exc:
                        details.append(f"{name}: {exc!r}")
            raise AssertionError(f"not healthy {timeout}s after the fault: " + "; ".join(details))
        await asyncio.sleep(0.25)


async def restore(system) -> None:
    """Whatever a failed scenario left behind: every server up, every service running, all healthy.
    Called after every scenario, passed or failed, so later tests get a working system."""
    for name in SERVERS:
        if stack.server_pid(CFG, name) is None:
            await asyncio.to_thread(stack.start_server, CFG, name)
            if name == "kafka":
                await recreate_default_topic()
    for name in SERVICES:
        proc = system.procs.get(name)
        if proc is None or proc.poll() is not None:
            system.procs.pop(name, None)
            system.start(name)
    if stack.gateway_pid(CFG) is None:
        stack.start_gateway(CFG)
    await wait_all_healthy(system)


async def recreate_default_topic() -> None:
    # `make test` created the profile's topic; a restarted memory broker no longer has it.
    await stack.ensure_topic(CFG.kafka_bootstrap, stack.exchange_env(CFG)["EXCHANGE_KAFKA_TOPIC"])


# ---------------------------------------------------------------------------- faults


@dataclass
class Fault:
    name: str
    down_seconds: float = 1.0
    kind: str = field(init=False)

    def __post_init__(self):
        self.kind = "service" if self.name in SERVICES else "server"


async def inject(system, name: str, down_seconds: float, kill9: bool = True) -> None:
    """Take `name` away, keep it away for down_seconds, bring it back and wait until it answers."""
    if name in SERVICES:
        if kill9:
            system.kill9(name)
        else:
            system.stop(name)
        await asyncio.sleep(down_seconds)
        system.start(name)
        await wait_service(system, name)
        return
    # Blocking helpers (pg_ctl, waiting for the port): in a thread, so the load keeps running.
    await asyncio.to_thread(stack.stop_server, CFG, name)
    await asyncio.sleep(down_seconds)
    await asyncio.to_thread(stack.start_server, CFG, name)
    if name == "kafka":
        await recreate_default_topic()


async def wait_service(system, name: str, timeout: float = 60.0) -> None:
    url = health_urls(system)[name]
    deadline = time.monotonic() + timeout
    while not await http_ok(url):
        proc = system.procs.get(name)
        assert proc is not None and proc.poll() is None, f"{name} exited with {proc and proc.returncode} after restart"
        assert time.monotonic() < deadline, f"{name} not healthy {timeout}s after its restart"
        await asyncio.sleep(0.2)


@dataclass
class Outcome:
    load: Load
    states: dict
    acked_after_repair: int
    seconds: float

    def summary(self) -> str:
        seqs = {s: st.seq for s, st in self.states.items()}
        return (f"{self.load.summary()}; {self.acked_after_repair} acked after the repair; journal seqs {seqs}; "
                f"{self.seconds:.1f}s")


async def run_scenario(system, faults: list[tuple[str, float]], *, workers: int = 6, before: float = 1.5,
                       between: float = 1.0, after: float = 2.0, keys: dict | None = None,
                       settle_timeout: float = 45.0) -> Outcome:
    """Load; then each (name, down_seconds) fault in turn; load on; settle; check. Restores the
    system in any case."""
    t0 = time.monotonic()
    keys = keys or await load_keys(workers)
    load = Load(system.command_url, keys)
    load.start()
    try:
        await asyncio.sleep(before)
        for n, (name, down) in enumerate(faults):
            if n:
                await asyncio.sleep(between)
            await inject(system, name, down)
        await wait_all_healthy(system)
        repaired = time.monotonic()
        await asyncio.sleep(after)
    finally:
        await load.stop()
        await restore(system)
    acked_after = load.acked_since(repaired)
    label = " + ".join(f"{name} ({down:g}s)" for name, down in faults)
    assert len(load.acked) > 0, f"{label}: no order acknowledged at all: {load.summary()}"
    assert acked_after > 0, f"{label}: no order acknowledged after the repair: {load.summary()}"
    try:
        states = await assert_exchange_sound(DSN, system.query_urls, acked=load.acked, timeout=settle_timeout)
        await assert_relay_caught_up(system, states, timeout=settle_timeout)
    except AssertionError as exc:
        raise AssertionError(f"{label}: {exc}; load: {load.summary()}") from None
    # After the invariants, so a scenario with both kinds of failure reports both.
    assert not load.unexpected, (f"{label}: {len(load.unexpected)} unexpected answers (the exchange is otherwise "
                                 f"sound), e.g. {load.unexpected[:3]}; {load.summary()}")
    return Outcome(load, states, acked_after, time.monotonic() - t0)


async def assert_relay_caught_up(system, states: dict, timeout: float = 30.0) -> None:
    """The relay's cursors reach the journal's end (everything was published to the broker the
    system runs on now), and the events topic exists with its partition count - after a broker
    restart that means the relay recreated it."""
    conn = await asyncpg.connect(DSN)
    try:
        deadline = time.monotonic() + timeout
        while True:
            cursors = {r["instrument"]: r["seq"] for r in await conn.fetch("SELECT instrument, seq FROM relay_cursors")}
            behind = {s: (cursors.get(s, 0), st.seq) for s, st in states.items() if cursors.get(s, 0) < st.seq}
            if not behind:
                break
            assert time.monotonic() < deadline, f"relay cursors behind the journal after {timeout}s: {behind}"
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
    partitions = await topic_partitions(system.topic)
    assert partitions == EVENTS_TOPIC_PARTITIONS, f"topic {system.topic} has {partitions} partitions"


async def topic_partitions(topic: str) -> int | None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=CFG.kafka_bootstrap, request_timeout_ms=5000)
    await asyncio.wait_for(admin.start(), 10)
    try:
        # list_topics names no topic, so it creates none (describe_topics would, on Tansu).
        if topic not in await admin.list_topics():
            return None
        described = await admin.describe_topics([topic])
        return len(described[0]["partitions"]) if described else None
    finally:
        await admin.close()


# ---------------------------------------------------------------------------- reset


async def fresh_system(system) -> None:
    """Put the System back in the state the e2e fixture created (empty journal and views, a new
    topic, the fixture's keys), for tests that expect a fresh exchange (test_seed_scenarios)."""
    for name in list(system.procs):
        system.stop(name)
    await reset_db()
    r = aioredis.from_url(CFG.redis_url)
    try:
        await r.flushall()
    finally:
        await r.aclose()
    system.topic = f"exchange.events.e2e-{uuid.uuid4().hex[:8]}"
    await stack.ensure_topic(CFG.kafka_bootstrap, system.topic)
    for who in ("client-A", "client-B", "client-C"):
        system.keys[who] = await create_key(who)
    system.keys["admin"] = await create_key("ops", admin=True)
    offsets = log_offsets(n for n in SERVICES if n.startswith("query-"))
    for name in SERVICES:
        system.start(name)
    if stack.gateway_pid(CFG) is None:
        stack.start_gateway(CFG)
    await wait_all_healthy(system)
    # Healthy replicas may still be joining the consumer group; until then the watchdog
    # projects from the journal in one-second batches, which changes how updates are grouped
    # on the stream (test_seed_scenarios' stream test reads them one order at a time).
    await wait_projectors_assigned(offsets)


async def wait_projectors_assigned(offsets: dict[str, int], timeout: float = 15.0) -> bool:
    """Best effort: until each query replica logged that the consumer group gave it partitions
    (its log after `offsets`). On Tansu a join takes seconds, and a group can stop completing
    rebalances altogether after replicas restarted a few times (see the report in
    docs/BENCHMARKS.md, "Fuzzing and chaos"); the views never depend on it (the projector's
    watchdog projects from the journal), only how updates are batched on the stream."""
    deadline = time.monotonic() + timeout
    pending = set(offsets)
    while pending and time.monotonic() < deadline:
        for name in list(pending):
            try:
                with open(CFG.log_path(name), "rb") as f:
                    f.seek(offsets[name])
                    if b"projector: assigned partitions" in f.read():
                        pending.discard(name)
            except OSError:
                pass
        if pending:
            await asyncio.sleep(0.2)
    if pending:
        print(f"[chaos] {sorted(pending)}: no partitions assigned within {timeout:.0f}s; "
              "projection runs on the journal watchdog")
    return not pending


def log_offsets(names) -> dict[str, int]:
    out = {}
    for name in names:
        try:
            out[name] = CFG.log_path(name).stat().st_size
        except OSError:
            out[name] = 0
    return out


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return default if value in (None, "") else float(value)
