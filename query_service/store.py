"""Redis side of the projector: read the state a batch needs, turn a ViewDelta into
commands (pure), and the purge of one instrument's views before a rebuild from seq 1."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from redis.exceptions import ResponseError
from sortedcontainers import SortedDict

from contracts.api import json_encoder
from contracts.instruments import InstrumentSpec
from contracts.messages import Event, TradeExecuted
from query_service.projection import (
    GapError,
    ProjectionState,
    ViewDelta,
    referenced_buckets,
    referenced_clients,
    referenced_orders,
)
from query_service.records import (
    RESOLUTIONS,
    Bucket,
    LastTrade,
    pack,
    unpack_last,
    unpack_order,
    unpack_position,
)
from query_service.redis_cluster import key_connection, read_replies, resp_encode
from query_service.redis_keys import Keys
from query_service.render import fill_view, ticker_window, trade_view, trade_views
from query_service.retention import closed_entry

# Bounds of StateCache's records: positions of the clients that traded lately, buckets of the
# last few minutes (an entry is read again from Redis when it was dropped).
CACHE_POSITIONS_MAX = 10_000
CACHE_BUCKETS_MAX = 256


@dataclass
class StateCache:
    """The projector's copy of what its batches read of an instrument's views besides order
    records: L2 levels, taking list, last trade, the positions and candle buckets it has read or
    written (None = known absent), and the ticker window after the last batch with trades
    (w0, h1, minute buckets, hour buckets). Valid while Redis's last_seq equals `seq` (checked
    under WATCH before every batch): only the projector's batches change these keys, and each
    batch moves last_seq (the retention sweeper removes closed orders and old fills only).
    With it a batch reads its order records, new clients' positions and new buckets, and
    nothing else (issue 19; OrderFlow events in batches of 20 against a real Redis): Redis
    commands 3.03 -> 2.47 per event, projector instructions 194k -> 185k per event (callgrind).
    Once a day of candles exists the saving grows: the 24 h window alone was up to 84 buckets
    read and parsed per batch with trades."""

    seq: int
    bids: SortedDict
    asks: SortedDict
    taking: list
    last_trade: LastTrade | None = None
    positions: dict = field(default_factory=dict)
    buckets: dict = field(default_factory=dict)
    window: tuple | None = None

    def advance(self, state: ProjectionState, delta: ViewDelta, window: tuple | None) -> None:
        """Move to the views after a committed batch (state, delta: project()'s result)."""
        self.seq = state.last_seq
        self.bids, self.asks = state.bids, state.asks
        self.taking = list(state.taking)
        self.last_trade = state.last_trade
        if len(self.positions) > CACHE_POSITIONS_MAX:
            self.positions = {}
        self.positions.update(delta.positions)
        if len(self.buckets) > CACHE_BUCKETS_MAX:
            self.buckets = {}
        self.buckets.update(delta.buckets)
        if window is not None:
            self.window = window


def parse_levels(rows) -> SortedDict:
    """Raw ZRANGE ... WITHSCORES reply of 'ticks:lots' members -> SortedDict ticks -> lots.
    (RESP3, redis-py's default, gives [[member, score], ...]; RESP2 a flat list.)"""
    out = SortedDict()
    members = [r[0] for r in rows] if rows and isinstance(rows[0], list) else rows[::2]
    for member in members:
        ticks, _, lots = member.partition(b":")
        out[int(ticks)] = int(lots)
    return out


def level_pairs(rows) -> list[tuple[int, int]]:
    out = []
    for member in rows:
        ticks, _, lots = member.partition(b":")
        out.append((int(ticks), int(lots)))
    return out


def _int(raw) -> int:
    return int(raw) if raw is not None else 0


class WatchedTx:
    """One pooled connection used for a compare-and-set on a key: WATCH and all reads go
    in ONE round trip, MULTI ... EXEC in a second. (redis-py's pipeline would need a
    round trip for WATCH alone and parses each reply with a timeout of its own.)
    Replies are raw (no redis-py response callbacks). On a Redis Cluster the connection
    goes to the node of the key's slot: every key a batch touches has the instrument's
    hash tag (redis_keys.py), so the whole transaction is on that node."""

    def __init__(self, redis, key: str):
        self.redis = redis
        self.key = key
        self.conn = None
        self.done = False
        self._cm = None

    async def __aenter__(self) -> "WatchedTx":
        self._cm = key_connection(self.redis, self.key)
        self.conn = await self._cm.__aenter__()
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None and not issubclass(exc_type, GapError):
                # The reply stream may be out of step: never reuse this connection.
                await self.conn.disconnect()
            elif not self.done:
                await self._run([("UNWATCH",)])
        finally:
            await self._cm.__aexit__(exc_type, exc, tb)

    async def _run(self, cmds: list[tuple]) -> list:
        conn = self.conn
        await conn.send_packed_command(resp_encode(cmds), check_health=False)
        # Replies straight from the parser: Connection.read_response wraps every reply in
        # timeout and error bookkeeping, ~5 us each, and a MULTI of a busy batch has a
        # hundred and more replies (+QUEUED each). A connection error still raises here,
        # and __aexit__ then drops the connection.
        out = await read_replies(conn, len(cmds))
        for r in out:
            if isinstance(r, ResponseError):  # every command was read: the stream is in step
                raise r
        return out

    async def watch_and_read(self, cmds: list[tuple]) -> list:
        return (await self._run([("WATCH", self.key), *cmds]))[1:]

    async def read(self, cmds: list[tuple]) -> list:
        return await self._run(cmds)

    async def commit(self, cmds: list[tuple]) -> bool:
        """MULTI cmds EXEC: False when the watched key changed (nothing was applied)."""
        res = await self._run([("MULTI",), *cmds, ("EXEC",)])
        self.done = True
        if res[-1] is None:
            return False
        # EXEC answers each command; one that failed (a key of the wrong type) is not rolled
        # back by Redis, but it must not pass as applied.
        for r in res[-1]:
            if isinstance(r, ResponseError):
                raise r
        return True


@dataclass
class StateRead:
    state: ProjectionState
    redis_seq_missing: bool
    window_minutes: list  # ticker window buckets (before this batch's changes)
    window_hours: list
    window_now_s: int
    known: StateCache  # what is known of the views at state.last_seq (the cache, or built from this read)


async def read_state(tx: WatchedTx, keys: Keys, instrument: str, events: list[Event], cache: StateCache | None) -> StateRead:
    """WATCH the seq key and read everything project() needs for `events` in one round
    trip (plus one more when the cache turns out stale or a taking order was not read).
    Under the WATCH the values read are either still current at EXEC or EXEC fails."""
    order_ids = referenced_orders(events)
    clients = sorted(referenced_clients(events))
    buckets = sorted(referenced_buckets(events))
    has_trades = any(isinstance(e, TradeExecuted) for e in events)
    now_s = max(e.ts for e in events) // 1_000_000_000 if events else 0
    w0, h1 = ticker_window(now_s)
    if cache is not None:
        return await _read_with_cache(tx, keys, instrument, events, cache, order_ids, clients, buckets, has_trades,
                                      now_s, w0, h1)
    order_list = sorted(order_ids)
    cmds: list[tuple] = [("GET", keys.seq(instrument)), ("GET", keys.taking(instrument)), ("GET", keys.last(instrument))]
    if order_list:
        cmds.append(("HMGET", keys.orders(instrument), *order_list))
    for c in clients:
        cmds.append(("HGET", keys.pos(instrument), c))
    for res, start in buckets:
        cmds.append(("ZRANGEBYSCORE", keys.candles(instrument, res), start, start))
    if has_trades:
        cmds.append(("ZRANGEBYSCORE", keys.candles(instrument, 60), w0, h1 - 1))
        cmds.append(("ZRANGEBYSCORE", keys.candles(instrument, 3600), h1, "+inf"))
    cmds.append(("ZRANGE", keys.bids(instrument), 0, -1, "WITHSCORES"))
    cmds.append(("ZRANGE", keys.asks(instrument), 0, -1, "WITHSCORES"))
    it = iter(await tx.watch_and_read(cmds))
    raw_seq, raw_taking, raw_last = next(it), next(it), next(it)
    seq = _int(raw_seq)
    orders = {}
    if order_list:
        for oid, raw in zip(order_list, next(it)):
            if raw is not None:
                orders[oid] = unpack_order(raw)
    known_pos: dict = {}
    for c in clients:
        raw = next(it)
        known_pos[c] = unpack_position(raw) if raw is not None else None
    known_buckets: dict = {}
    for key in buckets:
        rows = next(it)
        known_buckets[key] = Bucket.unpack(rows[0]) if rows else None
    win_m, win_h = [], []
    window = None
    if has_trades:
        win_m = [Bucket.unpack(r) for r in next(it)]
        win_h = [Bucket.unpack(r) for r in next(it)]
        window = (w0, h1, win_m, win_h)
    bids, asks = parse_levels(next(it)), parse_levels(next(it))
    taking = json.loads(raw_taking) if raw_taking else []
    await _read_taking(tx, keys, instrument, taking, orders, order_ids)
    last = unpack_last(raw_last) if raw_last else None
    state = ProjectionState(
        instrument=instrument,
        last_seq=seq,
        bids=bids,
        asks=asks,
        taking=taking,
        orders=orders,
        positions={c: p for c, p in known_pos.items() if p is not None},
        buckets={k: b for k, b in known_buckets.items() if b is not None},
        last_trade=last,
    )
    known = StateCache(seq, bids, asks, list(taking), last, known_pos, known_buckets, window)
    return StateRead(state, raw_seq is None, win_m, win_h, now_s, known)


async def _read_taking(tx: WatchedTx, keys: Keys, instrument: str, taking: list, orders: dict, asked) -> None:
    """Read the records of taking orders that were not asked for yet (project() settles them)."""
    missing = [oid for oid in taking if oid not in orders and oid not in asked]
    if missing:
        (raws,) = await tx.read([("HMGET", keys.orders(instrument), *missing)])
        for oid, raw in zip(missing, raws):
            if raw is not None:
                orders[oid] = unpack_order(raw)


async def _read_with_cache(tx: WatchedTx, keys: Keys, instrument: str, events: list[Event], cache: StateCache,
                           order_ids: set, clients: list, buckets: list, has_trades: bool, now_s: int, w0: int,
                           h1: int) -> StateRead:
    # The taking orders' records are asked for with the batch's own (the cache knows the list).
    order_list = sorted(order_ids.union(cache.taking))
    pos_new = [c for c in clients if c not in cache.positions]
    buckets_new = [k for k in buckets if k not in cache.buckets]
    window = cache.window
    if has_trades and (window is None or window[1] != h1 or w0 < window[0]):
        window = None  # the hour boundary moved (or nothing cached): read the window again
    cmds: list[tuple] = [("GET", keys.seq(instrument))]
    if order_list:
        cmds.append(("HMGET", keys.orders(instrument), *order_list))
    for c in pos_new:
        cmds.append(("HGET", keys.pos(instrument), c))
    for res, start in buckets_new:
        cmds.append(("ZRANGEBYSCORE", keys.candles(instrument, res), start, start))
    if has_trades and window is None:
        cmds.append(("ZRANGEBYSCORE", keys.candles(instrument, 60), w0, h1 - 1))
        cmds.append(("ZRANGEBYSCORE", keys.candles(instrument, 3600), h1, "+inf"))
    it = iter(await tx.watch_and_read(cmds))
    raw_seq = next(it)
    seq = _int(raw_seq)
    if raw_seq is None or seq != cache.seq:
        # Someone else moved the views (another projector during a rebalance, a Redis that lost
        # them): the cache is stale, read everything (the WATCH stays on this connection).
        return await read_state(tx, keys, instrument, events, None)
    orders = {}
    if order_list:
        for oid, raw in zip(order_list, next(it)):
            if raw is not None:
                orders[oid] = unpack_order(raw)
    for c in pos_new:
        raw = next(it)
        cache.positions[c] = unpack_position(raw) if raw is not None else None
    for key in buckets_new:
        rows = next(it)
        cache.buckets[key] = Bucket.unpack(rows[0]) if rows else None
    win_m: list = []
    win_h: list = []
    if has_trades:
        if window is None:
            win_m = [Bucket.unpack(r) for r in next(it)]
            win_h = [Bucket.unpack(r) for r in next(it)]
        else:
            # the same hour boundary, the window's start moved on: drop the minutes before it
            win_m = [b for b in window[2] if b.start >= w0]
            win_h = window[3]
        cache.window = (w0, h1, win_m, win_h)
    positions = {}
    bucket_map = {}
    for c in clients:
        p = cache.positions[c]
        if p is not None:
            positions[c] = p
    for key in buckets:
        b = cache.buckets[key]
        if b is not None:
            bucket_map[key] = b
    state = ProjectionState(
        instrument=instrument,
        last_seq=seq,
        bids=cache.bids,
        asks=cache.asks,
        taking=list(cache.taking),
        orders=orders,
        positions=positions,
        buckets=bucket_map,
        last_trade=cache.last_trade,
    )
    return StateRead(state, False, win_m, win_h, now_s, cache)


async def purge_commands(tx: WatchedTx, keys: Keys, instrument: str) -> list[tuple]:
    """Commands that remove every trace of `instrument` from the views (before a rebuild
    from seq 1 when its last_seq is gone but other data may remain). Every key of the
    instrument is its own (redis_keys.py): its keys plus its clients' per-instrument ones."""
    cmds: list[tuple] = [("DEL", *keys.instrument_keys(instrument))]
    (members,) = await tx.read([("SMEMBERS", keys.clients(instrument))])
    for c in sorted(m.decode() for m in members):
        cmds.append(("DEL", *(keys.client_orders(c, w, instrument) for w in ("all", "open", "closed")),  # "all": old layout
                     keys.client_fills(c, instrument)))
    return cmds


def fill_member(spec: InstrumentSpec, f) -> bytes:
    t = f.trade
    prefix = f"{t.ts:019d}|{t.trade_id}|{f.role[0]}|".encode()
    return prefix + json_encoder.encode(fill_view(spec, f))


def fill_members(spec: InstrumentSpec, delta: ViewDelta) -> list[tuple[str, bytes]]:
    """(client_id, fill_member(spec, f)) of every fill of the delta, byte for byte. A trade's
    two fills share price, quantity, notional, time and seq: that part of the JSON is encoded
    once per trade, from its trade view (rendered for the recent-trades list anyway), and only
    the fill's own fields per fill (with metrics.observe_many: 219k -> 194k instructions per
    event of the projector's batch path, issue 19)."""
    out = []
    enc = json_encoder.encode
    by_trade = {id(t): tv for t, tv in zip(delta.trades, trade_views(spec, delta))}
    tail = b""
    last = None
    for f in delta.fills:
        t = f.trade
        if t is not last:
            last = t
            tv = by_trade.get(id(t)) or trade_view(spec, t)
            # fill_view's keys after "role", in its order
            tail = enc({"price": tv["price"], "quantity": tv["quantity"],
                        "notional": spec.notional_json(t.price * t.quantity), "timestamp": tv["timestamp"],
                        "seq": t.seq})
        head = enc({"trade_id": t.trade_id, "order_id": f.order_id, "client_id": f.client_id,
                    "instrument": t.instrument, "side": f.side, "role": f.role})
        prefix = f"{t.ts:019d}|{t.trade_id}|{f.role[0]}|".encode()
        out.append((f.client_id, b"".join((prefix, head[:-1], b",", tail[1:]))))
    return out


def delta_commands(
    delta: ViewDelta, keys: Keys, spec: InstrumentSpec, recent_trades: int = 1000, fills_cap: int = 10000
) -> list[tuple]:
    """The Redis commands (for one MULTI/EXEC) that apply `delta`, ending with last_seq.

    Commands are grouped per key (one ZREM/ZADD per side for all changed levels, one ZADD
    per index key, ...): their number grows with the keys a batch touches, not with its
    events. Replacing a level or bucket member removes its previous member, which the
    state read under WATCH knows exactly."""
    i = delta.instrument
    cmds: list[tuple] = []
    for side in ("buy", "sell"):
        rem, add = [], []
        for (s, price), total in delta.levels.items():
            if s != side:
                continue
            old = delta.old_levels.get((s, price), 0)
            if old == total:
                continue
            if old > 0:
                rem.append(f"{price}:{old}")
            if total > 0:
                add += (price, f"{price}:{total}")
        k = keys.side(i, side)
        if rem:
            cmds.append(("ZREM", k, *rem))
        if add:
            cmds.append(("ZADD", k, *add))
    if delta.orders:
        flat = []
        packed = delta.rendered["orders_packed"] = {}  # the feed sends the same bytes (feed.py)
        for oid, o in delta.orders.items():
            packed[oid] = rec = pack(o)
            flat += (oid, rec)
        cmds.append(("HSET", keys.orders(i), *flat))
    zadd: dict[str, list] = {}
    zrem: dict[str, list] = {}
    closed: list = []

    def closed_at(member: str) -> float:
        # Retention clock: the closing event's time (the order's updated_ts), so the views
        # stay a pure function of the journal whatever the batching.
        rec = delta.orders.get(member.split("|", 1)[1])
        return (rec.updated_ts if rec is not None else delta.last_ts) / 1e9

    for client, member, is_open in delta.index_add:
        # One index per order and state: a client's "all" listing is open + closed merged on read
        # (views.orders). A third index of every order cost a skiplist insert per order and ~160 B
        # per retained order (issue 19, docs/BENCHMARKS.md "seventh round").
        zadd.setdefault(keys.client_orders(client, "open" if is_open else "closed", i), []).extend((0, member))
        if not is_open:
            closed += (closed_at(member), closed_entry(client, member))
    for client, member in delta.index_close:
        zrem.setdefault(keys.client_orders(client, "open", i), []).append(member)
        zadd.setdefault(keys.client_orders(client, "closed", i), []).extend((0, member))
        closed += (closed_at(member), closed_entry(client, member))
    if closed:
        cmds.append(("ZADD", keys.closed(i), *closed))
    for k, members in zrem.items():
        cmds.append(("ZREM", k, *members))
    for k, flat in zadd.items():
        cmds.append(("ZADD", k, *flat))
    for client, pos in delta.positions.items():
        cmds.append(("HSET", keys.pos(i), client, pack(pos)))
    if delta.trades:
        trades_json = delta.rendered["trades_json"] = [json_encoder.encode(tv) for tv in trade_views(spec, delta)]
        cmds.append(("LPUSH", keys.trades(i), *trades_json))
        cmds.append(("LTRIM", keys.trades(i), 0, recent_trades - 1))
    if delta.fills:
        by_key: dict[str, list] = {}
        for client, m in fill_members(spec, delta):
            by_key.setdefault(keys.client_fills(client, i), []).extend((0, m))
        for k, flat in by_key.items():
            cmds.append(("ZADD", k, *flat))
            cmds.append(("ZREMRANGEBYRANK", k, 0, -(fills_cap + 1)))
    for res in RESOLUTIONS:
        rem, add = [], []
        for (r, start), b in delta.buckets.items():
            if r != res:
                continue
            old = delta.old_buckets.get((r, start))
            if old is not None:
                rem.append(old.pack())
            add += (start, b.pack())
        if rem:
            cmds.append(("ZREM", keys.candles(i, res), *rem))
        if add:
            cmds.append(("ZADD", keys.candles(i, res), *add))
    if delta.last_trade is not None:
        cmds.append(("SET", keys.last(i), pack(delta.last_trade)))
    if delta.taking_changed:
        cmds.append(("SET", keys.taking(i), json.dumps(delta.taking)))
    if delta.new_clients:
        cmds.append(("SADD", keys.clients(i), *sorted(delta.new_clients)))
    cmds.append(("SET", keys.ts(i), delta.last_ts))
    cmds.append(("SET", keys.seq(i), delta.seq))
    return cmds


def merge_window(read: StateRead, delta: ViewDelta, now_s: int) -> tuple[list, list]:
    """The ticker window after this batch: the buckets read before it, updated by it."""
    w0, h1 = ticker_window(now_s)
    minutes = {b.start: b for b in read.window_minutes}
    hours = {b.start: b for b in read.window_hours}
    for (res, start), b in delta.buckets.items():
        if res == 60 and w0 <= start < h1:
            minutes[start] = b
        elif res == 3600 and start >= h1:
            hours[start] = b
    return [minutes[k] for k in sorted(minutes)], [hours[k] for k in sorted(hours)]

