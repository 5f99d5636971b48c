"""The node's lock session: ONE PostgreSQL session that holds the advisory lock of every
instrument this node owns and carries every commit of their sequencers.

Exclusivity is unchanged: a batch is written only on the session that holds its instrument's
lock, checked under the same asyncio lock that serialises the connection's statements, so a
write can only succeed while that session holds the lock. If the session dies every lock it
held is gone at once: each holder is told (its sequencer stops accepting and recovers, taking
its lock again on a new session). A graceful handover releases one instrument's lock with
pg_advisory_unlock, after that instrument's last batch committed.

Why one session for all instruments (issue 19): a commit costs the whole system ~0.7 ms of
CPU whatever it carries (PostgreSQL's WAL flush and protocol, the command service's round trip,
the relay's wake-up; measured: 0.50 -> 0.36 commits per order cut PostgreSQL 220 -> 172 and the
command service 324 -> 272 us per order at 1,500 orders/s), and with a session per instrument
every instrument committed alone. Here the batches that wait while a commit is in flight, of
whichever instruments, go out together in the next one (group commit across instruments).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Callable

import asyncpg

from command_service.journal import Batch, NoResetConnection, write_batches

log = logging.getLogger("command.lock_session")

# A commit slower than this is logged (warning): under load commits take 2-10 ms.
SLOW_COMMIT_S = 0.5

LOCK_CLASS = 7420  # first key of pg_advisory_lock(int, int); second = hashtext(instrument)

APP_NAME_PREFIX = "exchange-command/"  # + node id: how pg_stat_activity names a lock session's node


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while n:
        n, r = divmod(n, 36)
        out = digits[r] + out
    return out.rjust(9, "0")


# This process's incarnation: its start time (ms, base 36, fixed width so names compare as numbers). A
# node id can be reused by a new process while the old one is frozen (SIGSTOP, a stalled VM) and still
# holds its sessions and locks: the incarnation tells the two apart, and the newer one wins
# (command_service/nodes.py).
INCARNATION = _base36(time.time_ns() // 1_000_000)


def session_name(node_id: str, incarnation: str = INCARNATION) -> str:
    """application_name of every session of this process: prefix + node id + '@' + incarnation
    (<= 17 + 36 + 1 + 9 = 63 bytes, PostgreSQL's limit; settings bound the node id)."""
    return f"{APP_NAME_PREFIX}{node_id}@{incarnation}"


def parse_session_name(name: str | None) -> tuple[str | None, str]:
    """(node id, incarnation) of a session name; (None, "") for a session that is not a node's."""
    if not name or not name.startswith(APP_NAME_PREFIX):
        return None, ""
    node, _, incarnation = name[len(APP_NAME_PREFIX):].rpartition("@")
    if not node:  # a node of a version before incarnations: no '@'
        return name[len(APP_NAME_PREFIX):], ""
    return node, incarnation


def lock_session_settings(node_id: str) -> dict[str, str]:
    """Session settings of the lock session (and of the node's pool, for its name).
    application_name says which node holds a lock (pg_locks -> pg_stat_activity:
    command_service/nodes.py). TCP keepalives on the server's side of the socket: a machine that
    vanished (power, cable) without closing its connections is noticed by PostgreSQL within
    ~5 + 3 x 2 s and its session ends, releasing its locks (the default, 2 h of idle before the
    first probe, would hold the instruments that long); tcp_user_timeout bounds unacknowledged
    writes the same way.
    plan_cache_mode: the group commit is one prepared statement (data-modifying CTEs over arrays
    and JSON) whose plan does not depend on its values; PostgreSQL otherwise plans it anew for
    every batch while it compares custom with generic plans (issue 19, with the relay's data
    connection: PostgreSQL CPU per acked order 170 -> 150 us over HTTP, 166 -> 150 us over WS).
    jit off: a generic plan's cost estimate grows with the tables, and past jit_above_cost every
    execution is JIT-compiled (11-20 ms of CPU each; the relay's fetch crossed it at minute 7 of
    the sustained run: PostgreSQL 118 -> 356 us per order). Short statements never gain from JIT."""
    return {
        "application_name": session_name(node_id)[:63],
        "plan_cache_mode": "force_generic_plan",
        "jit": "off",
        "tcp_keepalives_idle": "5",
        "tcp_keepalives_interval": "2",
        "tcp_keepalives_count": "3",
        "tcp_user_timeout": "10000",
    }


# Is there a session of a newer process with this node id (prefix + node id + '@', this incarnation)?
NEWER_INCARNATION_SQL = """
SELECT EXISTS (SELECT 1 FROM pg_stat_activity
               WHERE left(application_name, length($1)) = $1 AND substr(application_name, length($1) + 1) > $2)
"""


class LockLost(Exception):
    """The instrument's lock is not held by this node's session (any more)."""


def linger_s(arrivals_per_s: float, linger: float, pending: int, max_batch: int) -> float:
    """How long the lock session waits for more commands before a commit.

    Why wait at all: below saturation nearly every order was a commit of its own (1.4-1.75
    commands per commit at 500 orders/s per instrument), and a commit costs PostgreSQL ~290 us of
    CPU whatever it holds (measured: one-order commits ~190 us user + ~100 us system in the
    backend, of which the event row ~80 us user) plus the command service's round trip and the
    relay's wake-up. Rare orders never wait: the wait is taken only when at least half an order
    more is expected meanwhile. Nor does a batch that is already large wait: once the commands
    expected during the wait would add less than a quarter of those queued (or `max_batch`
    wait), the wait buys few commits and costs every queued command `linger` - at the closed-loop
    peak, where the in-flight window decides the throughput, 2 ms of a ~18 ms commit cycle.
    Latency cost: at most `linger` per command (the sequencers keep filling the queued batches
    while it waits)."""
    expected = arrivals_per_s * linger
    if linger <= 0 or pending >= max_batch or expected < 0.5 or pending >= 4 * expected:
        return 0.0
    return linger


class LockSession:
    def __init__(self, dsn: str, node_id: str = "", *, linger_s: float = 0.0, max_commands: int = 512,
                 slow_commit_s: float = SLOW_COMMIT_S):
        self.dsn = dsn
        self.slow_commit_s = slow_commit_s
        self.node_id = node_id
        self.linger_s = linger_s
        self.max_commands = max_commands  # no linger once this many commands wait (EXCHANGE_MAX_BATCH)
        self.conn: asyncpg.Connection | None = None
        # One statement at a time on the connection; the lock checks and the commits that rely
        # on them are ordered by it.
        self._use = asyncio.Lock()
        self._held: dict[str, Callable[[], None]] = {}  # instrument -> told when the lock is lost
        self._queue: list[tuple[Batch, asyncio.Future]] = []
        self._in_flight: list[tuple[Batch, asyncio.Future]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False
        self._arrivals_per_s = 0.0  # commands per second, moving average at each commit
        self._last_wake = 0.0  # when the last commit's linger was decided
        self._arrived = 0  # commands committed, ever
        self._arrived_at_wake = 0

    # ------------------------------------------------------------------ locks
    def holds(self, instrument: str) -> bool:
        conn = self.conn
        return instrument in self._held and conn is not None and not conn.is_closed()

    async def lock(self, instrument: str, on_lost: Callable[[], None]) -> bool:
        """Take the instrument's lock on this session (connecting if needed). False: another
        session holds it, or a newer process of this node exists (it must not own anything)."""
        async with self._use:
            conn = self.conn
            if conn is not None and not conn.is_closed():
                try:
                    await conn.fetchval("SELECT 1")
                except Exception:
                    self._drop(conn)
            conn = self.conn
            if conn is None or conn.is_closed():
                conn = await asyncpg.connect(self.dsn, connection_class=NoResetConnection,
                                             server_settings=lock_session_settings(self.node_id))
                conn.add_termination_listener(self._on_terminated)
                self.conn = conn
            if instrument in self._held:
                self._held[instrument] = on_lost
                return True
            got = await conn.fetchval("SELECT pg_try_advisory_lock($1, hashtext($2))", LOCK_CLASS, instrument)
            if got and self.node_id and await conn.fetchval(
                    NEWER_INCARNATION_SQL, APP_NAME_PREFIX + self.node_id + "@", INCARNATION):
                # A newer process runs under this node id: this one was replaced while it was frozen
                # (nodes.py terminated its sessions). Its sequencer loop retried the lock in the gap
                # before the new process took it: it must not own anything again.
                await conn.fetchval("SELECT pg_advisory_unlock($1, hashtext($2))", LOCK_CLASS, instrument)
                got = False
            if got:
                self._held[instrument] = on_lost
            return bool(got)

    async def unlock(self, instrument: str) -> None:
        """Release the instrument's lock (graceful handover): its queued batches are committed
        first, since they are ahead of this in the connection's order."""
        async with self._use:
            if self._held.pop(instrument, None) is None:
                return
            conn = self.conn
            if conn is None or conn.is_closed():
                return
            try:
                await conn.fetchval("SELECT pg_advisory_unlock($1, hashtext($2))", LOCK_CLASS, instrument)
            except Exception as exc:
                # Not known to be released: ending the session releases it for sure (and every
                # other lock of this node, whose sequencers then recover on a new session).
                log.warning("%s: unlock failed (%r): ending the lock session", instrument, exc)
                self._drop(conn)

    def _on_terminated(self, conn) -> None:
        if conn is self.conn:
            self._drop(conn, terminate=False)

    def _drop(self, conn: asyncpg.Connection, terminate: bool = True) -> None:
        """The session is gone (or is being thrown away): every lock it held with it."""
        if conn is self.conn:
            self.conn = None
        if terminate:
            with contextlib.suppress(Exception):  # it may be gone already
                conn.terminate()
        held, self._held = self._held, {}
        if not held or self._closing:
            return
        log.error("lock session lost: %s stop accepting until recovered", ",".join(sorted(held)))
        for on_lost in held.values():
            on_lost()

    # ------------------------------------------------------------------ commits
    def start(self) -> None:
        self._task = asyncio.create_task(self._committer(), name="lock-session-committer")

    def submit(self, batch: Batch) -> asyncio.Future:
        """Queue one instrument's batch for the next commit; the future resolves once it is
        durable (with whatever other batches were queued with it) or fails with the commit's
        error (LockLost when the session does not hold the instrument's lock). Until the commit
        starts (batch.sealed) its sequencer may still add commands to it."""
        fut = asyncio.get_running_loop().create_future()
        self._queue.append((batch, fut))
        self._wake.set()
        return fut

    async def _committer(self) -> None:
        while True:
            if not self._queue:
                await self._wake.wait()
                self._wake.clear()
            if self.linger_s:
                await self._linger()
            items, self._queue = self._queue, []
            if items:
                self._in_flight = items
                await self._commit(items)
                self._in_flight = []
            # One turn of the loop: the sequencers whose batches just committed answer their
            # callers before the next commit goes out.
            await asyncio.sleep(0)

    async def _linger(self) -> None:
        """Measure the arrival rate at each commit; wait as linger_s() says. The sequencers go on
        filling their queued batches meanwhile, so a wait delays a command by at most `linger_s`
        (about half of it on average), not by a commit round of its own."""
        now = time.perf_counter()
        queued = sum(b.commands for b, _ in self._queue)
        dt = now - self._last_wake
        rate = (self._arrived + queued - self._arrived_at_wake) / dt if dt > 0 else 0.0
        self._last_wake, self._arrived_at_wake = now, self._arrived + queued
        self._arrivals_per_s = 0.8 * self._arrivals_per_s + 0.2 * min(rate, 1e6)
        wait = linger_s(self._arrivals_per_s, self.linger_s, queued, self.max_commands)
        if wait:
            await asyncio.sleep(wait)

    async def _commit(self, items: list[tuple[Batch, asyncio.Future]]) -> None:
        sealed = time.perf_counter()
        for b, _ in items:
            b.sealed = sealed
            self._arrived += b.commands
        ok: list[tuple[Batch, asyncio.Future]] = []
        try:
            async with self._use:
                conn = self.conn
                for item in items:
                    if item[0].instrument in self._held and conn is not None and not conn.is_closed():
                        ok.append(item)
                    elif not item[1].done():
                        item[1].set_exception(LockLost(f"{item[0].instrument}: the lock is not held"))
                rows = [b for b, _ in ok if b.events or b.idempotency]
                if rows:
                    started = time.perf_counter()
                    await write_batches(conn, rows)
                    took = time.perf_counter() - started
                    if took >= self.slow_commit_s:
                        # Every caller of every instrument of the node waited this long: say so, with
                        # what was written, so that a pause of the venue can be told from one of the
                        # service itself (the loop watcher, contracts/logs.py) or of the network.
                        log.warning("slow commit: %.2f s (events %d, instruments %s)", took,
                                    sum(len(b.events) for b in rows), ",".join(sorted({b.instrument for b in rows})))
        except Exception as exc:
            failed = {b.instrument for b, _ in items}
            # A queued batch of a failed instrument holds the engine's results after the failed
            # one: it must not be committed without it (its sequencer rebuilds from the journal).
            later = [item for item in self._queue if item[0].instrument in failed]
            self._queue = [item for item in self._queue if item[0].instrument not in failed]
            for b, fut in items + later:
                b.sealed = b.sealed or sealed
                if not fut.done():
                    fut.set_exception(exc)
            return
        for _, fut in ok:
            if not fut.done():
                fut.set_result(None)

    async def close(self) -> None:
        """Stop committing and end the session (which releases every lock it still holds)."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # stopping
                await self._task
        for _, fut in self._in_flight + self._queue:
            if not fut.done():  # not known to be committed: the callers get 503, never a success
                fut.set_exception(LockLost("shutting down"))
        self._queue, self._in_flight = [], []
        conn, self.conn = self.conn, None
        self._held = {}
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):  # closing ends the session, which releases the locks
                await conn.close(timeout=5)
