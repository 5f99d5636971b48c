
"""One sequencer per instrument: the only writer of that instrument's journal.

Each command runs through the engine as it arrives and its result joins the instrument's
open batch, queued in the node's lock session; when the lock session's commit starts, the
batch is sealed and later commands start the next one (pipelining: the engine works on the
next batch while the previous one commits). Events + order rows + idempotency rows are written
in ONE statement, and only then are the callers answered. So a success is never sent for
something that is not durable, batches grow with load and stay size 1 when idle. A failed
commit fails its batch and every later one of the instrument (they build on it), and the book
is rebuilt from the journal.

Exclusivity: a PostgreSQL advisory lock per instrument, held by the node's lock session
(command_service/lock_session.py), which is also the session every batch is written on (so a
write can only succeed while the lock is held by the very session that writes); the batches of
the node's instruments that wait while a commit is in flight go out together in the next one.
If that session dies the lock is gone, so we stop accepting until we hold it again and
have rebuilt the book from the database (another writer may have written meanwhile). The
(instrument, seq) primary key catches the remaining window: a second writer's batch
fails as a whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import asyncpg
import msgspec

from command_service.closed_orders import RecentlyClosed
from command_service.journal import Batch, JournalWriter
from command_service.lock_session import LockSession
from contracts.enums import CLOSED_STATUSES as _CLOSED
from contracts.messages import ExpireOrders, decode_event
from engine import OrderBook

log = logging.getLogger("command.sequencer")


class Unavailable(Exception):
    """The instrument cannot accept commands right now (database down, lock lost, recovering)."""


class LockHeld(Unavailable):
    """Another session (another node) holds the instrument's lock."""


# A render turns the engine's result into the caller's (status, body) while the book is
# exactly in the state right after that command (the response shows the book after it).
Render = Callable[[Any, OrderBook], tuple[int, bytes]]


@dataclass(slots=True)
class OpenBatch:
    """A batch and the callers it answers once it is committed."""

    batch: Batch
    items: list = field(default_factory=list)  # Submission, in order
    responses: list = field(default_factory=list)  # (status, body) of each


@dataclass(slots=True)
class Submission:
    command: Any  # contracts.messages command with ts=0; the sequencer stamps the time
    render: Render
    future: asyncio.Future
    idempotency: tuple[str, str, bytes] | None = None  # (client_id, key, request_hash)
    received_ns: int = 0


class Sequencer:
    def __init__(self, instrument: str, pool: asyncpg.Pool, session: LockSession, *, max_batch: int,
                 snapshot_every: int, metrics=None, event_log=None,
                 recently_closed_keep: int = RecentlyClosed.DEFAULT_KEEP):
        self.instrument = instrument
        # Whether this node means to own the instrument (command_service/nodes.py decides; a
        # sequencer built without a node layer wants its instrument from the start). While not
        # wanted the loop does not try the lock; a try that finds the lock held by another
        # session gives up (wanted = False) and leaves the next decision to the node layer.
        self.wanted = True
        self.lost_to_other = False  # the last try found another session holding the lock
        self._handover: asyncio.Future | None = None  # release() in progress
        self.event_log = event_log  # command_service.event_log.EventLog, or None
        self.journal = JournalWriter(pool)
        self.session = session
        self.max_batch = max_batch
        self.snapshot_every = snapshot_every
        self.metrics = metrics
        self.book = OrderBook(instrument)
        self.risk: tuple[int, int, int] | None = None  # OrderBook.risk of every book this sequencer holds
        self.ready = False
        self._pending: list[Submission] = []
        self._open: OpenBatch | None = None  # filling; queued in the lock session
        self._in_flight = 0  # batches handed to the lock session and not yet answered
        self._drained = asyncio.Event()  # set while _in_flight == 0: the book's seq is committed
        self._drained.set()
        self._broken = False  # a commit failed: the book ran ahead of the journal until rebuilt
        self._snapshot_wanted = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._last_ts = 0
        self._events_since_snapshot = 0
        self._snapshot_waiters: list[asyncio.Future] = []
        self._background: set[asyncio.Task] = set()
        self._stopping = False
        # Orders closed by committed batches, the newest few thousand: a cancel racing a fill
        # is the common case under load and is answered from here without a database round
        # trip; older closed orders are answered from their orders row (bounded: issue 18).
        self.recently_closed = RecentlyClosed(recently_closed_keep)
        self._expiry_wake = asyncio.Event()
        self._expiry_task: asyncio.Task | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self, claim: bool = True) -> None:
        self.wanted = claim
        if claim:
            try:
                await self._recover()
            except Exception as exc:  # the loop keeps retrying; the service still starts
                log.warning("%s: not ready at start: %s", self.instrument, exc, extra={"instrument": self.instrument})
        self._task = asyncio.create_task(self._run(), name=f"sequencer-{self.instrument}")
        self._expiry_task = asyncio.create_task(self._expire_loop(), name=f"expiry-{self.instrument}")

    async def stop(self) -> None:
        self._stopping = True
        self.ready = False
        if self._expiry_task:
            self._expiry_task.cancel()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # stopping: the task's own errors were logged where they happened
                await self._task
        for t in list(self._background):
            with contextlib.suppress(Exception):  # stopping: a background snapshot that fails now is retried after the restart
                await asyncio.wait_for(t, 5)
        self._fail(self._pending, Unavailable("shutting down"))
        self._pending = []

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    # ------------------------------------------------------------------ entry
    def submit(self, command, render: Render, idempotency=None) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        if not self.ready:
            fut.set_exception(Unavailable(f"{self.instrument} is not accepting orders right now"))
            return fut
        self._pending.append(Submission(command, render, fut, idempotency, time.perf_counter_ns()))
        self._wake.set()
        return fut

    def request_snapshot(self) -> asyncio.Future:
        """Resolve with (seq, size) once a snapshot at a committed seq is stored."""
        fut = asyncio.get_running_loop().create_future()
        if not self.ready:
            fut.set_exception(Unavailable(f"{self.instrument} is not ready"))
            return fut
        self._snapshot_waiters.append(fut)
        self._wake.set()
        return fut

    # ------------------------------------------------------------------ loop
    def claim(self) -> None:
        """The node layer wants this instrument: try its lock (the loop recovers once it holds it)."""
        self.wanted = True
        self._wake.set()

    async def release(self) -> int:
        """Graceful handover (another node is to own the instrument, or this node stops): stop
        taking commands (from now on this node forwards them), commit what is queued, store a
        snapshot at that seq so the next owner recovers from it, and release the lock. Returns
        the seq handed over. Commands arriving meanwhile are forwarded and wait for the next
        owner (forwarding.py), so a handover shows clients no error."""
        self.wanted = False
        if not self.ready and self._handover is None:
            return self.book.seq
        if self._handover is None:
            self._handover = asyncio.get_running_loop().create_future()
            self.ready = False  # submit() refuses: the entry forwards instead
            self._wake.set()
        return await asyncio.shield(self._handover)

    async def _hand_over(self) -> None:
        fut = self._handover
        seq = self.book.seq
        try:
            while self._pending and self.session.holds(self.instrument) and not self._broken:
                items = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                self._execute(items)  # still the lock holder; submit() refuses new ones meanwhile
            await self._drained.wait()
            seq = self.book.seq
            for t in list(self._background):
                with contextlib.suppress(Exception):  # a snapshot in flight that fails is replaced below
                    await asyncio.wait_for(t, 10)
            if self._events_since_snapshot and self.session.holds(self.instrument) and not self._broken:
                # Inline, not forked: the instrument accepts nothing here anyway, and the next
                # owner's recovery is then a snapshot load plus nothing to replay.
                await self.journal.save_snapshot(self.instrument, seq, self.book.snapshot())
                self._events_since_snapshot = 0
        except Exception as exc:
            log.warning("%s: handover snapshot at seq %d not stored (%r): the next owner replays the journal",
                        self.instrument, seq, exc, extra={"instrument": self.instrument})
        finally:
            self._fail(self._pending, Unavailable(f"{self.instrument} is moving to another node; retry"))
            self._pending = []
            with contextlib.suppress(Exception):  # a failed unlock ends the session, which releases the lock
                await self.session.unlock(self.instrument)
            self.ready = False
            self._handover = None
            if not fut.done():
                fut.set_result(seq)
            log.info("%s: handed over at seq %d", self.instrument, seq, extra={"instrument": self.instrument})

    async def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.ready and self.wanted and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.ready

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            if self._handover is not None:
                await self._hand_over()
                continue
            if not self.ready:
                if not self.wanted:
                    await self._wake.wait()
                    self._wake.clear()
                    continue
                try:
                    await self._drained.wait()  # what is still in flight fails or commits first
                    await self._recover()
                    backoff = 0.1
                except LockHeld as exc:
                    log.info("%s: %s", self.instrument, exc, extra={"instrument": self.instrument})
                    self.wanted = False
                    continue
                except Exception as exc:
                    log.warning("%s: recovery failed (%s); retrying in %.1fs", self.instrument, exc, backoff, extra={"instrument": self.instrument})
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
            await self._wake.wait()
            self._wake.clear()
            while self._pending and self.ready and self._handover is None and not self._snapshot_wanted:
                items = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                self._execute(items)
            if (self._snapshot_wanted or self._snapshot_waiters) and self.ready:
                # A snapshot is of a committed seq: commands wait (queued) until what is in
                # flight is committed; then the fork copies the book at once.
                await self._drained.wait()
                if self.ready and not self._broken:
                    self._snapshot_wanted = False
                    await self._snapshot()
                self._wake.set()  # the commands that waited

    def _execute(self, items: list[Submission]) -> None:
        """Run commands through the engine into the open batch (no await: nothing else sees the
        book between two commands)."""
        book = self.book
        replace = msgspec.structs.replace
        ob = self._open
        if ob is None or ob.batch.sealed or ob.batch.commands >= self.max_batch:
            ob = self._open = OpenBatch(Batch(self.instrument))
            self._in_flight += 1
            self._drained.clear()
            self.session.submit(ob.batch).add_done_callback(partial(self._committed, ob))
        batch, responses = ob.batch, ob.responses
        for item in items:
            ts = time.time_ns()
            if ts <= self._last_ts:
                ts = self._last_ts + 1
            self._last_ts = ts
            result = book.execute(replace(item.command, ts=ts))
            if result.events:
                batch.events.extend(result.events)
                batch.add_orders(result.orders, book.seq)
            try:
                status, body = item.render(result, book)
            except Exception as exc:  # a bug in rendering must not take the batch down
                log.exception("render failed")
                status, body = 500, b'{"error":{"code":"internal","message":"%s"}}' % type(exc).__name__.encode()
            if item.idempotency is not None and result.events:
                client_id, key, request_hash = item.idempotency
                batch.idempotency.append((client_id, key, request_hash, status, body))
            responses.append((status, body))
        ob.items += items
        batch.commands += len(items)

    def _committed(self, ob: OpenBatch, fut: asyncio.Future) -> None:
        """The lock session's answer for one batch: answer its callers (after the commit only)."""
        if ob is self._open:
            self._open = None
        self._in_flight -= 1
        if self._in_flight == 0:
            self._drained.set()
        batch, items = ob.batch, ob.items
        exc = fut.exception() if not fut.cancelled() else Unavailable("shutting down")
        if exc is not None:
            # The engine ran ahead of the database: it must be rebuilt from what was
            # committed before anything else is accepted. Callers get 503, never a
            # false success (a commit whose ack was lost is found again on rebuild and
            # answered by idempotency on retry).
            if not self._broken:
                log.error("%s: batch of %d failed to commit: %r", self.instrument, len(items), exc,
                          extra={"instrument": self.instrument})
                if self.metrics:
                    self.metrics.commit_failures.labels(self.instrument).inc()
            self._broken = True
            self.ready = False
            self._fail(items, Unavailable("the journal is unavailable; retry"))
            self._fail(self._pending, Unavailable("the journal is unavailable; retry"))
            self._pending = []
            self._wake.set()
            return
        if self.metrics:
            self.metrics.observe_batch(self.instrument, len(items), time.perf_counter() - batch.sealed)
        if batch.events:
            self._events_since_snapshot += len(batch.events)
            add_closed = self.recently_closed.add
            for state, _ in batch.orders.values():
                if state.status in _CLOSED:
                    add_closed(state.order_id, state.client_id, state.status.value)
        now = time.perf_counter_ns()
        observe = self.metrics.order_latency.observe_ns if self.metrics else None
        for item, resp in zip(items, ob.responses):
            if not item.future.done():
                item.future.set_result(resp)
            if observe:
                observe(now - item.received_ns)
        if self.metrics:
            self.metrics.after_batch(self.instrument, batch.events, self.book)
        if batch.events:
            self._expiry_wake.set()  # a GTD order may have arrived (or the earliest left)
            if self.event_log is not None:
                self.event_log.batch(batch.events)
        if snapshot_due(self._events_since_snapshot, len(self.book), self.snapshot_every):
            self._snapshot_wanted = True
            self._wake.set()

    async def _snapshot(self) -> None:
        # Taken with nothing in flight (_run waits for _drained), so book.seq is a committed seq. Serialising a large book
        # blocks for a long time (200k resting orders: ~140 ms, a p99 spike for every order
        # in flight), so the book is serialised by a forked child that sees it, copy-on-
        # write, exactly as it is now; the sequencer goes on at once. Storing the bytes runs
        # in the background too.
        seq = self.book.seq
        self._events_since_snapshot = 0
        waiters, self._snapshot_waiters = self._snapshot_waiters, []
        child = fork_snapshot(self.book)
        data = None if child else self.book.snapshot()  # no fork here: serialise inline

        async def store():
            try:
                payload = data if data is not None else await collect_snapshot(*child)
                await self.journal.save_snapshot(self.instrument, seq, payload)
                for w in waiters:
                    if not w.done():
                        w.set_result((seq, len(payload)))
            except Exception as exc:
                log.warning("%s: snapshot at seq %d not stored: %s", self.instrument, seq, exc, extra={"instrument": self.instrument})
                for w in waiters:
                    if not w.done():
                        w.set_exception(Unavailable(f"snapshot not stored: {exc}"))

        task = asyncio.create_task(store())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ recovery
    async def _ensure_lock(self) -> None:
        if not await self.session.lock(self.instrument, self._on_lock_lost):
            self.lost_to_other = True
            raise LockHeld(f"another sequencer holds the lock for {self.instrument}")
        self.lost_to_other = False

    def _on_lock_lost(self) -> None:
        if not self._stopping:
            log.error("%s: lock lost; stop accepting until recovered", self.instrument, extra={"instrument": self.instrument})
            self.ready = False
            # Queued, never committed: answered now (503, retryable), not left waiting for a
            # recovery that may never come here (another node may own the instrument now).
            self._fail(self._pending, Unavailable(f"{self.instrument} lost its lock; retry"))
            self._pending = []
            self._wake.set()

    async def _recover(self) -> None:
        """Latest snapshot + replay of every later journal event = the committed book."""
        await self._ensure_lock()
        t0 = time.perf_counter()
        snap = await self.journal.latest_snapshot(self.instrument)
        book = OrderBook(self.instrument)
        if snap:
            try:
                book = OrderBook.restore(snap[1])
            except Exception as exc:
                # An unreadable snapshot (e.g. written by an older engine) costs time, not
                # correctness: the journal alone rebuilds the same book.
                log.warning("%s: snapshot at seq %d unreadable (%s); replaying the whole journal",
                            self.instrument, snap[0], exc)
                snap = None
        replayed = 0
        while True:
            rows = await self.journal.read(self.instrument, book.seq, 20_000)
            if not rows:
                break
            for seq, payload in rows:
                if seq != book.seq + 1:
                    raise RuntimeError(f"{self.instrument}: journal gap at seq {book.seq + 1} (found {seq})")
                book.apply(decode_event(payload))
            replayed += len(rows)
        book.risk = self.risk
        self.book = book
        self._open = None
        self._broken = False
        self._snapshot_wanted = False
        self.recently_closed.clear()
        self._events_since_snapshot = replayed
        self.ready = True
        self._expiry_wake.set()  # orders whose time passed while we were down expire at once
        log.info("%s: recovered at seq %d (snapshot %s, %d events replayed, %d resting) in %.2fs",
                 self.instrument, book.seq, snap[0] if snap else "none", replayed, len(book),
                 time.perf_counter() - t0, extra={"instrument": self.instrument})
        if self.metrics:
            self.metrics.after_batch(self.instrument, [], book)

    async def _expire_loop(self) -> None:
        """Good-till-date: the engine holds no clock, so at an order's expire time this
        injects ExpireOrders (the sequencer stamps ts = now >= that time). Woken after
        every batch that wrote events, sleeps until the earliest expire time otherwise."""
        while True:
            try:
                self._expiry_wake.clear()
                nxt = self.book.next_expiry() if self.ready else None
                if nxt is None:
                    await self._expiry_wake.wait()
                    continue
                delay = (nxt - time.time_ns()) / 1e9
                if delay > 0:
                    try:
                        await asyncio.wait_for(self._expiry_wake.wait(), delay)
                    except asyncio.TimeoutError:
                        pass
                    continue
                fut = self.submit(ExpireOrders(self.instrument, 0), lambda result, book: (200, b""))
                try:
                    await fut
                except Unavailable:
                    await asyncio.sleep(0.1)  # recovering: the wake after recovery retries
            except asyncio.CancelledError:
                raise
            except Exception:  # never let expiry die silently
                log.exception("%s: expiry loop", self.instrument)
                await asyncio.sleep(0.5)

    @staticmethod
    def _fail(items, exc: Exception) -> None:
        for item in items:
            fut = item.future if isinstance(item, Submission) else item
            if not fut.done():
                fut.set_exception(exc)


# A snapshot costs CPU in proportion to the book, not to the events since the last one: measured
# 2026-12-07 (POST /admin/snapshot, idle stack) 0.37 s command CPU (forked child: copy-on-write
# of the heap + msgspec encode) + 0.09 s PostgreSQL for 200,000 resting orders (35 MB), 1.6 s +
# 0.35 s for 800,000 (140 MB). A fixed interval of 100,000 events made the amortised cost per
# event grow with the book (4.5 -> 20 us per event, ~2 % of the sustained run's CPU per order at
# 800k): the sustained run's book grows 200k -> 800k. So the interval grows with the book: at
# least EXCHANGE_SNAPSHOT_EVERY_EVENTS, at least SNAPSHOT_BOOK_FACTOR x the resting orders, which
# keeps the amortised cost flat (~2.4 us per resting order / 0.5 = ~5 us per event). Recovery
# stays bounded by the book too: it loads the snapshot (~2.3 us per resting order, "Recovery and
# memory") and replays at most max(setting, 0.5 x book) events (~4.7 us each): at 1,000,000
# resting orders at most ~2.3 s more than with the fixed interval (~4.7 s in all, goal 10 s).
SNAPSHOT_BOOK_FACTOR = 0.5


def snapshot_due(events_since: int, resting: int, every: int) -> bool:
    """Is a snapshot due after `events_since` events, with `resting` orders in the book? `every`
    is EXCHANGE_SNAPSHOT_EVERY_EVENTS (0: never)."""
    return bool(every) and events_since >= max(every, int(SNAPSHOT_BOOK_FACTOR * resting))


def fork_snapshot(book: OrderBook) -> tuple[int, str] | None:
    """Serialise `book` in a forked child into a temporary file: (pid, path), or None when
    this platform cannot fork. The child never returns into the event loop: it writes the
    bytes and leaves with os._exit (no atexit handlers, no buffers of the parent flushed)."""
    if not hasattr(os, "fork"):
        return None
    fd, path = tempfile.mkstemp(prefix=f"snapshot-{book.instrument}-", suffix=".bin")
    try:
        pid = os.fork()
    except OSError as exc:
        log.warning("snapshot: fork failed (%s); serialising in the event loop", exc)
        os.close(fd)
        os.unlink(path)
        return None
    if pid == 0:  # the child
        code = 1
        try:
            # The parent's signal handlers write to its event loop's wakeup fd, which the
            # child shares: a signal must end the child, not wake the parent.
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_DFL)
            data = book.snapshot()
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            code = 0
        finally:
            os._exit(code)
    os.close(fd)
    return pid, path


async def collect_snapshot(pid: int, path: str) -> bytes:
    """Wait for a fork_snapshot child (in a thread: waitpid blocks) and read its bytes."""
    loop = asyncio.get_running_loop()
    try:
        _, status = await loop.run_in_executor(None, os.waitpid, pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"snapshot child exited with {os.waitstatus_to_exitcode(status)}")
        return await loop.run_in_executor(None, Path(path).read_bytes)
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
