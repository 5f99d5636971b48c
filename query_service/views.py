"""Read queries over the Redis views. Each answers in one Redis round trip where it can;
responses are built as bytes (exact decimals as JSON numbers)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from contracts.api import ApiError, iso_ms, json_encoder
from contracts.enums import OrderType, TimeInForce
from contracts.instruments import Instruments, InstrumentSpec
from query_service.params import encode_cursor
from query_service.records import Bucket, unpack_last, unpack_order, unpack_position
from query_service.redis_cluster import atomic_read
from query_service.redis_keys import Keys
from query_service.render import (
    aggregate_buckets,
    candle_view,
    dec_json,
    fill_view,
    level_rows,
    order_view,
    position_view,
    ticker_view,
    ticker_window,
)
from query_service.store import level_pairs

MAX_LEVELS = 100


class NotReady(ApiError):
    """503: an instrument's views are not complete (an empty or restarted Redis, a rebuild
    under way: redis_keys `ready`). Issue 20: an empty Redis answered 200 with an empty book,
    then older books, while the views were rebuilt. Each read checks the marker in the round
    trip it already makes (pipeline or MGET), never in one of its own."""

    def __init__(self, instruments: list[str]):
        super().__init__(503, "unavailable", f"the views of {', '.join(instruments)} are being rebuilt; retry shortly",
                         headers={"Retry-After": "1"})


def check_ready(keys: Keys, symbols: list[str], flags: list) -> None:
    missing = [s for s, f in zip(symbols, flags) if f is None]
    if missing:
        raise NotReady(missing)


@dataclass
class _Book:
    seq: int
    ts: int
    bids: list  # [(ticks, lots)] best first, up to MAX_LEVELS
    asks: list
    checked: float  # monotonic time the seq was last confirmed against Redis
    bodies: dict  # levels -> encoded response


async def read_top(redis, keys: Keys, instrument: str, depth: int) -> tuple[int, int, list, list]:
    """(seq, ts, bids, asks) read atomically (MULTI): the levels belong to that seq.
    depth -1 = the whole book. NotReady while the views are rebuilt."""
    n = depth - 1 if depth > 0 else -1
    ready, seq, ts, bids, asks = await atomic_read(redis, [
        ("GET", keys.ready(instrument)),
        ("GET", keys.seq(instrument)),
        ("GET", keys.ts(instrument)),
        ("ZRANGE", keys.bids(instrument), 0, n, "REV"),
        ("ZRANGE", keys.asks(instrument), 0, n),
    ])
    if ready is None:
        raise NotReady([instrument])
    return int(seq or 0), int(ts or 0), level_pairs(bids), level_pairs(asks)


class BookReader:
    """GET /market/orderbook. The top 100 levels of each instrument are cached with their
    seq; one cache entry serves every `levels`. An entry is served without asking Redis
    while the NATS feed has not announced a newer seq and it was confirmed less than
    `max_age` ago (the feed can lose messages); otherwise one GET of last_seq confirms it,
    or one MULTI re-reads it. Concurrent misses share one read."""

    def __init__(self, redis, keys: Keys, instruments: Instruments, max_age: float):
        self.redis = redis
        self.keys = keys
        self.instruments = instruments
        self.max_age = max_age
        self.feed_seq: dict[str, int] = {}  # updated by the stream hub from the NATS feed
        self._cache: dict[str, _Book] = {}
        self._inflight: dict[str, asyncio.Future] = {}

    async def orderbook(self, spec: InstrumentSpec, levels: int) -> bytes:
        inst = spec.symbol
        book = self._cache.get(inst)
        if book is not None and book.seq >= self.feed_seq.get(inst, 0):
            now = time.monotonic()
            if now - book.checked < self.max_age:
                return self._body(spec, book, levels)
            raw, ready = await self.redis.mget(self.keys.seq(inst), self.keys.ready(inst))
            if ready is None:  # Redis lost the views (restart): neither the cache nor Redis is served
                self._cache.pop(inst, None)
                raise NotReady([inst])
            seq = int(raw or 0)
            if seq == book.seq:
                book.checked = now
                return self._body(spec, book, levels)
        book = await self._load(inst)
        return self._body(spec, book, levels)

    async def _load(self, inst: str) -> _Book:
        fut = self._inflight.get(inst)
        if fut is not None:
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._inflight[inst] = fut
        try:
            checked = time.monotonic()
            seq, ts, bids, asks = await read_top(self.redis, self.keys, inst, MAX_LEVELS)
            book = _Book(seq, ts, bids, asks, checked, {})
            cur = self._cache.get(inst)
            if cur is None or cur.seq <= seq:
                self._cache[inst] = book
            fut.set_result(book)
            return book
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        finally:
            del self._inflight[inst]

    @staticmethod
    def _body(spec: InstrumentSpec, book: _Book, levels: int) -> bytes:
        body = book.bodies.get(levels)
        if body is None:
            body = json_encoder.encode(
                {
                    "instrument": spec.symbol,
                    "bids": level_rows(spec, book.bids[:levels], True),
                    "asks": level_rows(spec, book.asks[:levels], True),
                    "seq": book.seq,
                    "timestamp": iso_ms(book.ts or time.time_ns()),
                }
            )
            book.bodies[levels] = body
        return body


async def trades(redis, keys: Keys, spec: InstrumentSpec, limit: int) -> bytes:
    p = redis.pipeline(transaction=False)
    p.get(keys.ready(spec.symbol))
    p.lrange(keys.trades(spec.symbol), 0, limit - 1)
    ready, items = await p.execute()
    check_ready(keys, [spec.symbol], [ready])
    head = json_encoder.encode(spec.symbol)
    return b'{"instrument":' + head + b',"trades":[' + b",".join(items) + b'],"count":' + str(len(items)).encode() + b"}"


async def analytics(
    redis, keys: Keys, spec: InstrumentSpec, start_ns: int, end_ns: int, interval_min: int
) -> bytes:
    start_s = start_ns // 1_000_000_000
    end_s = end_ns // 1_000_000_000
    p = redis.pipeline(transaction=False)
    p.get(keys.ready(spec.symbol))
    p.zrangebyscore(keys.candles(spec.symbol, 60), start_s - start_s % 60, end_s)
    ready, rows = await p.execute()
    check_ready(keys, [spec.symbol], [ready])
    aggregates, overall = aggregate_buckets(spec, [Bucket.unpack(r) for r in rows], interval_min * 60)
    return json_encoder.encode(
        {
            "instrument": spec.symbol,
            "start_time": iso_ms(start_ns),
            "end_time": iso_ms(end_ns),
            "interval_minutes": interval_min,
            "aggregates": aggregates,
            "overall_vwap": overall,
        }
    )


async def candles(redis, keys: Keys, spec: InstrumentSpec, interval: str, res: int, limit: int, end_ns: int | None) -> bytes:
    hi = "+inf" if end_ns is None else end_ns // 1_000_000_000
    p = redis.pipeline(transaction=False)
    p.get(keys.ready(spec.symbol))
    p.zrevrangebyscore(keys.candles(spec.symbol, res), hi, "-inf", start=0, num=limit)
    ready, rows = await p.execute()
    check_ready(keys, [spec.symbol], [ready])
    bs = [Bucket.unpack(r) for r in reversed(rows)]
    return json_encoder.encode(
        {"instrument": spec.symbol, "interval": interval, "candles": [candle_view(spec, b) for b in bs]}
    )


async def ticker(redis, keys: Keys, spec: InstrumentSpec, now_ns: int | None = None) -> dict:
    now_ns = time.time_ns() if now_ns is None else now_ns
    inst = spec.symbol
    w0, h1 = ticker_window(now_ns // 1_000_000_000)
    ready, seq, last, mins, hours, bid, ask = await atomic_read(redis, [
        ("GET", keys.ready(inst)),
        ("GET", keys.seq(inst)),
        ("GET", keys.last(inst)),
        ("ZRANGE", keys.candles(inst, 60), w0, h1 - 1, "BYSCORE"),
        ("ZRANGE", keys.candles(inst, 3600), h1, "+inf", "BYSCORE"),
        ("ZRANGE", keys.bids(inst), 0, 0, "REV"),
        ("ZRANGE", keys.asks(inst), 0, 0),
    ])
    check_ready(keys, [inst], [ready])
    bid = level_pairs(bid)
    ask = level_pairs(ask)
    return ticker_view(
        spec,
        inst,
        [Bucket.unpack(r) for r in mins],
        [Bucket.unpack(r) for r in hours],
        unpack_last(last) if last else None,
        bid[0][0] if bid else None,
        ask[0][0] if ask else None,
        int(seq or 0),
        now_ns,
    )


async def positions(redis, keys: Keys, instruments: Instruments, client_id: str) -> bytes:
    # One pipeline, not a MULTI: each instrument's readiness, position and mark are in its own slot
    # (redis_keys.py), and a position and the mark next to it need not be one instant.
    symbols = instruments.symbols
    p = redis.pipeline(transaction=False)
    for s in symbols:
        p.get(keys.ready(s))
        p.hget(keys.pos(s), client_id)
        p.get(keys.last(s))
    res = await p.execute()
    check_ready(keys, symbols, res[0::3])
    out = []
    for n, inst in sorted(enumerate(symbols), key=lambda e: e[1]):
        held, last = res[3 * n + 1], res[3 * n + 2]
        if held is None:
            continue
        mark = unpack_last(last).price if last else None
        out.append(position_view(instruments.get(inst), inst, unpack_position(held), mark))
    return json_encoder.encode({"client_id": client_id, "positions": out})


async def _newest(redis, keys: Keys, symbols: list[str], index_keys: list[str], cursor: bytes | None,
                  n: int) -> list[tuple[bytes, int]]:
    """Up to n members below the cursor of each key, merged newest first: (member, key index); the
    readiness of every instrument is checked in the same round trip. A client's orders or fills
    across instruments are one sorted set per instrument (every key has its instrument's hash tag);
    the newest n of the union are among the newest n of each."""
    hi = b"(" + cursor if cursor else b"+"
    p = redis.pipeline(transaction=False)
    for s in symbols:
        p.get(keys.ready(s))
    for k in index_keys:
        p.zrevrangebylex(k, hi, b"-", start=0, num=n)
    res = await p.execute()
    check_ready(keys, symbols, res[: len(symbols)])
    merged = [(m, i) for i, ms in enumerate(res[len(symbols):]) for m in ms]
    merged.sort(key=lambda e: e[0], reverse=True)
    return merged


def union_newest(per_key: list[tuple[bytes, int]], ways: int, n: int) -> list[tuple[bytes, int]]:
    """`per_key` (newest first) came from `ways` consecutive index keys per symbol: the newest n
    members of each symbol's union, once each (an order the projector moved from one index to the
    other between the two reads is in both), newest first, as (member, symbol index)."""
    by_symbol: dict[int, list[bytes]] = {}
    seen: set[bytes] = set()
    for m, k in per_key:
        i = k // ways
        kept = by_symbol.setdefault(i, [])
        if m not in seen and len(kept) < n:
            seen.add(m)
            kept.append(m)
    out = [(m, i) for i, ms in by_symbol.items() for m in ms]
    out.sort(key=lambda e: e[0], reverse=True)
    return out


async def orders(
    redis, keys: Keys, instruments: Instruments, client_id: str, status: str | None,
    spec: InstrumentSpec | None, limit: int, cursor: bytes | None,
    journal=None, horizon_ns: int | None = None,
) -> bytes:
    """A page of a client's orders, newest first. Redis holds every order created after the
    retention horizon (and open ones of any age); below the horizon, closed orders may have
    left Redis (retention.py), so the page is merged with PostgreSQL's orders there - one
    order, one position in the same (created_ts, order_id) order, one cursor format.
    Without an instrument the client's per-instrument indexes are merged; PostgreSQL is asked
    when any of them runs out or reaches below the horizon (its rows of every instrument then
    fill what Redis no longer has; rows Redis has are taken from Redis)."""
    symbols = [spec.symbol] if spec else instruments.symbols
    # Without a status a symbol's orders are its open and its closed index together (there is no
    # third index of both). Open before closed in the pipeline: a batch that closes an order moves
    # it from one to the other in one MULTI/EXEC, which can land between the two reads; read in
    # this order, the order is then seen twice (dropped below), never missed.
    which = (status,) if status else ("open", "closed")
    index_keys = [keys.client_orders(client_id, w, s) for s in symbols for w in which]
    per_key = await _newest(redis, keys, symbols, index_keys, cursor, limit + 1)
    if len(which) > 1:
        per_key = union_newest(per_key, len(which), limit + 1)
    entries: list[tuple[bytes, object]] = [(m, symbols[i]) for m, i in per_key]
    if journal is not None and horizon_ns is not None:
        counts = [0] * len(symbols)
        oldest: list[int | None] = [None] * len(symbols)
        for m, i in per_key:
            counts[i] += 1
            oldest[i] = int(m[:19])
        short = any(c <= limit or (o is not None and o < horizon_ns) for c, o in zip(counts, oldest))
    else:
        short = False
    if short:
        bound = None
        if cursor:
            ts, _, oid = cursor.partition(b"|")
            bound = (int(ts), oid.decode())
        rows = await journal.orders_before(client_id, status, spec.symbol if spec else None,
                                           horizon_ns, bound, limit + 1)
        have = {m for m, _ in entries}
        entries += [(m, r) for r in rows
                    if (m := r.index_member.encode()) not in have and r.instrument in instruments]
        entries.sort(key=lambda e: e[0], reverse=True)
    more = len(entries) > limit
    entries = entries[:limit]
    wanted: dict[str, list[bytes]] = {}
    for m, r in entries:
        if isinstance(r, str):
            wanted.setdefault(r, []).append(m.split(b"|", 1)[1])
    recs: dict[bytes, bytes | None] = {}
    if wanted:
        p = redis.pipeline(transaction=False)
        for inst, ids in wanted.items():
            p.hmget(keys.orders(inst), ids)
        for ids, raws in zip(wanted.values(), await p.execute()):
            recs.update(zip(ids, raws))
    out = []
    for m, r in entries:
        if isinstance(r, str):
            raw = recs.get(m.split(b"|", 1)[1])
            if raw is None:
                continue  # (purged between the two reads)
            r = unpack_order(raw)
        out.append(order_view(instruments.get(r.instrument), r, r.seq))
    return json_encoder.encode(
        {
            "client_id": client_id,
            "orders": out,
            "count": len(out),
            "next_cursor": encode_cursor(entries[-1][0]) if more and entries else None,
        }
    )


async def fills(
    redis, keys: Keys, client_id: str, spec: InstrumentSpec | None, limit: int, cursor: bytes | None,
    journal=None, instruments: Instruments | None = None,
) -> bytes:
    """A page of a client's fills, newest first. Redis holds the newest ones contiguously per
    instrument (the retention sweep and the per-client cap remove the oldest); once a page runs
    past an instrument's oldest in Redis, PostgreSQL's fills table continues it in the same order
    with the same cursor. Without an instrument the per-instrument sets are merged."""
    if spec is not None:
        symbols = [spec.symbol]
    elif instruments is not None:
        symbols = instruments.symbols
    else:
        raise ValueError("fills across instruments need the instrument table")
    per_key = await _newest(redis, keys, symbols, [keys.client_fills(client_id, s) for s in symbols],
                            cursor, limit + 1)
    entries: list[tuple[bytes, bytes]] = []
    counts = [0] * len(symbols)
    for m, i in per_key:
        counts[i] += 1
        # member = ts(19)|trade_id|role|<json>; the prefix up to the 3rd "|" is the cursor
        a = m.index(b"|")
        b = m.index(b"|", a + 1)
        c = m.index(b"|", b + 1)
        entries.append((m[:c], m[c + 1 :]))
    if journal is not None and instruments is not None and any(c <= limit for c in counts):
        bound = None
        if cursor:
            ts, trade_id, role = cursor.split(b"|", 2)
            bound = (int(ts), trade_id.decode(), role.decode())
        have = {e[0] for e in entries}
        for f in await journal.fills_before(client_id, spec.symbol if spec else None, bound, limit + 1):
            prefix = f.member_prefix
            f_spec = instruments.get(f.trade.instrument)
            if prefix not in have and f_spec is not None:  # (an instrument no longer configured: not served)
                entries.append((prefix, json_encoder.encode(fill_view(f_spec, f))))
        entries.sort(key=lambda e: e[0], reverse=True)
    more = len(entries) > limit
    entries = entries[:limit]
    nxt = json_encoder.encode(encode_cursor(entries[-1][0]) if more and entries else None)
    return (
        b'{"client_id":' + json_encoder.encode(client_id) + b',"fills":[' + b",".join(e[1] for e in entries)
        + b'],"count":' + str(len(entries)).encode() + b',"next_cursor":' + nxt + b"}"
    )


def instruments_body(instruments: Instruments) -> bytes:
    return json_encoder.encode(
        {
            "instruments": [
                {
                    "symbol": s.symbol,
                    "base": s.base,
                    "quote": s.quote,
                    "tick_size": dec_json(s.tick_size),
                    "lot_size": dec_json(s.lot_size),
                    "min_quantity": dec_json(s.min_quantity),
                    "max_quantity": dec_json(s.max_quantity),
                    "max_price": dec_json(s.max_price),
                    # pre-trade risk limits (issue 20); null = none
                    "max_order_notional": dec_json(s.max_order_notional) if s.max_order_notional else None,
                    "max_position": dec_json(s.max_position) if s.max_position else None,
                    # every instrument of this exchange trades continuously whenever its
                    # sequencer is up; "trading" is the only status today
                    "status": "trading",
                    "order_types": [t.value for t in OrderType],
                    "time_in_force": [t.value for t in TimeInForce],
                    "iceberg": True,
                    "post_only": True,
                }
                for s in instruments
            ]
        }
    )

