"""Redis side of the projector: read the state a batch needs, turn a ViewDelta into
commands (pure), and the purge of one instrument's views before a rebuild from seq 1."""

from __future__ import annotations

import json
from dataclasses import dataclass

from sortedcontainers import SortedDict

from contracts.api import json_encoder
from contracts.instruments import InstrumentSpec
from contracts.messages import Event, TradeExecuted
from query_service.keys import Keys
from query_service.projection import (
    ProjectionState,
    ViewDelta,
    referenced_buckets,
    referenced_clients,
    referenced_orders,
)
from query_service.records import (
    RESOLUTIONS,
    Bucket,
    pack,
    unpack_last,
    unpack_order,
    unpack_position,
)
from query_service.render import fill_view, ticker_window, trade_view


@dataclass
class BookCache:
    """The projector's copy of an instrument's L2 levels, valid while Redis's last_seq
    equals `seq` (checked under WATCH before every batch)."""

    seq: int
    bids: SortedDict
    asks: SortedDict


def parse_levels(rows) -> SortedDict:
    """ZRANGE ... WITHSCORES rows of 'ticks:lots' members -> SortedDict ticks -> lots."""
    out = SortedDict()
    for member, _score in rows:
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


@dataclass
class StateRead:
    state: ProjectionState
    redis_seq_missing: bool
    window_minutes: list  # ticker window buckets (before this batch's changes)
    window_hours: list
    window_now_s: int


async def read_state(redis, keys: Keys, instrument: str, events: list[Event], cache: BookCache | None) -> StateRead:
    """Everything project() needs for `events`, in one round trip (plus one more when the
    book cache is stale). Call it after WATCH on the seq key: the values read here are
    then either still current at EXEC or the EXEC fails."""
    order_ids = sorted(referenced_orders(events))
    clients = sorted(referenced_clients(events))
    buckets = sorted(referenced_buckets(events))
    has_trades = any(isinstance(e, TradeExecuted) for e in events)
    now_s = max(e.ts for e in events) // 1_000_000_000 if events else 0
    w0, h1 = ticker_window(now_s)

    p = redis.pipeline(transaction=False)
    p.get(keys.seq(instrument))
    p.get(keys.taking(instrument))
    p.get(keys.last(instrument))
    if order_ids:
        p.hmget(keys.orders, order_ids)
    for c in clients:
        p.hget(keys.pos(c), instrument)
    for res, start in buckets:
        p.zrangebyscore(keys.candles(instrument, res), start, start)
    if has_trades:
        p.zrangebyscore(keys.candles(instrument, 60), w0, h1 - 1)
        p.zrangebyscore(keys.candles(instrument, 3600), h1, "+inf")
    res = await p.execute()
    it = iter(res)
    raw_seq, raw_taking, raw_last = next(it), next(it), next(it)
    seq = _int(raw_seq)
    orders = {}
    if order_ids:
        for oid, raw in zip(order_ids, next(it)):
            if raw is not None:
                orders[oid] = unpack_order(raw)
    positions = {}
    for c in clients:
        raw = next(it)
        if raw is not None:
            positions[c] = unpack_position(raw)
    bucket_map = {}
    for key in buckets:
        rows = next(it)
        if rows:
            bucket_map[key] = Bucket.unpack(rows[0])
    win_m, win_h = [], []
    if has_trades:
        win_m = [Bucket.unpack(r) for r in next(it)]
        win_h = [Bucket.unpack(r) for r in next(it)]
    taking = json.loads(raw_taking) if raw_taking else []

    if cache is not None and cache.seq == seq:
        bids, asks = cache.bids, cache.asks
    else:
        p = redis.pipeline(transaction=False)
        p.zrange(keys.bids(instrument), 0, -1, withscores=True)
        p.zrange(keys.asks(instrument), 0, -1, withscores=True)
        rb, ra = await p.execute()
        bids, asks = parse_levels(rb), parse_levels(ra)
    missing = [oid for oid in taking if oid not in orders]
    if missing:
        for oid, raw in zip(missing, await redis.hmget(keys.orders, missing)):
            if raw is not None:
                orders[oid] = unpack_order(raw)
    state = ProjectionState(
        instrument=instrument,
        last_seq=seq,
        bids=bids,
        asks=asks,
        taking=taking,
        orders=orders,
        positions=positions,
        buckets=bucket_map,
        last_trade=unpack_last(raw_last) if raw_last else None,
    )
    return StateRead(state, raw_seq is None, win_m, win_h, now_s)


async def purge_commands(redis, keys: Keys, instrument: str) -> list[tuple]:
    """Commands that remove every trace of `instrument` from the views (before a rebuild
    from seq 1 when its last_seq is gone but other data may remain)."""
    cmds: list[tuple] = [("DEL", *keys.instrument_keys(instrument))]
    clients = [c.decode() for c in await redis.smembers(keys.clients(instrument))]
    if not clients:
        return cmds
    p = redis.pipeline(transaction=False)
    for c in clients:
        p.zrange(keys.client_orders(c, "all", instrument), 0, -1)
        p.zrange(keys.client_fills(c, instrument), 0, -1)
    res = await p.execute()
    for n, c in enumerate(clients):
        order_members, fill_members = res[2 * n], res[2 * n + 1]
        cmds.append(("HDEL", keys.pos(c), instrument))
        for which in ("all", "open", "closed"):
            cmds.append(("DEL", keys.client_orders(c, which, instrument)))
            if order_members:
                cmds.append(("ZREM", keys.client_orders(c, which), *order_members))
        if order_members:
            cmds.append(("HDEL", keys.orders, *(m.split(b"|", 1)[1] for m in order_members)))
        cmds.append(("DEL", keys.client_fills(c, instrument)))
        if fill_members:
            cmds.append(("ZREM", keys.client_fills(c), *fill_members))
    return cmds


def fill_member(spec: InstrumentSpec, f) -> bytes:
    t = f.trade
    prefix = f"{t.ts:019d}|{t.trade_id}|{f.role[0]}|".encode()
    return prefix + json_encoder.encode(fill_view(spec, f))


def delta_commands(
    delta: ViewDelta, keys: Keys, spec: InstrumentSpec, recent_trades: int = 1000, fills_cap: int = 10000
) -> list[tuple]:
    """The Redis commands (for one MULTI/EXEC) that apply `delta`, ending with last_seq."""
    i = delta.instrument
    cmds: list[tuple] = []
    for (side, price), total in delta.levels.items():
        k = keys.side(i, side)
        cmds.append(("ZREMRANGEBYSCORE", k, price, price))
        if total > 0:
            cmds.append(("ZADD", k, price, f"{price}:{total}"))
    if delta.orders:
        flat = []
        for oid, o in delta.orders.items():
            flat += (oid, pack(o))
        cmds.append(("HSET", keys.orders, *flat))
    for client, member, is_open in delta.index_add:
        which = "open" if is_open else "closed"
        for k in (keys.client_orders(client, "all"), keys.client_orders(client, "all", i),
                  keys.client_orders(client, which), keys.client_orders(client, which, i)):
            cmds.append(("ZADD", k, 0, member))
    for client, member in delta.index_close:
        for inst in (None, i):
            cmds.append(("ZREM", keys.client_orders(client, "open", inst), member))
            cmds.append(("ZADD", keys.client_orders(client, "closed", inst), 0, member))
    for client, pos in delta.positions.items():
        cmds.append(("HSET", keys.pos(client), i, pack(pos)))
    if delta.trades:
        cmds.append(("LPUSH", keys.trades(i), *(json_encoder.encode(trade_view(spec, t)) for t in delta.trades)))
        cmds.append(("LTRIM", keys.trades(i), 0, recent_trades - 1))
    if delta.fills:
        by_key: dict[str, list] = {}
        for f in delta.fills:
            m = fill_member(spec, f)
            by_key.setdefault(keys.client_fills(f.client_id), []).append(m)
            by_key.setdefault(keys.client_fills(f.client_id, i), []).append(m)
        for k, members in by_key.items():
            flat = []
            for m in members:
                flat += (0, m)
            cmds.append(("ZADD", k, *flat))
            cmds.append(("ZREMRANGEBYRANK", k, 0, -(fills_cap + 1)))
    for (res, start), b in delta.buckets.items():
        k = keys.candles(i, res)
        cmds.append(("ZREMRANGEBYSCORE", k, start, start))
        cmds.append(("ZADD", k, start, b.pack()))
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

