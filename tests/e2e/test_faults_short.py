"""Short fault scenarios on the whole running exchange, while orders flow (make test; the
long versions are in tests/chaos, make chaos). See tests/chaos/scenarios.py for what a
scenario does and checks, and tests/chaos/invariants.py for the invariants:

- kill -9 of the command service, of the relay, of a query replica, each restarted;
- stop/start of PostgreSQL, Redis, NATS and the Kafka-API broker (Tansu, memory only).

After each: every acknowledged order is in the orders table and the journal, no trade id
twice (journal and each replica's /market/trades), each replica's /market/orderbook equals
the book replayed from the journal at the same seq, books valid, and orders were acknowledged
again after the repair. Every scenario restores what it broke; the module ends by putting the
System back in the fresh state the e2e fixture created, because test_seed_scenarios (which
runs after this file) expects an empty exchange.
"""

import pytest

from tests.chaos.scenarios import fresh_system, run_scenario

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module", autouse=True)
async def leave_a_fresh_system(system):
    yield
    await fresh_system(system)


@pytest.mark.parametrize("fault,down", [
    ("command", 0.5),
    ("relay", 1.5),
    ("query-1", 1.5),
    ("postgres", 1.5),
    ("redis", 1.0),
    ("nats", 1.0),
    ("kafka", 1.0),
])
async def test_fault_under_load(system, fault, down):
    outcome = await run_scenario(system, [(fault, down)], workers=6, before=1.5, after=2.0)
    print(f"\n[faults] {fault} down {down}s: {outcome.summary()}")
