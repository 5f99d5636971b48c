"""Contract tests of the PostgreSQL journal (events = outbox, order rows, idempotency, snapshots)
against the real server."""

import asyncio
import os

import asyncpg
import msgspec
import pytest

from command_service.journal import Batch, JournalWriter
from contracts.enums import OrderStatus, OrderType, Side, TimeInForce
from contracts.messages import (
    OrderState,
    TradeExecuted,
    decode_event,
    encode_event,
)
from contracts.topics import JOURNAL_NOTIFY_CHANNEL
from tests.support.journal_rows import accepted, batch, state

DSN = os.environ["EXCHANGE_PG_DSN"]


@pytest.fixture
async def journal():
    pool = await asyncpg.create_pool(DSN, min_size=1, max_size=4)
    async with pool.acquire() as c:
        await c.execute("TRUNCATE events, orders, idempotency, snapshots")
    yield JournalWriter(pool)
    await pool.close()


async def test_append_then_read_in_seq_order_per_instrument(journal):
    await journal.append(batch("BTC-USD", [1, 2, 3]))
    await journal.append(batch("ETH-USD", [1, 2]))
    await journal.append(batch("BTC-USD", [4, 5]))
    rows = await journal.read("BTC-USD")
    assert [s for s, _ in rows] == [1, 2, 3, 4, 5]
    assert [decode_event(p).order_id for _, p in rows] == [f"BTC-USD-o{i}" for i in range(1, 6)]
    assert [s for s, _ in await journal.read("ETH-USD")] == [1, 2]
    assert [s for s, _ in await journal.read("BTC-USD", after_seq=3)] == [4, 5]
    assert await journal.last_seq("BTC-USD") == 5
    assert await journal.last_seq("SOL-USD") == 0


async def test_payload_round_trips_exactly(journal):
    t = TradeExecuted(instrument="BTC-USD", seq=1, ts=5, trade_id="BTC-USD:1", price=7015050, quantity=25000000,
                      taker_side=Side.SELL, maker_order_id="m", maker_client_id="a", taker_order_id="t",
                      taker_client_id="b", maker_remaining=0, taker_remaining=3)
    b = Batch("BTC-USD")
    b.events.append(t)
    await journal.append(b)
    [(seq, payload)] = await journal.read("BTC-USD")
    assert decode_event(payload) == t


async def test_payloads_and_order_rows_survive_any_text_exactly(journal):
    # The batch travels to PostgreSQL as JSON: quotes, backslashes, control characters and
    # non-ASCII must come back byte for byte, and a cost beyond 64 bits must stay exact.
    odd = 'zo\u00eb "q" \\ \t \u2603 \U0001f600'
    events = [
        accepted("BTC-USD", 1, "o-1", client=odd),
        TradeExecuted(instrument="BTC-USD", seq=2, ts=7, trade_id="BTC-USD:2", price=2**62, quantity=2**62,
                      taker_side=Side.BUY, maker_order_id="o-1", maker_client_id=odd, taker_order_id="o-2",
                      taker_client_id="b", maker_remaining=0, taker_remaining=0),
    ]
    b = Batch("BTC-USD")
    b.events.extend(events)
    big = OrderState(order_id="o-1", client_id=odd, instrument="BTC-USD", side=Side.SELL,
                     order_type=OrderType.STOP_LIMIT, price=2**62, quantity=2**62, filled_quantity=2**62,
                     status=OrderStatus.FILLED, tif=TimeInForce.IOC, post_only=False, created_ts=1,
                     updated_ts=2**62, reject_reason=None, stop_price=3, cost=2**124)
    b.add_orders([big], 2)
    await journal.append(b)
    rows = await journal.read("BTC-USD")
    assert [bytes(p) for _, p in rows] == [encode_event(e) for e in events]
    row = await journal.find_order("o-1")
    assert (row["client_id"], row["cost"], row["price"], row["stop_price"], row["order_type"], row["tif"],
            row["reject_reason"], row["updated_ts"], row["last_seq"]) == (
        odd, 2**124, 2**62, 3, OrderType.STOP_LIMIT.value, TimeInForce.IOC.value, None, 2**62, 2)


async def test_duplicate_seq_fails_the_whole_batch(journal):
    await journal.append(batch("BTC-USD", [1, 2]))
    dup = batch("BTC-USD", [3, 2], ids=["new-3", "new-2"])
    dup.idempotency.append(("c1", "k1", b"h", 201, b"{}"))
    with pytest.raises(asyncpg.UniqueViolationError):
        await journal.append(dup)
    # nothing of the failed batch is visible: no event 3, no order row, no idempotency row
    assert [s for s, _ in await journal.read("BTC-USD")] == [1, 2]
    assert await journal.find_order("new-3") is None
    assert await journal.find_idempotent("c1", "k1") is None


async def test_order_rows_keep_the_last_state(journal):
    b = Batch("BTC-USD")
    b.events.append(accepted("BTC-USD", 1, "o1"))
    b.add_orders([state("o1")], 1)
    await journal.append(b)
    b2 = Batch("BTC-USD")
    b2.events.append(accepted("BTC-USD", 2, "o2"))
    b2.add_orders([state("o1", filled=2, status=OrderStatus.PARTIALLY_FILLED, cost=200)], 2)
    b2.add_orders([state("o1", filled=5, status=OrderStatus.FILLED, cost=500)], 2)
    await journal.append(b2)
    row = await journal.find_order("o1")
    assert (row["filled_quantity"], row["status"], row["cost"], row["last_seq"]) == (5, "filled", 500, 2)


async def test_idempotency_row_is_written_with_the_batch(journal):
    b = batch("BTC-USD", [1])
    b.idempotency.append(("c1", "key-1", b"hash", 201, b'{"order":{}}'))
    await journal.append(b)
    row = await journal.find_idempotent("c1", "key-1")
    assert (bytes(row["request_hash"]), row["status_code"], bytes(row["response"])) == (b"hash", 201, b'{"order":{}}')
    assert await journal.find_idempotent("c2", "key-1") is None


async def test_commit_notifies_the_relay(journal):
    conn = await asyncpg.connect(DSN)
    got = asyncio.get_running_loop().create_future()
    await conn.add_listener(JOURNAL_NOTIFY_CHANNEL, lambda *args: got.done() or got.set_result(args[3]))
    try:
        await journal.append(batch("SOL-USD", [1]))
        assert await asyncio.wait_for(got, 5) == "SOL-USD"
    finally:
        await conn.close()


async def test_latest_snapshot(journal):
    assert await journal.latest_snapshot("BTC-USD") is None
    await journal.save_snapshot("BTC-USD", 10, b"ten")
    await journal.save_snapshot("BTC-USD", 20, b"twenty")
    await journal.save_snapshot("ETH-USD", 30, b"eth")
    assert await journal.latest_snapshot("BTC-USD") == (20, b"twenty")


async def test_client_order_ids_are_stored_and_a_cross_node_duplicate_never_fails_a_batch(journal):
    """Two nodes owning two instruments can both pass their checks of one client's simultaneous uses
    of one client order id: the second batch must still commit (other clients' orders are in it),
    and lookups by the id then take that client's newer order."""
    def with_coid(instrument, seq, oid, coid, created):
        b = Batch(instrument)
        b.events.append(accepted(instrument, seq, oid))
        s = msgspec.structs.replace(state(oid, instrument=instrument), client_order_id=coid, created_ts=created)
        b.add_orders([s, state(f"{oid}-other", instrument=instrument)], seq)
        return b

    await journal.append(with_coid("BTC-USD", 1, "n1-o", "dup", 1))
    await journal.append(with_coid("ETH-USD", 1, "n2-o", "dup", 2))  # before: UniqueViolationError
    assert await journal.find_order("n2-o-other") is not None
    assert (await journal.find_order("n1-o"))["client_order_id"] == "dup"
    assert await journal.client_order_id_taken("c1", "dup") and not await journal.client_order_id_taken("c2", "dup")
    assert [r["order_id"] for r in await journal.find_orders_named("dup", "c1")] == ["n2-o"]
    assert [r["order_id"] for r in await journal.find_orders_named("n1-o", "c1")] == ["n1-o"]
    assert await journal.find_orders_named("dup", "c2") == []


async def test_concurrent_lookups_are_answered_each_by_its_own_row(journal):
    """Concurrent lookups each get exactly their own answer - stored, absent, another client's,
    expired (deleted, then None) - and client order ids are per client."""
    b = batch("BTC-USD", [1])
    b.idempotency.extend([("c1", f"k{i}", b"h%d" % i, 201, b'{"n":%d}' % i) for i in range(0, 40, 2)])
    b.idempotency.append(("c2", "k1", b"other", 201, b"{}"))
    b.add_orders([msgspec.structs.replace(state("with-coid"), client_order_id="o1")], 1)
    await journal.append(b)
    async with journal.pool.acquire() as c:
        await c.execute("INSERT INTO idempotency (client_id, key, request_hash, status_code, response, created_at)"
                        " VALUES ('c1', 'old', 'h', 201, '{}', now() - interval '2 days')")
    rows = await asyncio.gather(*[journal.find_idempotent("c1", f"k{i}") for i in range(40)],
                                journal.find_idempotent("c1", "old"), journal.find_idempotent("c3", "k2"))
    for i, row in enumerate(rows[:40]):
        if i % 2:
            assert row is None, i  # c1 never used an odd key (c2's k1 is not c1's)
        else:
            assert (bytes(row["request_hash"]), bytes(row["response"])) == (b"h%d" % i, b'{"n":%d}' % i)
    assert rows[40] is None and rows[41] is None
    async with journal.pool.acquire() as c:
        assert await c.fetchval("SELECT count(*) FROM idempotency WHERE key = 'old'") == 0  # expired: deleted
    taken = await asyncio.gather(*[journal.client_order_id_taken(c, coid) for c in ("c1", "c2")
                                   for coid in ("o1", "nope")])
    assert taken == [True, False, False, False]
