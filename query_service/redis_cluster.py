"""One Redis or a Redis Cluster behind the same views (issue 14).

EXCHANGE_REDIS_URL chooses: "redis://host:port/0" is one Redis (the default);
"redis+cluster://host:port" is a Redis Cluster reached through any of its nodes (redis-py's
RedisCluster discovers the others and the slot map). Every key of the views carries its
instrument as hash tag (redis_keys.py), so what must be atomic (the projector's WATCH/MULTI
batch, the retention scripts, the book read in one MULTI) stays within one slot; reads that
span instruments (a client's orders, fills, positions) are non-transactional pipelines, which
redis-py's cluster client splits per node.
"""

from __future__ import annotations

import contextlib
from typing import Any, AsyncIterator

import redis.asyncio as aioredis
from hiredis import pack_command as _pack
from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NOT_ENOUGH_DATA
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import AskError, ClusterDownError, MovedError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError

from query_service.settings import REDIS_CLUSTER_SCHEME as CLUSTER_SCHEME


def is_cluster_url(url: str) -> bool:
    return url.startswith(CLUSTER_SCHEME)


def connect(url: str, **kwargs: Any):
    """A redis.asyncio client for url: Redis, or RedisCluster for a redis+cluster:// url."""
    if is_cluster_url(url):
        rest = url[len(CLUSTER_SCHEME):].split("/", 1)[0]  # a cluster has database 0 only
        kwargs.pop("single_connection_client", None)
        return RedisCluster.from_url("redis://" + rest, **kwargs)
    return aioredis.Redis.from_url(url, **kwargs)


def is_cluster(redis) -> bool:
    return isinstance(redis, RedisCluster)


# Errors after which a cluster client must relearn the slot map before the next try.
TOPOLOGY_ERRORS = (MovedError, AskError, ClusterDownError, TryAgainError)


@contextlib.asynccontextmanager
async def key_connection(redis, key: str) -> AsyncIterator[Any]:
    """A raw connection to the server that holds `key`, for a hand-written pipeline (store.WatchedTx,
    atomic_read). The connection goes back to its pool afterwards, unless the caller disconnected it."""
    if is_cluster(redis):
        if redis._initialize:  # the slot map is learnt on first use (in this event loop)
            await redis.initialize()
        node = redis.get_node_from_key(key)
        conn = node.acquire_connection()
        try:
            yield conn
        except TOPOLOGY_ERRORS:
            # A slot moved (resharding, failover): relearn the map; the caller retries.
            with contextlib.suppress(Exception):  # the retry reports what is still wrong
                await redis.nodes_manager.initialize()
            raise
        finally:
            node.release(conn)
        return
    pool = redis.connection_pool
    conn = await pool.get_connection()
    try:
        yield conn
    finally:
        await pool.release(conn)


def resp_encode(cmds: list[tuple]) -> bytes:
    """Commands -> one RESP request (args: bytes, str, int or float). hiredis packs each command
    in C: a MULTI of a busy batch has hundreds of arguments, and the Python packer this replaced
    (four list appends per argument) was the projector's largest single function (issue 19:
    ~11 -> ~6 us for a 45-argument MULTI, and 2,000+ appends per batch gone)."""
    try:
        return b"".join(map(_pack, cmds))
    except TypeError:  # an argument hiredis does not take (bool, Decimal): str() it, as before
        return b"".join(_pack(tuple(a if a.__class__ in _PACKS else str(a) for a in c)) for c in cmds)


_PACKS = (bytes, str, int, float)


async def read_replies(conn, n: int) -> list:
    """The next n replies of `conn`, straight from the hiredis reader: one await per socket read
    instead of one coroutine (redis-py's read_response) per reply, of which a MULTI of a busy
    batch has a hundred and more (+QUEUED each). Error replies come back as ResponseError
    objects, not raised (every command has a reply: the stream stays in step)."""
    parser = conn._parser
    reader = getattr(parser, "_reader", None)
    if reader is None or not parser._connected:  # not hiredis (or closed): redis-py's path
        read = conn._read_response_from_parser
        return [await read() for _ in range(n)]
    out: list = []
    gets = reader.gets
    while len(out) < n:
        r = gets()
        if r is _NOT_ENOUGH_DATA:
            await parser.read_from_socket()  # raises ConnectionError on a closed socket
            continue
        if isinstance(r, RedisConnectionError):  # what redis-py's parser raises, too
            raise r
        out.append(r)
    return out


async def atomic_read(redis, cmds: list[tuple]) -> list:
    """Read commands in one MULTI/EXEC on the server of their (common) slot: the replies belong
    to one instant (e.g. an instrument's levels and the seq they are at). Raw replies (bytes,
    lists). redis-py's cluster client runs each command of a transaction pipeline through a
    thread and a new event loop (redis-py 8.1), and its first use there binds connections to that
    loop: this path is the same on a single Redis and a cluster and costs one round trip."""
    async with key_connection(redis, cmds[0][1]) as conn:
        try:
            await conn.send_packed_command(resp_encode([("MULTI",), *cmds, ("EXEC",)]), check_health=False)
            replies = await read_replies(conn, len(cmds) + 2)
        except BaseException:
            await conn.disconnect()  # the reply stream may be out of step: never reuse it
            raise
    for r in replies:
        if isinstance(r, Exception):
            raise r
    res = replies[-1]
    if res is None:
        raise RuntimeError("EXEC without WATCH was aborted")
    for r in res:
        if isinstance(r, Exception):
            raise r
    return list(res)


async def get_many(redis, keys: list[str]) -> list:
    """GET of keys that may live in different slots (MGET needs one slot on a cluster)."""
    if not keys:
        return []
    if is_cluster(redis):
        return list(await redis.mget_nonatomic(keys))
    return list(await redis.mget(keys))


async def delete_prefix(redis, prefix: str) -> int:
    """Delete every key under prefix; atomically per slot (per instrument, given the hash tags),
    like FLUSHALL does for these views: a projector writing meanwhile sees all of an instrument's
    keys or none. Tests and tools only (KEYS/SCAN)."""
    script = """
local n = 0
for i = 1, #KEYS, 1000 do
    n = n + redis.call('DEL', unpack(KEYS, i, math.min(i + 999, #KEYS)))
end
return n
"""
    if not is_cluster(redis):
        wipe = """
local keys = redis.call('KEYS', ARGV[1] .. '*')
for i = 1, #keys, 1000 do
    redis.call('DEL', unpack(keys, i, math.min(i + 999, #keys)))
end
return #keys
"""
        return int(await redis.eval(wipe, 0, prefix))
    by_slot: dict[int, list[bytes]] = {}
    async for k in redis.scan_iter(match=prefix + "*", count=1000):
        by_slot.setdefault(redis.keyslot(k), []).append(k)
    n = 0
    for ks in by_slot.values():
        n += int(await redis.eval(script, len(ks), *ks))
    return n
