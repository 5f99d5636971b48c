"""Contract tests of the node's lock session (command_service/lock_session.py) against the real
PostgreSQL: it holds the locks of the instruments its node owns, writes a batch only while it holds
that batch's instrument lock, commits the batches that wait together in one transaction, and tells
every holder when the session (and so every lock) is gone."""

import asyncio
import logging
import os
import uuid

import asyncpg
import pytest

from command_service.journal import Batch
from command_service.lock_session import LOCK_CLASS, LockLost, LockSession
from contracts.enums import OrderStatus
from contracts.topics import JOURNAL_NOTIFY_CHANNEL
from tests.support.journal_rows import accepted, batch, state

DSN = os.environ["EXCHANGE_PG_DSN"]


@pytest.fixture
def symbols():
    tag = uuid.uuid4().hex[:6].upper()
    return [f"LS{tag}{i}-USD" for i in range(3)]


@pytest.fixture
async def db(symbols):
    conn = await asyncpg.connect(DSN)
    yield conn
    for sym in symbols:
        await conn.execute("DELETE FROM events WHERE instrument = $1", sym)
        await conn.execute("DELETE FROM orders WHERE instrument = $1", sym)
    await conn.close()


@pytest.fixture
async def session():
    s = LockSession(DSN, "ls-test")
    s.start()
    yield s
    await s.close()


async def other_session_can_lock(db, sym) -> bool:
    got = await db.fetchval("SELECT pg_try_advisory_lock($1, hashtext($2))", LOCK_CLASS, sym)
    if got:
        await db.fetchval("SELECT pg_advisory_unlock($1, hashtext($2))", LOCK_CLASS, sym)
    return got


async def test_locks_are_held_until_unlocked_one_by_one(session, db, symbols):
    a, b, _ = symbols
    assert await session.lock(a, lambda: None)
    assert await session.lock(b, lambda: None)
    assert not await other_session_can_lock(db, a)
    await session.unlock(a)
    assert await other_session_can_lock(db, a)  # released for the next owner
    assert not await other_session_can_lock(db, b)  # the other instrument stays owned
    assert session.holds(b) and not session.holds(a)


async def test_an_instrument_held_elsewhere_is_refused(session, db, symbols):
    a = symbols[0]
    assert await db.fetchval("SELECT pg_try_advisory_lock($1, hashtext($2))", LOCK_CLASS, a)
    try:
        assert not await session.lock(a, lambda: None)
        with pytest.raises(LockLost):
            await session.submit(batch(a, [1]))
        assert await db.fetchval("SELECT count(*) FROM events WHERE instrument = $1", a) == 0
    finally:
        await db.fetchval("SELECT pg_advisory_unlock($1, hashtext($2))", LOCK_CLASS, a)


async def test_batches_waiting_together_commit_in_one_transaction_and_notify_once(session, db, symbols):
    for sym in symbols:
        assert await session.lock(sym, lambda: None)
    heard = []
    await db.add_listener(JOURNAL_NOTIFY_CHANNEL, lambda *args: heard.append(args[3]))
    # Queued in the same turn of the loop: the committer takes all three at once.
    await asyncio.gather(*(session.submit(batch(sym, [1, 2])) for sym in symbols))
    rows = await db.fetch("SELECT instrument, seq, xmin::text AS tx FROM events WHERE instrument = ANY($1::text[])",
                          symbols)
    assert sorted((r["instrument"], r["seq"]) for r in rows) == sorted((s, q) for s in symbols for q in (1, 2))
    assert len({r["tx"] for r in rows}) == 1  # one transaction (one commit, one WAL flush)
    orders = await db.fetch("SELECT instrument, order_id FROM orders WHERE instrument = ANY($1::text[])", symbols)
    assert {(r["instrument"], r["order_id"]) for r in orders} == {(s, f"{s}-o{q}") for s in symbols for q in (1, 2)}
    for _ in range(50):
        if heard:
            break
        await asyncio.sleep(0.02)
    assert [set(p.split(",")) for p in heard] == [set(symbols)]  # the relay hears every instrument at once


async def test_two_batches_of_one_order_in_one_commit_leave_its_later_state(session, db, symbols):
    a = symbols[0]
    assert await session.lock(a, lambda: None)
    placed, filled = batch(a, [1], ids=["o-1"]), Batch(a)
    filled.events.append(accepted(a, 2, "o-2"))
    filled.add_orders([state("o-1", filled=5, status=OrderStatus.FILLED, instrument=a),
                       state("o-2", instrument=a)], 2)
    await asyncio.gather(session.submit(placed), session.submit(filled))  # one statement
    rows = {r["order_id"]: r for r in await db.fetch(
        "SELECT order_id, status, filled_quantity, last_seq, xmin::text AS tx FROM orders WHERE instrument = $1", a)}
    assert (rows["o-1"]["status"], rows["o-1"]["filled_quantity"], rows["o-1"]["last_seq"]) == ("filled", 5, 2)
    assert rows["o-1"]["tx"] == rows["o-2"]["tx"]


async def test_a_failing_batch_fails_every_batch_committed_with_it(session, db, symbols):
    a, b, _ = symbols
    assert await session.lock(a, lambda: None)
    assert await session.lock(b, lambda: None)
    await session.submit(batch(a, [1]))
    results = await asyncio.gather(session.submit(batch(a, [1])),  # seq 1 again: the primary key refuses it
                                   session.submit(batch(b, [1])), return_exceptions=True)
    assert all(isinstance(r, asyncpg.UniqueViolationError) for r in results), results
    assert await db.fetchval("SELECT count(*) FROM events WHERE instrument = $1", b) == 0  # nothing of it written
    await session.submit(batch(b, [1]))  # the session itself is still usable
    assert await db.fetchval("SELECT count(*) FROM events WHERE instrument = $1", b) == 1


async def test_a_failed_commit_also_fails_the_instruments_later_batches_but_not_the_others(session, db, symbols):
    a, b, _ = symbols
    assert await session.lock(a, lambda: None)
    assert await session.lock(b, lambda: None)
    await session.submit(batch(a, [1]))
    dup = batch(a, [1])  # refused by the primary key
    first = session.submit(dup)
    for _ in range(100):  # until its commit is on the wire
        if dup.sealed:
            break
        await asyncio.sleep(0)
    assert dup.sealed
    after = session.submit(batch(a, [2]))  # built on the failed one: must not be written without it
    other = session.submit(batch(b, [1]))
    results = await asyncio.gather(first, after, other, return_exceptions=True)
    assert isinstance(results[0], asyncpg.UniqueViolationError) and isinstance(results[1], asyncpg.UniqueViolationError)
    assert results[2] is None
    assert [r["seq"] for r in await db.fetch("SELECT seq FROM events WHERE instrument = $1", a)] == [1]
    assert await db.fetchval("SELECT count(*) FROM events WHERE instrument = $1", b) == 1


async def test_a_lost_session_tells_every_holder_and_writes_nothing_more(session, db, symbols):
    a, b, _ = symbols
    lost = []
    assert await session.lock(a, lambda: lost.append(a))
    assert await session.lock(b, lambda: lost.append(b))
    pid = session.conn.get_server_pid()
    await db.fetchval("SELECT pg_terminate_backend($1)", pid)
    for _ in range(100):
        if len(lost) == 2:
            break
        await asyncio.sleep(0.02)
    assert sorted(lost) == sorted([a, b])
    assert not session.holds(a) and not session.holds(b)
    with pytest.raises(LockLost):
        await session.submit(batch(a, [1]))
    assert await db.fetchval("SELECT count(*) FROM events WHERE instrument = $1", a) == 0
    # Recovery: a new session takes the lock again and writes.
    assert await session.lock(a, lambda: None)
    assert session.conn.get_server_pid() != pid
    await session.submit(batch(a, [1]))
    assert await db.fetchval("SELECT count(*) FROM events WHERE instrument = $1", a) == 1


async def test_a_commit_that_waits_is_logged_with_what_it_held(db, symbols, caplog):
    a = symbols[0]
    session = LockSession(DSN, "ls-slow", slow_commit_s=0.2)
    session.start()
    try:
        assert await session.lock(a, lambda: None)
        await session.submit(batch(a, [1]))  # a quick commit: nothing logged
        blocker = await asyncpg.connect(DSN)
        try:
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute("LOCK TABLE events IN EXCLUSIVE MODE")  # inserts wait for it
            with caplog.at_level(logging.WARNING, logger="command.lock_session"):
                pending = asyncio.ensure_future(session.submit(batch(a, [2])))
                await asyncio.sleep(0.4)
                assert not pending.done()  # not acknowledged before its commit
                await tx.rollback()
                await pending
        finally:
            await blocker.close()
        slow = [r.getMessage() for r in caplog.records if r.name == "command.lock_session"]
        assert len(slow) == 1 and slow[0].startswith("slow commit: ") and f"(events 1, instruments {a})" in slow[0], slow
        took = float(slow[0].split()[2])
        assert took >= 0.35
        assert await db.fetchval("SELECT max(seq) FROM events WHERE instrument = $1", a) == 2
    finally:
        await session.close()
