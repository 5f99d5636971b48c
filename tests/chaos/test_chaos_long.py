"""Long fault scenarios while orders flow (make chaos). Each uses tests/chaos/scenarios.py:
load through the command service, faults injected and repaired, then the invariants of
tests/chaos/invariants.py (nothing acknowledged lost, no trade twice, every replica's views
equal the journal, books valid, orders table equal to the journal, relay caught up).

- each fault repeated EXCHANGE_CHAOS_CYCLES times in one scenario, each lasting
  EXCHANGE_CHAOS_DOWN seconds (kill -9 of a service, or a server stopped and started);
- pairs of faults at the same time (e.g. PostgreSQL down while the command service is
  killed, the broker restarted while the relay is dead);
- a random sequence of faults for EXCHANGE_CHAOS_SECONDS, with a full check (load paused,
  system settled) after every few faults; the seed is printed, EXCHANGE_CHAOS_SEED replays it.
"""

from __future__ import annotations

import asyncio
import os
import random
import time

import pytest

from tests.chaos.invariants import assert_exchange_sound
from tests.chaos.scenarios import (
    SERVERS,
    SERVICES,
    Load,
    assert_relay_caught_up,
    env_float,
    inject,
    load_keys,
    restore,
    run_scenario,
    wait_all_healthy,
)
from tests.support.services import DSN

pytestmark = pytest.mark.asyncio(loop_scope="session")

CYCLES = int(env_float("EXCHANGE_CHAOS_CYCLES", 3))
DOWN = env_float("EXCHANGE_CHAOS_DOWN", 3.0)
SECONDS = env_float("EXCHANGE_CHAOS_SECONDS", 120.0)
WORKERS = int(env_float("EXCHANGE_CHAOS_WORKERS", 8))
FAULTS = ("command", "relay", "query-1", "query-2", *SERVERS)


@pytest.mark.parametrize("fault", FAULTS)
async def test_fault_repeated_under_load(system, fault):
    down = min(DOWN, 1.0) if fault == "command" else DOWN  # the command service: every second counts
    outcome = await run_scenario(system, [(fault, down)] * CYCLES, workers=WORKERS, before=3.0, between=3.0,
                                 after=5.0, settle_timeout=90.0)
    print(f"\n[chaos] {fault} x{CYCLES}, down {down:g}s: {outcome.summary()}")


PAIRS = [
    ("postgres", "command"),  # the database goes away and the writer dies meanwhile: recovery from the journal
    ("kafka", "relay"),  # the broker forgets everything while the relay is dead: cursor vs empty topic
    ("redis", "query-1"),  # views wiped while a projector is dead: the other one rebuilds
    ("nats", "query-2"),
    ("postgres", "kafka"),  # relay and projectors lose both ends
    ("command", "relay"),
]


@pytest.mark.parametrize("first,second", PAIRS, ids=[f"{a}+{b}" for a, b in PAIRS])
async def test_overlapping_faults_under_load(system, first, second):
    """Both faults at once: the second starts half-way through the first's outage."""
    keys = await load_keys(WORKERS)
    load = Load(system.command_url, keys)
    load.start()
    t0 = time.monotonic()
    try:
        await asyncio.sleep(3.0)

        async def later():
            await asyncio.sleep(DOWN / 2)
            await inject(system, second, DOWN)

        await asyncio.gather(inject(system, first, DOWN), later())
        await wait_all_healthy(system, timeout=90)
        repaired = time.monotonic()
        await asyncio.sleep(5.0)
    finally:
        await load.stop()
        await restore(system)
    label = f"{first}+{second}"
    assert load.acked_since(repaired) > 0, f"{label}: nothing acknowledged after the repair: {load.summary()}"
    states = await assert_exchange_sound(DSN, system.query_urls, acked=load.acked, timeout=90)
    await assert_relay_caught_up(system, states, timeout=90)
    assert not load.unexpected, f"{label}: unexpected answers, e.g. {load.unexpected[:3]}; {load.summary()}"
    print(f"\n[chaos] {label}: {load.summary()}; {time.monotonic() - t0:.1f}s")


async def test_random_faults_under_load(system):
    """Random faults from every kind for EXCHANGE_CHAOS_SECONDS; after every third fault the
    load pauses, the system settles and everything is checked, then the load resumes."""
    seed = int(os.environ.get("EXCHANGE_CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    rng = random.Random(seed)
    print(f"\n[chaos] random run: seed {seed}, {SECONDS:g}s")
    keys = await load_keys(WORKERS)
    acked: dict[str, dict] = {}
    schedule: list[str] = []
    unexpected: list[str] = []
    deadline = time.monotonic() + SECONDS
    rounds = 0
    while time.monotonic() < deadline:
        rounds += 1
        load = Load(system.command_url, keys, seed=rng.randrange(2**32))
        load.start()
        try:
            for _ in range(3):
                await asyncio.sleep(rng.uniform(1.0, 4.0))
                name = rng.choice(FAULTS)
                down = round(rng.uniform(0.3, 1.0 if name == "command" else 4.0), 1)
                schedule.append(f"{name}({down}s)")
                await inject(system, name, down)
            await wait_all_healthy(system, timeout=90)
            await asyncio.sleep(2.0)
        except BaseException:
            print(f"[chaos] seed {seed}, schedule so far: {' '.join(schedule)}")
            raise
        finally:
            await load.stop()
            await restore(system)
        acked.update(load.acked)
        unexpected += load.unexpected
        try:
            states = await assert_exchange_sound(DSN, system.query_urls, acked=acked, timeout=90)
            await assert_relay_caught_up(system, states, timeout=90)
        except AssertionError as exc:
            raise AssertionError(f"seed {seed}, after {' '.join(schedule)}: {exc}") from None
        print(f"[chaos] round {rounds}: {' '.join(schedule[-3:])}: {load.summary()}")
    assert not unexpected, f"seed {seed}: unexpected answers, e.g. {unexpected[:3]}"
    print(f"[chaos] seed {seed}: {len(schedule)} faults, {len(acked)} orders acknowledged, all checks passed")


async def test_system_healthy_at_the_end(system):
    """Whatever ran before: every server and service answers (restore() after each scenario)."""
    assert set(system.procs) >= set(SERVICES), sorted(system.procs)
    await wait_all_healthy(system, timeout=60)
