"""Command nodes and instrument ownership (issue 14).

Any number of identical command services run against one PostgreSQL, each with its own
EXCHANGE_NODE_ID. Ownership is the advisory lock, as with one node: an instrument is owned by
exactly the node whose session holds its lock, and that session is the one its batches are
written on (sequencer.py), with (instrument, seq) as the last fence. This module only decides
which locks a node TRIES to take:

- Every node heartbeats its row in `command_nodes` (db/migrations/008) every
  EXCHANGE_NODE_HEARTBEAT_S with PostgreSQL's clock; a node is live while its heartbeat is
  younger than EXCHANGE_NODE_LEASE_S.
- Rendezvous hashing (with bounded loads: `spread`) spreads the instruments over the live nodes
  that serve them: the owner of I is the node with the highest hash(node, I) that is not full. Every node computes the same answer from the
  same table, and a node joining or leaving moves only the instruments it wins or held.
- Who holds what is read from pg_locks (the lock sessions name their node in
  application_name), never from a table that could disagree with the locks.
- A node claims an instrument nobody holds when it is the rendezvous owner, or when the
  instrument stayed without a live holder for a whole lease (the owner it should have had is
  not taking it). A holder whose node's heartbeat is older than the lease (frozen, cut off) has
  its session ended with pg_terminate_backend, which releases the lock; the node that wakes up
  finds its lock session gone and accepts nothing more for that instrument (its writes went
  through that very connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass, field

import asyncpg

from command_service.lock_session import (
    APP_NAME_PREFIX,
    INCARNATION,
    LOCK_CLASS,
    NEWER_INCARNATION_SQL,
    parse_session_name,
)
from command_service.sequencer import Sequencer

log = logging.getLogger("command.nodes")

NUDGE_GAP_S = 0.1  # a nudged round (Membership.nudge) runs this long after the nudge, not sooner

# The instrument -> holding session (pid, its node from application_name) from the locks
# themselves; hashtext() is int4 and pg_locks.objid an oid, hence the mask.
HOLDERS_SQL = f"""
SELECT i AS instrument, l.pid, a.application_name
FROM unnest($1::text[]) AS i
JOIN pg_locks l ON l.locktype = 'advisory' AND l.granted AND l.classid = {LOCK_CLASS}
     AND l.objid = (hashtext(i)::int8 & 4294967295)::oid AND l.objsubid = 2
     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
LEFT JOIN pg_stat_activity a ON a.pid = l.pid
"""

HEARTBEAT_SQL = """
INSERT INTO command_nodes(node_id, instruments, url, heartbeat_at, draining, declined)
VALUES ($1, $2, $3, now(), $4, $5)
ON CONFLICT (node_id) DO UPDATE SET instruments = $2, url = $3, heartbeat_at = now(), draining = $4, declined = $5
"""

# Live nodes (and how old every heartbeat is): rows of nodes gone for a day are removed.
# `connected`: the node has a session in PostgreSQL at all (every session of a node, its pool's and
# its lock session, is named after it: lock_session.lock_session_settings). A process killed on
# this machine or on a machine whose connections were reset loses every session at once, while its
# heartbeat stays "fresh" for up to a lease: waiting that lease was the larger part of a kill -9
# takeover (bench `takeover`: 4.3 s of 5.8 s with the 5 s lease). A node with no session can
# neither hold a lock nor commit, so it is treated as gone at once. A frozen node (SIGSTOP, cut
# off) keeps its sessions and is still judged by its heartbeat and the lease.
NODES_SQL = """
SELECT node_id, instruments, url, draining, declined,
       extract(epoch FROM now() - heartbeat_at)::float8 AS age_s,
       EXISTS (SELECT 1 FROM pg_stat_activity s
               WHERE left(s.application_name, length($1 || node_id) + 1) = $1 || node_id || '@'
                  OR s.application_name = $1 || node_id) AS connected
FROM command_nodes
"""


def _score(node: str, instrument: str) -> bytes:
    return hashlib.blake2b(f"{node}\n{instrument}".encode(), digest_size=8).digest()


def rendezvous(nodes: list[str], instrument: str) -> str | None:
    """The node that owns `instrument` among `nodes` (highest random weight; stable for all)."""
    return max(nodes, key=lambda n: _score(n, instrument), default=None)


def spread(nodes: dict[str, list[str]]) -> dict[str, str]:
    """instrument -> owner over live nodes (node -> the instruments it serves): rendezvous hashing
    with bounded loads. Plain rendezvous gave all three instruments of `make run` to command-1
    (with few instruments an uneven split is likely: 1 in 4 for 3 over 2); here each instrument,
    in name order, takes its highest-weight node that is not full (each node floor(instruments /
    nodes), the remainder one more), so the split is as even as the instruments allow. Every node computes the same plan from the
    same table; a node joining or leaving still moves few instruments."""
    instruments = sorted({i for v in nodes.values() for i in v})
    base, extra = divmod(len(instruments), max(1, len(nodes)))  # each node base, `extra` of them one more
    load = dict.fromkeys(nodes, 0)
    plan: dict[str, str] = {}
    for i in instruments:
        ranked = sorted((n for n, v in nodes.items() if i in v), key=lambda n: _score(n, i), reverse=True)
        if not ranked:
            continue
        pick = next((n for n in ranked if load[n] < base or (load[n] == base and extra > 0)), ranked[0])
        if load[pick] == base:  # it goes above base: one of the `extra` places taken
            extra -= 1
        plan[i] = pick
        load[pick] += 1
    return plan


def node_of(application_name: str | None) -> str | None:
    return parse_session_name(application_name)[0]


@dataclass
class View:
    """What the last round saw: live nodes and the holder of every instrument."""

    nodes: dict[str, dict] = field(default_factory=dict)  # live node -> {instruments, url, draining}
    # instrument -> (pid, node, incarnation: which process of that node; lock_session.session_name)
    holders: dict[str, tuple[int, str | None, str]] = field(default_factory=dict)
    plan: dict[str, str] = field(default_factory=dict)  # instrument -> the node it should be on (spread)
    at: float = 0.0

    def owner(self, instrument: str) -> str | None:
        h = self.holders.get(instrument)
        return h[1] if h else None


class Membership:
    def __init__(self, node_id: str, pool, sequencers: dict[str, Sequencer], *, heartbeat_s: float,
                 lease_s: float, url: str = "", metrics=None):
        self.node_id = node_id
        self.pool = pool
        self.sequencers = sequencers
        self.heartbeat_s = heartbeat_s
        self.lease_s = lease_s
        self.url = url
        self.metrics = metrics
        self.view = View()
        self.draining = False
        self._orphan_since: dict[str, float] = {}
        self._claims: dict[str, asyncio.Task] = {}
        self._task: asyncio.Task | None = None
        self._first = True
        # Instruments an admin handed over from this node: no longer its share (every node reads
        # them from its row) until this process restarts.
        self._declined: set[str] = set()
        self.forwarder = None  # command_service/forwarding.py: subscribed to what this node owns
        self._nudged = asyncio.Event()
        # A newer process took this node id over (this one was frozen and is replaced): it claims,
        # heartbeats and commits nothing any more (_stand_down).
        self.replaced = False

    # ------------------------------------------------------------------ lifecycle
    async def start(self, wait_s: float = 5.0) -> None:
        """First round at once (so a lone node owns everything when its app starts), then every
        heartbeat. The claims of the first round are awaited up to wait_s."""
        try:
            await self.round()
        except Exception as exc:  # PostgreSQL away: the loop keeps trying
            log.warning("nodes: first round failed: %r", exc)
        claims = [t for t in self._claims.values() if not t.done()]
        if claims:
            await asyncio.wait(claims, timeout=wait_s)
        self._task = asyncio.create_task(self._loop(), name="nodes")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # stopping
                await self._task
        for t in self._claims.values():
            t.cancel()
        # A graceful stop leaves the table at once: the others need not wait a lease. (A replaced
        # process leaves it alone: the row is the new process's.)
        if self.replaced:
            return
        with contextlib.suppress(Exception):  # PostgreSQL away: the row just ages out
            await self.pool.execute("DELETE FROM command_nodes WHERE node_id = $1", self.node_id)

    def nudge(self) -> None:
        """Run the next round now rather than at the next heartbeat: a forwarded command found no
        node serving its instrument (its owner died, or a handover is in progress). After a kill -9
        the gateway sends the dead node's traffic here within milliseconds, so this takes over up to
        a heartbeat (1 s) sooner than the periodic round would (bench `takeover`)."""
        self._nudged.set()

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._nudged.wait(), self.heartbeat_s)
                # Nudged: at most one extra round per NUDGE_GAP_S however many forwards find no owner
                # (1,000 orders/s retrying every 50 ms would otherwise run rounds back to back).
                await asyncio.sleep(NUDGE_GAP_S)
            except asyncio.TimeoutError:
                pass
            self._nudged.clear()
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("nodes: round failed: %r", exc)

    # ------------------------------------------------------------------ one round
    async def round(self) -> None:
        if self.replaced:
            return
        symbols = list(self.sequencers)
        async with self.pool.acquire() as conn:
            # First of all: has a newer process started under this node id (this one was frozen)?
            # Then its heartbeat is the node's, and this process must not write one.
            replaced = await conn.fetchval(NEWER_INCARNATION_SQL, APP_NAME_PREFIX + self.node_id + "@", INCARNATION)
            if not replaced:
                rows, holders = await self._heartbeat_and_read(conn, symbols)
        if replaced:
            await self._stand_down()
            return
        self._after_round(symbols, rows, holders)
        await self.sync()

    async def _heartbeat_and_read(self, conn, symbols: list[str]) -> tuple[list, list]:
        """Write this node's heartbeat; read the nodes table and the holders of every lock."""
        try:
            await conn.execute(HEARTBEAT_SQL, self.node_id, symbols, self.url, self.draining,
                               sorted(self._declined))
            rows = await conn.fetch(NODES_SQL, APP_NAME_PREFIX)
            if self._first:
                await conn.execute("DELETE FROM command_nodes WHERE heartbeat_at < now() - interval '1 day'")
        except asyncpg.UndefinedTableError:
            # A database not migrated to 008 yet (an older schema being upgraded): this node sees
            # no other node and takes every instrument nobody holds, as before issue 14; the
            # locks still decide who owns what.
            rows = []
        return rows, await conn.fetch(HOLDERS_SQL, symbols)

    def _after_round(self, symbols: list[str], rows: list, holders: list) -> None:
        now = time.monotonic()
        live = {r["node_id"]: {"instruments": [i for i in r["instruments"] if i not in r["declined"]],
                               "url": r["url"], "draining": r["draining"]}
                for r in rows if r["age_s"] < self.lease_s and r["connected"]}
        live[self.node_id] = {"instruments": [i for i in symbols if i not in self._declined], "url": self.url,
                              "draining": self.draining}
        view = View(live, {r["instrument"]: (r["pid"], *parse_session_name(r["application_name"])) for r in holders},
                    spread({n: v["instruments"] for n, v in live.items() if not v["draining"]}), now)
        self.view = view
        first, self._first = self._first, False
        for sym, seq in self.sequencers.items():
            self._decide(sym, seq, view, now, first)
        self._export(view)

    async def _stand_down(self) -> None:
        """This process was frozen while a new one started under its node id, and that one runs
        now (it ended this one's lock sessions: nodes.py _decide, reason `restarted`). Claim nothing,
        write no heartbeat, release whatever lock is still held (the new process would end that
        session anyway); the sequencers refuse a lock while a newer incarnation exists (sequencer.py
        _ensure_lock). Commands that reach this process are forwarded to the owners."""
        self.replaced = True
        log.error("nodes: a newer process runs as node %s: this one (incarnation %s) was replaced and "
                  "takes, heartbeats and commits nothing from now on; stop it", self.node_id, INCARNATION)
        for t in self._claims.values():
            t.cancel()
        for seq in self.sequencers.values():
            seq.wanted = False
        held = [seq for seq in self.sequencers.values() if seq.ready]
        await asyncio.gather(*(seq.release() for seq in held), return_exceptions=True)
        await self.sync()

    async def sync(self) -> None:
        if self.forwarder is not None:
            try:
                await self.forwarder.sync(self.sequencers)
            except Exception as exc:  # NATS away: the next round subscribes
                log.warning("nodes: forwarding subscriptions not updated: %r", exc)

    def _decide(self, sym: str, seq: Sequencer, view: View, now: float, first: bool) -> None:
        holder = view.holders.get(sym)
        if sym in self._claims and not self._claims[sym].done():
            return
        desired = view.plan.get(sym)
        if seq.ready:
            self._orphan_since.pop(sym, None)
            if desired is not None and desired != self.node_id and not self.draining:
                # Its share belongs to another live node (it joined or came back): graceful
                # handover - drain, snapshot, release; that node claims it on its next round.
                self._claims[sym] = asyncio.create_task(self._hand_over(sym, seq, desired), name=f"handover-{sym}")
            return
        if holder is not None and holder[1] == self.node_id:
            self._orphan_since.pop(sym, None)
            if holder[2] >= INCARNATION:
                return  # our session is still recovering it (a newer process: round() stands down)
            # A session of an EARLIER process of this very node: it was frozen (SIGSTOP, a stalled VM)
            # and has been restarted since. Its heartbeat is now ours, so the lease would never expire
            # for it: this process ends its session at once and takes the instrument.
            self._claims[sym] = asyncio.create_task(self._claim(sym, seq, holder, "restarted"), name=f"claim-{sym}")
            return
        holder_live = holder is not None and (holder[1] is None or holder[1] in view.nodes)
        if holder_live:
            self._orphan_since.pop(sym, None)
            return  # a live node owns it (a node that comes back gets it by handover, not by force)
        since = self._orphan_since.setdefault(sym, now)
        if self.draining:
            return
        # A declined instrument is not in this node's share (the plan leaves it to the others); when no
        # other live node serves it (desired None) nobody else will take it, so waiting is pointless.
        if desired is not None and desired != self.node_id and now - since < self.lease_s:
            return  # the owner it should have gets a lease to take it (handed over: the others do)
        # Why this node takes it: its first round, its share and free (handed over, or its
        # holder gone), nobody took it for a lease, or its holder's node is frozen/cut off.
        if holder is not None:
            reason = "lease_expired"
        elif first:
            reason = "start"
        elif desired == self.node_id:
            reason = "assigned"
        else:
            reason = "no_owner"
        self._claims[sym] = asyncio.create_task(self._claim(sym, seq, holder, reason), name=f"claim-{sym}")

    async def _claim(self, sym: str, seq: Sequencer, stale: tuple[int, str | None, str] | None,
                     reason: str) -> None:
        t0 = time.perf_counter()
        if stale is not None:
            # The holder's node has not heartbeaten for a lease: frozen (SIGSTOP, GC pause, VM
            # stall) or cut off. Ending its session releases the lock; its writes all go through
            # that session, so from here on it can neither commit nor acknowledge for sym.
            pid, node, _ = stale
            why = ("an earlier process of this node" if reason == "restarted"
                   else f"a node whose heartbeat is older than {self.lease_s:.1f}s")
            log.warning("nodes: %s is held by node %s (pid %s), %s: terminating that session", sym, node, pid,
                        why, extra={"instrument": sym})
            async with self.pool.acquire() as conn:
                await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
                for _ in range(50):  # the lock goes when the backend has exited
                    if not await conn.fetchval(
                            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)", pid):
                        break
                    await asyncio.sleep(0.02)
        seq.claim()
        if await seq.wait_ready(60.0):
            took = time.perf_counter() - t0
            log.info("nodes: %s taken over (%s) in %.2fs", sym, reason, took, extra={"instrument": sym})
            if self.metrics is not None:
                self.metrics.takeovers.labels(reason).inc()
                self.metrics.takeover_duration.observe(took)
            self._orphan_since.pop(sym, None)
            await self.sync()  # serve forwarded commands at once, not at the next round

    async def _hand_over(self, sym: str, seq: Sequencer, to: str | None) -> int:
        t0 = time.perf_counter()
        at = await seq.release()
        await self.sync()
        log.info("nodes: %s handed over at seq %d%s in %.2fs", sym, at, f" to {to}" if to else "",
                 time.perf_counter() - t0, extra={"instrument": sym})
        return at

    async def hand_over(self, sym: str) -> tuple[int, str | None]:
        """Admin: give one instrument to the node rendezvous hashing picks among the OTHER live
        nodes; this node declines it from now on (its row says so), so it does not come back.
        Returns (seq handed over, the node expected to take it); (-1, None) when this node does
        not hold it or no other node serves it."""
        seq = self.sequencers[sym]
        others = [n for n, v in self.view.nodes.items()
                  if n != self.node_id and sym in v["instruments"] and not v["draining"]]
        if not seq.ready or not others:
            return -1, None
        self._declined.add(sym)
        with contextlib.suppress(Exception):  # the next round writes it anyway
            await self.pool.execute(HEARTBEAT_SQL, self.node_id, list(self.sequencers), self.url, self.draining,
                                    sorted(self._declined))
        to = spread({n: self.view.nodes[n]["instruments"] for n in others}).get(sym)
        return await self._hand_over(sym, seq, to), to

    async def drain(self) -> None:
        """SIGTERM: tell the others this node is leaving, hand every instrument over (each next
        owner recovers from the snapshot written here), then leave the table."""
        self.draining = True
        if self._task is not None:
            self._task.cancel()
        if self.replaced:
            return
        with contextlib.suppress(Exception):  # PostgreSQL away: the others see the heartbeat age instead
            await self.pool.execute(HEARTBEAT_SQL, self.node_id, list(self.sequencers), self.url, True,
                                    sorted(self._declined))
        held = [(sym, seq) for sym, seq in self.sequencers.items() if seq.ready]
        await asyncio.gather(*(self._hand_over(sym, seq, None) for sym, seq in held), return_exceptions=True)

    def _export(self, view: View) -> None:
        if self.metrics is None:
            return
        for sym, seq in self.sequencers.items():
            self.metrics.instrument_owner.labels(sym, self.node_id).set(1 if seq.ready else 0)

    # ------------------------------------------------------------------ reporting
    def owners(self) -> dict[str, str | None]:
        """instrument -> node holding it (as of the last round; this node's own from its sequencers)."""
        out = {}
        for sym, seq in self.sequencers.items():
            out[sym] = self.node_id if seq.ready else self.view.owner(sym)
        return out

    def describe(self) -> dict:
        return {
            "node_id": self.node_id,
            "nodes": sorted(self.view.nodes),
            "owners": self.owners(),
        }
