"""What must hold after any fault or fuzz, checked against the journal (the truth):

- every acknowledged (201) order is in the orders table and has its event in the journal;
- the journal of each instrument is gap-free, replays into a book that passes validate(),
  and holds no trade id twice;
- each query replica's /market/orderbook equals the L2 of that replayed book at the same seq;
- /market/trades of each replica holds no trade_id twice and only trades of the journal.

The book is rebuilt with the same logic as tests/integration/test_command_faults.journal_book,
from one consistent read of the journal (REPEATABLE READ), so a writer committing meanwhile
cannot make the replay and the trade ids disagree.
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import asyncpg
import httpx
import msgspec

from contracts.instruments import load_instruments
from contracts.messages import OrderAccepted, OrderRejected, TradeExecuted, decode_event
from engine import OrderBook

INSTRUMENTS = load_instruments()
SYMBOLS = tuple(INSTRUMENTS.symbols)
MAX_LEVELS = 100  # the read API's maximum `levels`
_decode = msgspec.json.Decoder(float_hook=Decimal).decode


class JournalState:
    """One instrument's journal, replayed."""

    def __init__(self, instrument: str, book: OrderBook, seq: int, trade_ids: list[str], order_ids: set[str]):
        self.instrument = instrument
        self.book = book
        self.seq = seq
        self.trade_ids = trade_ids
        self.order_ids = order_ids  # orders the journal accepted or rejected
        self.table_open: dict[str, tuple[int, str]] = {}  # orders table: open ones -> (filled lots, status)

    def l2(self, levels: int = MAX_LEVELS) -> dict:
        """The book's top levels in the read API's units (exact decimals)."""
        spec = INSTRUMENTS.get(self.instrument)
        bids, asks = self.book.l2(levels)
        return {
            "bids": [(spec.ticks_to_price(p), spec.lots_to_quantity(q)) for p, q in bids],
            "asks": [(spec.ticks_to_price(p), spec.lots_to_quantity(q)) for p, q in asks],
        }


async def replay_journal(dsn: str, symbols=SYMBOLS) -> dict[str, JournalState]:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            states = {}
            for sym in symbols:
                rows = await conn.fetch("SELECT seq, payload FROM events WHERE instrument=$1 ORDER BY seq", sym)
                book = OrderBook(sym)
                trade_ids, order_ids = [], set()
                for i, r in enumerate(rows, 1):
                    assert r["seq"] == i, f"{sym}: journal gap at seq {i} (found {r['seq']})"
                    event = decode_event(r["payload"])
                    book.apply(event)
                    kind = type(event)
                    if kind is TradeExecuted:
                        trade_ids.append(event.trade_id)
                    elif kind is OrderAccepted or kind is OrderRejected:
                        order_ids.add(event.order_id)
                states[sym] = st = JournalState(sym, book, len(rows), trade_ids, order_ids)
                # Same snapshot as the journal: the orders table is written in the same transactions.
                st.table_open = {r["order_id"]: (r["filled_quantity"], r["status"]) for r in await conn.fetch(
                    "SELECT order_id, filled_quantity, status FROM orders WHERE instrument=$1"
                    " AND status IN ('open', 'partially_filled', 'pending')", sym)}
    finally:
        await conn.close()
    return states


def check_journal(states: dict[str, JournalState]) -> None:
    """Books valid; no trade id twice (within an instrument and across instruments); the orders
    table's open orders are exactly the replayed book's open orders, with the same fills."""
    seen: dict[str, str] = {}
    for sym, st in states.items():
        st.book.validate()
        replayed = {o.order_id: (o.filled_quantity, o.status.value) for o in st.book.open_orders()}
        if replayed != st.table_open:
            only_book = sorted(set(replayed) - set(st.table_open))[:3]
            only_table = sorted(set(st.table_open) - set(replayed))[:3]
            differ = [(k, replayed[k], st.table_open[k]) for k in replayed.keys() & st.table_open.keys()
                      if replayed[k] != st.table_open[k]][:3]
            raise AssertionError(f"{sym}: orders table disagrees with the journal at seq {st.seq}: open only in the "
                                 f"replayed book {only_book}, only in the table {only_table}, differing {differ}")
        for tid in st.trade_ids:
            assert tid not in seen, f"duplicate trade id {tid} in the journal ({seen[tid]} and {sym})"
            seen[tid] = sym


async def assert_acked_orders_present(dsn: str, acked) -> None:
    ids = list(acked)
    conn = await asyncpg.connect(dsn)
    try:
        found = {r["order_id"] for r in await conn.fetch("SELECT order_id FROM orders WHERE order_id = ANY($1)", ids)}
    finally:
        await conn.close()
    missing = sorted(set(ids) - found)
    assert not missing, f"{len(missing)} of {len(ids)} acknowledged orders are not in the orders table, e.g. {missing[:5]}"


async def read_view(client: httpx.AsyncClient, url: str, sym: str) -> dict:
    r = await client.get(f"{url}/market/orderbook", params={"instrument": sym, "levels": MAX_LEVELS}, timeout=5)
    assert r.status_code == 200, f"{url} /market/orderbook {sym}: {r.status_code} {r.text[:300]}"
    body = _decode(r.content)
    return {
        "seq": body["seq"],
        "bids": [(Decimal(lv["price"]), Decimal(lv["quantity"])) for lv in body["bids"]],
        "asks": [(Decimal(lv["price"]), Decimal(lv["quantity"])) for lv in body["asks"]],
    }


async def assert_views_equal_journal(dsn: str, query_urls, timeout: float = 30.0, symbols=SYMBOLS) -> dict:
    """Wait until every replica's order book view reaches the journal's seq, then require it to
    equal the replayed book's L2. Assumes writes have stopped (the system is settling)."""
    states = await replay_journal(dsn, symbols)
    check_journal(states)
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        for url in query_urls:
            for sym in symbols:
                want = states[sym]
                while True:
                    try:
                        view = await read_view(client, url, sym)
                        problem = None if view["seq"] == want.seq else f"view seq {view['seq']} != journal seq {want.seq}"
                    except (httpx.HTTPError, AssertionError) as exc:
                        view, problem = None, repr(exc)
                    if problem is None or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.2)
                assert problem is None, f"{url} {sym}: not settled after {timeout}s: {problem}"
                l2 = want.l2()
                assert view["bids"] == l2["bids"], f"{url} {sym} seq {want.seq}: bids {view['bids'][:5]} != journal {l2['bids'][:5]}"
                assert view["asks"] == l2["asks"], f"{url} {sym} seq {want.seq}: asks {view['asks'][:5]} != journal {l2['asks'][:5]}"
    return states


async def assert_trade_views_sound(query_urls, states: dict[str, JournalState], limit: int = 1000) -> None:
    """/market/trades (newest first, up to `limit`): no trade_id twice, each one in the journal."""
    async with httpx.AsyncClient() as client:
        for url in query_urls:
            for sym, st in states.items():
                r = await client.get(f"{url}/market/trades", params={"instrument": sym, "limit": limit}, timeout=5)
                assert r.status_code == 200, f"{url} /market/trades {sym}: {r.status_code} {r.text[:300]}"
                ids = [t["trade_id"] for t in r.json()["trades"]]
                dupes = sorted({i for i in ids if ids.count(i) > 1})
                assert not dupes, f"{url} {sym}: /market/trades repeats trade ids {dupes[:5]}"
                unknown = set(ids) - set(st.trade_ids)
                assert not unknown, f"{url} {sym}: /market/trades has trades the journal lacks: {sorted(unknown)[:5]}"
                want = st.trade_ids[::-1][:limit]  # newest first
                assert ids == want, (f"{url} {sym}: /market/trades ({len(ids)}) is not the journal's newest "
                                     f"{len(want)} trades; first difference at index "
                                     f"{next((i for i, (a, b) in enumerate(zip(ids, want)) if a != b), min(len(ids), len(want)))}")


async def assert_exchange_sound(dsn: str, query_urls, acked=(), timeout: float = 30.0, symbols=SYMBOLS) -> dict:
    """All of the above; returns the replayed journal states."""
    if acked:
        await assert_acked_orders_present(dsn, acked)
    states = await assert_views_equal_journal(dsn, query_urls, timeout, symbols)
    if acked:
        journaled = set().union(*(st.order_ids for st in states.values()))
        missing = sorted(set(acked) - journaled)
        assert not missing, f"{len(missing)} acknowledged orders have no event in the journal, e.g. {missing[:5]}"
    await assert_trade_views_sound(query_urls, states)
    return states
