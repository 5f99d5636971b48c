"""Load generator and benchmark harness for the exchange.

    python -m bench.loadgen --mode http --connections 64 --duration 30 --out docs/bench/http.json --plot docs/bench/http.png
    python -m bench.loadgen --mode ws --connections 4 --inflight 32 --duration 30
    python -m bench.loadgen --mode http --rate 2000 --duration 60 --warmup 5      # open loop
    python -m bench.loadgen --visibility --duration 30          # + order-to-visible on the query side (:8002)
    python -m bench.loadgen --url http://127.0.0.1:3000 --query-url http://127.0.0.1:3000 --query-ws ws://127.0.0.1:3000/stream --visibility

Closed loop (default): every connection (HTTP) or every in-flight slot (WebSocket) sends
the next request as soon as the previous answer arrives; throughput is what the exchange
sustains. Open loop (--rate): requests are due on a fixed schedule (Poisson or uniform)
and latency is measured from the SCHEDULED time, so a stalled server is charged for the
requests it delayed (no coordinated omission).

Only 2xx (HTTP) / order_accepted, cancel_accepted (WebSocket) count as acked. A cancel
answered 409 (the order filled before the cancel arrived) is an expected race and reported
separately; every other status, protocol error, timeout or lost connection is an error.
Exit status: 0 pass; 1 when errors exceed --max-error-rate, when a measured second had no
ack at all (a stall; a closed-loop client sends little during an outage, so the error rate
alone would understate it) or when nothing was acked; 2 when the run could not start.

The hot path is callback driven (see ops/loadgen_net.py): the next request is formatted
and written from inside the previous response's data_received, without coroutines, futures
or timers, which keeps the generator's own CPU per request in the low microseconds on a
machine whose cores it shares with the exchange.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import os
import platform
import random
import resource
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from time import perf_counter

import msgspec

from bench.loadgen.net import HttpConnection, WsConnection, split_url
from bench.loadgen.stats import Recorder
from bench.loadgen.workload import KINDS, Workload, build_models, parse_mix
from contracts.instruments import load_instruments


@dataclass
class Config:
    mode: str = "http"  # http | ws
    url: str = "http://127.0.0.1:8001"
    ws_url: str = "ws://127.0.0.1:8001/ws"
    connections: int | None = None  # default 64 (http) / 4 (ws)
    inflight: int = 32  # ws closed loop: requests outstanding per connection
    rate: float | None = None  # open loop: offered requests/s (None = closed loop)
    schedule: str = "poisson"  # poisson | uniform
    duration: float | None = 10.0
    requests: int | None = None
    warmup: float = 0.0
    clients: int = 100
    client_prefix: str = "lg"
    instruments: list[str] = field(default_factory=lambda: ["BTC-USD", "ETH-USD", "SOL-USD"])
    mix: str = "limit=60,cancel=25,market=10,ioc=5"
    mids: dict[str, str] = field(default_factory=dict)
    api_keys_file: str | None = None
    idempotency_keys: bool = False
    idempotency_share: float = 1.0
    timeout: float = 10.0  # a request unanswered this long is an error (connection is reset)
    max_error_rate: float = 0.01
    max_stall_seconds: int = 0  # whole seconds without a single ack tolerated (an outage)
    seed: int | None = None
    instruments_file: str | None = None
    out: str | None = None
    plot: str | None = None
    label: str | None = None
    progress: bool = True
    visibility: bool = False
    query_url: str = "http://127.0.0.1:8002"
    query_ws: str = "ws://127.0.0.1:8002/stream"
    probe_interval: float = 0.1
    probe_levels: int = 100

    def resolved_connections(self) -> int:
        if self.connections:
            return self.connections
        return 64 if self.mode == "http" else 4


# -- response parsing (only what the generator needs) -------------------------------------


class _Order(msgspec.Struct):
    order_id: str | int | None = None
    status: str | None = None


class _Err(msgspec.Struct):
    code: str | None = None
    message: str | None = None
    field: str | None = None


class _WsReply(msgspec.Struct):
    type: str = ""
    request_id: str | int | None = None
    order: _Order | None = None
    error: _Err | None = None


class _HttpOrderReply(msgspec.Struct):
    order: _Order | None = None


_ws_reply = msgspec.json.Decoder(_WsReply)
_http_reply = msgspec.json.Decoder(_HttpOrderReply)
_ORDER_ID_KEY = b'"order_id":"'


def resting_order_id(body: bytes) -> str | None:
    """order_id of a 201 response if the order rests (open / partially filled).

    Fast path: the response has exactly one `"status":"` (the order's; trades and book
    levels carry none) and one `"order_id":"` (trades carry buy_/sell_order_id, which never
    match with the leading quote); the msgspec decode is the fallback for other spellings
    (whitespace, numeric ids)."""
    i = body.find(b'"status":"')
    if i >= 0:
        state = body[i + 10 : i + 14]
        if state != b"open" and state != b"part":
            return None
        i = body.find(_ORDER_ID_KEY)
        if i >= 0:
            i += len(_ORDER_ID_KEY)
            j = body.find(b'"', i)
            if j > i:
                return body[i:j].decode()
    try:
        reply = _http_reply.decode(body)
    except msgspec.DecodeError:
        return None
    if reply.order and reply.order.status in ("open", "partially_filled") and reply.order.order_id is not None:
        return str(reply.order.order_id)
    return None


EXPECTED_WS_CANCEL_CODES = ("conflict", "closed", "not_open", "filled", "already")


def ws_cancel_error_is_race(code: str | None) -> bool:
    """A WS cancel rejected because the order already closed (the 409 of HTTP)."""
    if not code:
        return False
    code = code.lower()
    return any(word in code for word in EXPECTED_WS_CANCEL_CODES)


# -- the run -----------------------------------------------------------------------------


class Run:
    """State shared by the drivers, the reporter tick and the probe."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.loop = asyncio.get_running_loop()
        instruments = load_instruments(cfg.instruments_file)
        self.instruments = instruments
        mids = {k: Decimal(v) for k, v in cfg.mids.items()}
        seed = cfg.seed if cfg.seed is not None else random.randrange(1 << 30)
        self.seed = seed
        self.models = build_models(instruments, cfg.instruments, mids)
        self.api_keys: dict[str, str] = {}
        if cfg.api_keys_file:
            self.api_keys = json.loads(Path(cfg.api_keys_file).read_text())
            if not isinstance(self.api_keys, dict) or not self.api_keys:
                raise ValueError(f"{cfg.api_keys_file}: expected a JSON object {{client_id: api_key}}")
            self.client_ids = list(self.api_keys)[: cfg.clients]
        else:
            self.client_ids = [f"{cfg.client_prefix}-{i:03d}" for i in range(cfg.clients)]
        run_tag = f"{cfg.client_prefix}{os.getpid()}x{int(time.time())}"
        self.workload = Workload(
            self.models,
            self.client_ids,
            parse_mix(cfg.mix),
            seed=seed,
            idempotency_prefix=run_tag if cfg.idempotency_keys else None,
            idempotency_share=cfg.idempotency_share,
        )
        self.recorder = Recorder(KINDS)
        self.rng = random.Random(seed + 1)
        # timeline (perf_counter seconds)
        self.t_start = 0.0
        self.measure_start = 0.0
        self.end = math.inf
        self.stopping = False
        self.inflight = 0
        self.sent_measured = 0
        self.responses_all = 0  # including warm-up, for the progress line
        self.requests_done = asyncio.Event()
        self.unsent_scheduled = 0
        self.fatal: str | None = None
        self.requests_limit = cfg.requests if cfg.requests is not None else -1

    def auth_header(self, client: int) -> bytes:
        if not self.api_keys:
            return b""
        return b"Authorization: Bearer %s\r\n" % self.api_keys[self.client_ids[client]].encode()

    def stop_sending(self) -> None:
        """--requests reached: no new request is sent; the ones in flight are drained."""
        self.stopping = True
        self.requests_done.set()

    # Open loop: ONE timer releases every due slot (a per-request timer would cost a
    # wake-up each). libuv timers have 1 ms granularity, so the timer re-arms at least 1 ms
    # ahead and a wake-up also releases slots due within the next 0.5 ms; an early slot's
    # latency counts from its real send, a late one's from its schedule (the driver queues
    # slots no connection is free for, and their wait is measured: no coordinated omission).
    EARLY = 0.0005

    def start_schedule(self, driver) -> None:
        self.next_slot = self.t_start
        self.interval = 1.0 / self.cfg.rate
        self.poisson = self.cfg.schedule == "poisson"
        self.slots_measured = 0
        self._driver = driver
        self._schedule_tick()

    def take_slot(self) -> float | None:
        t = self.next_slot
        if t >= self.end or self.stopping:
            return None
        if t >= self.measure_start:
            if self.slots_measured == self.requests_limit:
                return None
            self.slots_measured += 1
        self.next_slot = t + (self.rng.expovariate(self.cfg.rate) if self.poisson else self.interval)
        return t

    def _schedule_tick(self) -> None:
        now = perf_counter()
        horizon = now + self.EARLY
        dispatch = self._driver.dispatch
        while self.next_slot <= horizon:
            t = self.take_slot()
            if t is None:
                break
            dispatch(t if t < now else now, now)
        self._driver.flush()
        if not self.stopping and self.next_slot < self.end and self.slots_measured != self.requests_limit:
            delay = self.next_slot - perf_counter()
            self.loop.call_later(delay if delay > 0.001 else 0.001, self._schedule_tick)


class HttpDriver:
    """N keep-alive connections, each with one request in flight (closed or open loop)."""

    def __init__(self, run: Run):
        self.run = run
        cfg = run.cfg
        self.host, self.port, path, host_header = split_url(cfg.url, 80)
        self.base = path.rstrip("/").encode()
        common = [
            b"Host: %s\r\n%sContent-Type: application/json\r\nContent-Length: " % (host_header.encode(), run.auth_header(i))
            for i in range(len(run.client_ids))
        ]
        self.order_prefix = [b"POST %s/orders HTTP/1.1\r\n%s" % (self.base, c) for c in common]
        self.cancel_tail = [b"/cancel HTTP/1.1\r\n" + c for c in common]
        self.conns: list[HttpConnection | None] = [None] * cfg.resolved_connections()
        self.open_loop = cfg.rate is not None
        self.backoff = [0.05] * len(self.conns)
        self.idle: list[HttpConnection] = []  # open loop: connections free for a due slot
        self.backlog: collections.deque = collections.deque()  # open loop: due slots, no free connection

    async def start(self) -> None:
        results = await asyncio.gather(*(self._connect(i) for i in range(len(self.conns))), return_exceptions=True)
        ok = sum(1 for r in results if not isinstance(r, BaseException))
        if not ok:
            raise ConnectionError(f"could not connect to {self.run.cfg.url}: {results[0]!r}")

    async def _connect(self, i: int) -> HttpConnection:
        _, conn = await self.run.loop.create_connection(lambda: HttpConnection(self, i), self.host, self.port)
        self.conns[i] = conn
        self.backoff[i] = 0.05
        return conn

    def begin(self) -> None:
        now = perf_counter()
        for conn in self.conns:
            if conn is not None and not conn.closed:
                self._next(conn, now)
        for i, conn in enumerate(self.conns):
            if conn is None:
                self.run.loop.create_task(self._reconnect(i))
        if self.open_loop:
            self.run.start_schedule(self)

    # -- sending
    def _send(self, conn: HttpConnection, t0: float, now: float) -> None:
        run = self.run
        cmd = run.workload.next()
        kind, client, fields, order_type, order_id, _ = cmd
        if kind == "cancel":
            body = b"{%s}" % fields
            req = b"POST %s/orders/%s%s%d\r\n\r\n%s" % (
                self.base,
                order_id.encode(),
                self.cancel_tail[client],
                len(body),
                body,
            )
        else:
            body = b'{"type":"%s",%s}' % (order_type, fields)
            req = b"%s%d\r\n\r\n%s" % (self.order_prefix[client], len(body), body)
        conn.cmd = cmd
        conn.t0 = t0
        conn.t_sent = now
        if t0 >= run.measure_start:
            run.sent_measured += 1
            if run.sent_measured == run.requests_limit:
                run.stop_sending()
        conn.busy = True
        conn.transport.write(req)

    def _next(self, conn: HttpConnection, now: float) -> None:
        """A connection is free: closed loop sends at once; open loop takes the oldest
        queued slot (its latency counts from the slot's time) or waits for the scheduler."""
        run = self.run
        if self.open_loop:
            if self.backlog and not run.stopping:
                run.inflight += 1
                self._send(conn, self.backlog.popleft(), now)
            else:
                self.idle.append(conn)
            return
        if run.stopping or now >= run.end:
            run.stopping = True
            return
        run.inflight += 1
        self._send(conn, now, now)

    def dispatch(self, origin: float, now: float) -> None:
        """Open loop: a slot is due."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                self.run.inflight += 1
                self._send(conn, origin, now)
                return
        self.backlog.append(origin)

    def flush(self) -> None:
        pass

    # -- HttpConnection callbacks
    def on_response(self, conn: HttpConnection, status: int, body: bytes) -> None:
        now = perf_counter()
        run = self.run
        kind, client, _, _, _, remember = conn.cmd
        run.inflight -= 1
        run.responses_all += 1
        if conn.t0 >= run.measure_start:
            if 200 <= status < 300:
                outcome = 0
            elif status == 409 and kind == "cancel":
                outcome = 1
            else:
                outcome = 2
                run.recorder.sample_error(f"{kind} -> HTTP {status}: {body[:200].decode('utf-8', 'replace')}")
            run.recorder.record(kind, status, now - conn.t0, outcome)
        if remember and status == 201:
            oid = resting_order_id(body)
            if oid is not None:
                run.workload.remember(client, oid)
        if conn.must_close:
            conn.transport.close()  # the reconnect in on_lost carries on
            return
        self._next(conn, now)

    def on_protocol_error(self, conn: HttpConnection, detail: str) -> None:
        self._fail_request(conn, "protocol_error", detail)

    def on_lost(self, conn: HttpConnection, exc) -> None:
        if conn.busy:
            self._fail_request(conn, "connection_lost", repr(exc) if exc else "closed by server")
        if not self.run.stopping and self.conns[conn.index] is conn:
            self.run.loop.create_task(self._reconnect(conn.index))

    def _fail_request(self, conn: HttpConnection, what: str, detail: str) -> None:
        run = self.run
        if not conn.busy:
            return
        conn.busy = False
        run.inflight -= 1
        if conn.t0 >= run.measure_start:
            run.recorder.transport_error(what, 1, f"{what}: {detail}")

    async def _reconnect(self, i: int) -> None:
        run = self.run
        while not run.stopping:
            await asyncio.sleep(self.backoff[i])
            self.backoff[i] = min(self.backoff[i] * 2, 1.0)
            try:
                conn = await self._connect(i)
            except OSError as exc:
                if perf_counter() >= run.measure_start:
                    run.recorder.transport_error("connect_failed", 1, f"connect_failed: {exc!r}")
                continue
            self._next(conn, perf_counter())
            return

    def outstanding(self) -> int:
        """Requests written and not yet answered (slots waiting for their time excluded)."""
        return sum(1 for c in self.conns if c is not None and c.busy)

    def check_timeouts(self, now: float) -> None:
        limit = self.run.cfg.timeout
        for conn in self.conns:
            if conn is not None and conn.busy and not conn.closed and now - conn.t_sent > limit:
                self._fail_request(conn, "timeout", f"no answer in {limit}s")
                conn.transport.abort()

    def close(self) -> None:
        for conn in self.conns:
            if conn is not None and conn.transport is not None:
                conn.transport.close()


class WsDriver:
    """M WebSocket connections with many requests in flight each, matched by request_id."""

    def __init__(self, run: Run):
        self.run = run
        cfg = run.cfg
        self.host, self.port, self.path, self.host_header = split_url(cfg.ws_url, 80)
        n = cfg.resolved_connections()
        self.conns: list[WsConnection | None] = [None] * n
        self.open_loop = cfg.rate is not None
        # The API key is checked at the upgrade, so with keys a connection speaks for one
        # client; without them (EXCHANGE_AUTH=disabled) every request picks a random client.
        self.bound_client = [(i % len(run.client_ids)) if run.api_keys else None for i in range(n)]
        self.backoff = [0.05] * n
        self.rr = 0
        self.batches: dict[WsConnection, list[bytes]] = {}

    async def start(self) -> None:
        results = await asyncio.gather(*(self._connect(i) for i in range(len(self.conns))), return_exceptions=True)
        ok = sum(1 for r in results if not isinstance(r, BaseException))
        if not ok:
            raise ConnectionError(f"could not open a WebSocket to {self.run.cfg.ws_url}: {results[0]!r}")

    async def _connect(self, i: int) -> WsConnection:
        client = self.bound_client[i]
        headers = self.run.auth_header(client) if client is not None else b""
        _, conn = await self.run.loop.create_connection(
            lambda: WsConnection(self, self.host_header, self.path, headers, i), self.host, self.port
        )
        await asyncio.wait_for(conn.ready, 10)
        self.conns[i] = conn
        self.backoff[i] = 0.05
        return conn

    def begin(self) -> None:
        if self.open_loop:
            self.run.start_schedule(self)
        else:
            for conn in self.conns:
                if conn is not None and conn.open:
                    self._fill(conn, perf_counter())
        for i, conn in enumerate(self.conns):
            if conn is None:
                self.run.loop.create_task(self._reconnect(i))

    def _fill(self, conn: WsConnection, now: float) -> None:
        run = self.run
        want = run.cfg.inflight - len(conn.pending)
        if want > 0 and not run.stopping:
            conn.send_many([self._make(conn, now, now) for _ in range(want)])

    def _make(self, conn: WsConnection, t0: float, now: float) -> bytes:
        run = self.run
        cmd = run.workload.next(self.bound_client[conn.index])
        conn.seq += 1
        rid = str(conn.seq)
        conn.pending[rid] = (t0, cmd, now)
        run.inflight += 1
        if t0 >= run.measure_start:
            run.sent_measured += 1
            if run.sent_measured == run.requests_limit:
                run.stop_sending()
        if cmd[0] == "cancel":
            return b'{"type":"cancel","request_id":"%s","order_id":"%s",%s}' % (rid.encode(), cmd[4].encode(), cmd[2])
        return b'{"type":"order","request_id":"%s","order_type":"%s",%s}' % (rid.encode(), cmd[3], cmd[2])

    # -- open loop: due slots go round-robin over the open connections, one write per
    # connection per scheduler wake-up; no in-flight cap (the server's queueing is measured)
    def dispatch(self, origin: float, now: float) -> None:
        run = self.run
        conns = self.conns
        for _ in range(len(conns)):
            self.rr = (self.rr + 1) % len(conns)
            conn = conns[self.rr]
            if conn is not None and conn.open:
                batch = self.batches.get(conn)
                if batch is None:
                    batch = self.batches[conn] = []
                batch.append(self._make(conn, origin, now))
                return
        if origin >= run.measure_start:
            run.sent_measured += 1
            run.recorder.transport_error("not_connected", 1, "no open WebSocket for a due request")
            if run.sent_measured == run.requests_limit:
                run.stop_sending()

    def flush(self) -> None:
        if self.batches:
            for conn, payloads in self.batches.items():
                if conn.open:
                    conn.send_many(payloads)
            self.batches = {}

    # -- WsConnection callbacks
    def on_open(self, conn: WsConnection) -> None:
        pass

    def on_messages(self, conn: WsConnection, messages: list[bytes]) -> None:
        now = perf_counter()
        run = self.run
        rec = run.recorder
        pending = conn.pending
        refill = 0
        for raw in messages:
            try:
                reply = _ws_reply.decode(raw)
            except msgspec.DecodeError:
                rec.sample_error(f"undecodable WebSocket message: {raw[:120]!r}")
                continue
            rid = reply.request_id
            if rid is None:
                if reply.type == "error" and run.responses_all:
                    rec.sample_error(f"error without request_id: {raw[:200]!r}")
                continue
            entry = pending.pop(rid if isinstance(rid, str) else str(rid), None)
            if entry is None:
                continue
            t0, (kind, client, _, _, _, remember), _ = entry
            run.inflight -= 1
            run.responses_all += 1
            typ = reply.type
            if typ == "order_accepted" or typ == "cancel_accepted":
                outcome = 0
                status = typ
                if remember and reply.order is not None and reply.order.status in ("open", "partially_filled"):
                    run.workload.remember(client, str(reply.order.order_id))
            else:
                code = reply.error.code if reply.error is not None else None
                status = f"{typ}:{code}"
                if kind == "cancel" and typ == "error" and ws_cancel_error_is_race(code):
                    outcome = 1
                else:
                    outcome = 2
                    if t0 >= run.measure_start:
                        rec.sample_error(f"{kind} -> {raw[:200].decode('utf-8', 'replace')}")
            if t0 >= run.measure_start:
                rec.record(kind, status, now - t0, outcome)
            if not self.open_loop:
                refill += 1
        if refill and not run.stopping:
            if now >= run.end:
                run.stopping = True
                return
            conn.send_many([self._make(conn, now, now) for _ in range(refill)])

    def on_close_frame(self, conn: WsConnection, code: int, reason: str) -> None:
        if not self.run.stopping:
            self.run.recorder.sample_error(f"server closed the WebSocket: {code} {reason}")

    def on_lost(self, conn: WsConnection, exc) -> None:
        run = self.run
        if conn.pending:
            n = sum(1 for t0, _, _ in conn.pending.values() if t0 >= run.measure_start)
            run.inflight -= len(conn.pending)
            conn.pending.clear()
            if n:
                run.recorder.transport_error("connection_lost", n, f"connection_lost: {exc!r}")
        if not run.stopping and self.conns[conn.index] is conn:
            run.loop.create_task(self._reconnect(conn.index))

    async def _reconnect(self, i: int) -> None:
        run = self.run
        while not run.stopping:
            await asyncio.sleep(self.backoff[i])
            self.backoff[i] = min(self.backoff[i] * 2, 1.0)
            try:
                conn = await self._connect(i)
            except (OSError, asyncio.TimeoutError) as exc:
                if perf_counter() >= run.measure_start:
                    run.recorder.transport_error("connect_failed", 1, f"connect_failed: {exc!r}")
                continue
            if not self.open_loop:
                self._fill(conn, perf_counter())
            return

    def outstanding(self) -> int:
        return sum(len(c.pending) for c in self.conns if c is not None)

    def check_timeouts(self, now: float) -> None:
        limit = self.run.cfg.timeout
        for conn in self.conns:
            if conn is None or not conn.pending or conn.closed:
                continue
            # request ids grow, dicts keep insertion order: the first entry is the oldest
            t0, _, t_sent = next(iter(conn.pending.values()))
            if now - t_sent > limit:
                self.run.recorder.sample_error(f"timeout: a WebSocket request unanswered for {limit}s")
                conn.transport.abort()  # on_lost counts every pending request as lost

    def close(self) -> None:
        for conn in self.conns:
            if conn is not None:
                conn.close()


# -- reporting ---------------------------------------------------------------------------


def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _cpu_split() -> tuple[float, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime, ru.ru_stime


class Reporter:
    """Once a second: rotate the recorder's current second, print the progress line,
    enforce request timeouts. Ticks are aligned to the start of measurement."""

    def __init__(self, run: Run, driver, probe=None):
        self.run = run
        self.driver = driver
        self.probe = probe
        self.last_tick = None
        self.cpu_at_measure = None
        self.split_at_measure = None
        self.cpu_last = _cpu_seconds()
        self.t_cpu_last = perf_counter()

    async def loop(self) -> None:
        run = self.run
        warm_ticks = int(math.ceil(run.cfg.warmup)) if run.cfg.warmup > 0 else 0
        times = [run.measure_start - run.cfg.warmup + k for k in range(1, warm_ticks)]
        times.append(run.measure_start)
        k = 0
        while True:
            if k < len(times):
                t = times[k]
            else:
                t = run.measure_start + (k - len(times) + 1)
            k += 1
            delay = t - perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            now = perf_counter()
            self.driver.check_timeouts(now)
            if t < run.measure_start:
                self._line(f"warm-up {now - run.t_start:4.0f}s  responses {run.responses_all:,}  inflight {self.driver.outstanding()}")
            elif t == run.measure_start:
                self.cpu_at_measure = _cpu_seconds()
                self.split_at_measure = _cpu_split()
                self.last_tick = now
                # nothing measured yet: samples count from the scheduled/sent time >= measure_start
            else:
                self.tick(now)
            if run.stopping and t >= run.measure_start:
                return

    def tick(self, now: float, final: bool = False) -> dict | None:
        run = self.run
        if self.last_tick is None:
            return None
        interval = now - self.last_tick
        keep = not final or interval >= 0.25
        point = run.recorder.rotate(now - run.measure_start, max(interval, 1e-9), keep_point=keep)
        self.last_tick = now
        cpu = _cpu_seconds()
        point["client_cpu_pct"] = round((cpu - self.cpu_last) / max(now - self.t_cpu_last, 1e-9) * 100, 1)
        self.cpu_last, self.t_cpu_last = cpu, now
        if self.probe is not None:
            vis = self.probe.rotate()
            if keep:
                point.update(vis)
        if not final:
            rp99 = run.recorder.hist.percentile(99) * 1e3
            offered = f"  offered {run.cfg.rate:,.0f}/s" if run.cfg.rate else ""
            vis = ""
            if self.probe is not None and point.get("visible_p99_ms") is not None:
                vis = f"  visible p99 {point['visible_p99_ms']:.1f}ms"
            p50 = f"{point['p50_ms']:7.2f}" if point["p50_ms"] is not None else "      -"
            p99 = f"{point['p99_ms']:7.2f}" if point["p99_ms"] is not None else "      -"
            self._line(
                f"[{point['t']:5.0f}s] acked {point['acked_per_s']:9,.0f}/s{offered}"
                f"  p50 {p50}ms  p99 {p99}ms"
                f"  (run p99 {rp99:.2f}ms)  errors {point['errors']}  inflight {self.driver.outstanding()}"
                f"  cpu {point['client_cpu_pct']:.0f}%{vis}"
            )
        return point

    def _line(self, text: str) -> None:
        if self.run.cfg.progress:
            print(text, file=sys.stderr, flush=True)


def _machine() -> dict:
    return {
        "hostname": socket.gethostname(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
    }


async def run(cfg: Config) -> dict:
    """Run one benchmark in the current event loop; returns the result document (a dict,
    also written to cfg.out / plotted to cfg.plot when set)."""
    if cfg.duration is None and cfg.requests is None:
        raise ValueError("give --duration or --requests")
    if cfg.mode not in ("http", "ws"):
        raise ValueError("--mode is http or ws")
    if cfg.rate is not None and cfg.rate <= 0:
        raise ValueError("--rate must be > 0")
    started_at = datetime.now(timezone.utc)
    r = Run(cfg)
    driver = HttpDriver(r) if cfg.mode == "http" else WsDriver(r)
    await driver.start()
    probe = None
    if cfg.visibility:
        from bench.loadgen.probe import VisibilityProbe

        probe = VisibilityProbe(r)
        await probe.start()

    r.t_start = perf_counter()
    r.measure_start = r.t_start + cfg.warmup
    if cfg.duration is not None:
        r.end = r.measure_start + cfg.duration
    reporter = Reporter(r, driver, probe)
    reporter_task = asyncio.create_task(reporter.loop())
    probe_task = asyncio.create_task(probe.loop()) if probe is not None else None
    driver.begin()

    # wait for the end of the measured window (or the request count), then drain
    if cfg.duration is not None and cfg.requests is None:
        await asyncio.sleep(max(0.0, r.end - perf_counter()))
    elif cfg.duration is None:
        await r.requests_done.wait()
    else:
        try:
            await asyncio.wait_for(r.requests_done.wait(), max(0.0, r.end - perf_counter()))
        except asyncio.TimeoutError:
            pass
    r.stopping = True
    if cfg.rate is not None and cfg.mode == "http":
        # due slots no connection was free to take: the offered rate was not sustained
        r.unsent_scheduled = sum(1 for t in driver.backlog if t >= r.measure_start)
    drain_deadline = perf_counter() + cfg.timeout
    while r.inflight > 0 and perf_counter() < drain_deadline:
        await asyncio.sleep(0.005)
    t_done = perf_counter()
    if r.inflight > 0:
        r.recorder.transport_error("unanswered_at_end", r.inflight, f"{r.inflight} requests unanswered at the end")
    reporter_task.cancel()
    try:
        await reporter_task
    except asyncio.CancelledError:
        pass
    if reporter.last_tick is None:  # run shorter than its first tick
        reporter.last_tick = r.measure_start
        reporter.cpu_at_measure = reporter.cpu_at_measure or _cpu_seconds()
        reporter.split_at_measure = reporter.split_at_measure or _cpu_split()
    reporter.tick(t_done, final=True)
    cpu_end = _cpu_seconds()
    user_end, sys_end = _cpu_split()
    if probe is not None:
        probe_task.cancel()
        try:
            await probe_task
        except asyncio.CancelledError:
            pass
        await probe.close()
    driver.close()
    await asyncio.sleep(0)

    totals = r.recorder.totals()
    # throughput over the window the measured requests were sent and answered in (drain included)
    elapsed = t_done - r.measure_start
    cpu_used = cpu_end - (reporter.cpu_at_measure if reporter.cpu_at_measure is not None else cpu_end)
    attempts = totals["responses"] + sum(totals["transport_errors"].values())
    summary = {
        "duration_s": round(elapsed, 3),
        "sent": r.sent_measured,
        "acked": totals["acked"],
        "acked_per_s": round(totals["acked"] / elapsed, 1) if elapsed > 0 else 0.0,
        "responses": totals["responses"],
        "responses_per_s": round(totals["responses"] / elapsed, 1) if elapsed > 0 else 0.0,
        "errors": totals["errors"],
        "error_rate": round(totals["error_rate"], 6),
        "expected_rejects": totals["expected_rejects"],
        "latency_ms": totals["latency_ms"],
        "status": totals["status"],
        "transport_errors": totals["transport_errors"],
        "by_kind": totals["by_kind"],
        "error_samples": totals["error_samples"],
    }
    if cfg.rate is not None:
        summary["offered_rate"] = cfg.rate
        summary["unsent_scheduled"] = r.unsent_scheduled
    # A closed-loop client sends little during an outage, so the error *rate* understates
    # it: a measured second with no ack at all is a stall and fails the run by itself.
    stalls = sum(1 for p in r.recorder.series if p["acked"] == 0)
    summary["stalled_seconds"] = stalls
    fail = []
    if stalls > cfg.max_stall_seconds and (cfg.rate is None or cfg.rate >= 10):
        fail.append(f"{stalls} measured second(s) without any acknowledged request (max {cfg.max_stall_seconds})")
    if totals["acked"] == 0:
        fail.append("no request was acknowledged")
    if totals["error_rate"] > cfg.max_error_rate:
        fail.append(f"error rate {totals['error_rate']:.2%} > max {cfg.max_error_rate:.2%}")
    result = {
        "tool": "bench.loadgen",
        "format": 1,
        "label": cfg.label,
        "started_at": started_at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "machine": _machine(),
        "config": {**asdict(cfg), "connections": cfg.resolved_connections(), "seed": r.seed,
                   "clients_used": len(r.client_ids), "auth": bool(r.api_keys)},
        "summary": summary,
        "client": {
            "cpu_s": round(cpu_used, 3),
            "cpu_us_per_request": round(cpu_used / attempts * 1e6, 2) if attempts else None,
            "user_us_per_request": round((user_end - reporter.split_at_measure[0]) / attempts * 1e6, 2) if attempts else None,
            "system_us_per_request": round((sys_end - reporter.split_at_measure[1]) / attempts * 1e6, 2) if attempts else None,
            "cpu_pct_of_one_core": round(cpu_used / elapsed * 100, 1) if elapsed > 0 else None,
            "note": "the generator's own user+system CPU over the measured window (probe included)",
        },
        "series": r.recorder.series,
        "visibility": probe.summary() if probe is not None else None,
        "passed": not fail,
        "fail_reasons": fail,
    }
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(result, indent=1, default=str) + "\n")
    if cfg.plot:
        from bench.plot import plot_results

        plot_results([result], cfg.plot)
    return result


def format_summary(result: dict) -> str:
    s = result["summary"]
    lat = s["latency_ms"]
    cfg = result["config"]
    lines = []
    loop = f"open loop {cfg['rate']:,.0f}/s offered ({cfg['schedule']})" if cfg["rate"] else "closed loop"
    target = cfg["url"] if cfg["mode"] == "http" else cfg["ws_url"]
    lines.append(f"{cfg['mode']} -> {target}, {cfg['connections']} connections"
                 + (f" x {cfg['inflight']} in flight" if cfg["mode"] == "ws" and not cfg["rate"] else "")
                 + f", {loop}, {s['duration_s']:.1f}s measured")
    lines.append(f"acked {s['acked']:,} ({s['acked_per_s']:,.1f}/s)   responses {s['responses']:,}   "
                 f"errors {s['errors']:,} ({s['error_rate']:.3%})   expected cancel races {s['expected_rejects']:,}")
    if lat.get("count"):
        lines.append("latency ms: " + "  ".join(f"{k} {lat[k]:.2f}" for k in ("p50", "p95", "p99", "p999", "max")))
    for kind, info in s["by_kind"].items():
        k = info["latency_ms"]
        lines.append(f"  {kind:<7} n={k['count']:<8,} p50 {k['p50']:.2f}  p99 {k['p99']:.2f}  status {info['status']}")
    if s["transport_errors"]:
        lines.append(f"transport errors: {s['transport_errors']}")
    if s.get("unsent_scheduled"):
        lines.append(f"WARNING: {s['unsent_scheduled']:,} scheduled requests were never sent "
                     f"(every connection busy): the offered rate was not sustained; raise --connections")
    for sample in s["error_samples"][:5]:
        lines.append(f"  e.g. {sample}")
    c = result["client"]
    if c["cpu_us_per_request"] is not None:
        lines.append(f"client cpu: {c['cpu_us_per_request']:.1f} us/request (user {c['user_us_per_request']:.1f}, "
                     f"system {c['system_us_per_request']:.1f}; {c['cpu_pct_of_one_core']:.0f}% of one core)")
    v = result.get("visibility")
    if v:
        for name in ("orderbook", "stream"):
            d = v.get(name) or {}
            if d.get("count"):
                lines.append(f"order-to-visible ({name}): n={d['count']} p50 {d['p50']:.1f}ms p99 {d['p99']:.1f}ms max {d['max']:.1f}ms")
        if v.get("failures"):
            lines.append(f"visibility probe failures: {v['failures']}")
    lines.append("PASS" if result["passed"] else "FAIL: " + "; ".join(result["fail_reasons"]))
    return "\n".join(lines)


def _parse_mids(text: str | None) -> dict[str, str]:
    mids = {}
    for part in (text or "").split(","):
        if part.strip():
            sym, _, value = part.partition("=")
            Decimal(value)  # validate
            mids[sym.strip()] = value.strip()
    return mids


def parse_args(argv=None) -> Config:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen", description="\n\n".join(__doc__.split("\n\n")[:4]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("http", "ws"), default="http")
    p.add_argument("--url", default="http://127.0.0.1:8001", help="command service or gateway (HTTP mode)")
    p.add_argument("--ws-url", default="ws://127.0.0.1:8001/ws", help="command WebSocket (ws mode)")
    p.add_argument("--connections", "-c", type=int, default=None, help="connections (default 64 http, 4 ws)")
    p.add_argument("--inflight", type=int, default=32, help="ws: requests outstanding per connection")
    p.add_argument("--rate", type=float, default=None, help="open loop: offered requests/s (default closed loop)")
    p.add_argument("--schedule", choices=("poisson", "uniform"), default="poisson")
    p.add_argument("--duration", "-d", type=float, default=None, help="measured seconds (default 10)")
    p.add_argument("--requests", "-n", type=int, default=None, help="stop after this many measured requests")
    p.add_argument("--warmup", type=float, default=0.0, help="seconds of load before measuring")
    p.add_argument("--clients", type=int, default=100, help="client ids PREFIX-000.. (or the first N of --api-keys-file)")
    p.add_argument("--client-prefix", default="lg")
    p.add_argument("--instruments", default="BTC-USD,ETH-USD,SOL-USD")
    p.add_argument("--mix", default="limit=60,cancel=25,market=10,ioc=5",
                   help="weights of GTC limit, cancel (of an own resting order), market, IOC limit")
    p.add_argument("--mid", default=None, help="starting mid prices, e.g. BTC-USD=65000,ETH-USD=3000")
    p.add_argument("--api-keys-file", default=None, help="JSON {client_id: api_key}; sends Authorization: Bearer")
    p.add_argument("--idempotency-keys", action="store_true", help="send a unique idempotency_key per order")
    p.add_argument("--idempotency-share", type=float, default=1.0,
                   help="with --idempotency-keys: the share of orders that carry one (0.5 = half)")
    p.add_argument("--timeout", type=float, default=10.0, help="per-request timeout, seconds")
    p.add_argument("--max-error-rate", type=float, default=0.01, help="exit 1 above this error fraction")
    p.add_argument("--max-stall-seconds", type=int, default=0,
                   help="exit 1 when more measured seconds than this had no ack at all (default 0)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--instruments-file", default=None)
    p.add_argument("--out", default=None, help="JSON result file")
    p.add_argument("--plot", default=None, help="PNG plot file")
    p.add_argument("--label", default=None, help="free text stored in the result")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument("--visibility", action="store_true", help="probe order-to-visible latency on the query side")
    p.add_argument("--query-url", default="http://127.0.0.1:8002", help="visibility: GET /market/orderbook here")
    p.add_argument("--query-ws", default="ws://127.0.0.1:8002/stream", help="visibility: trades stream here")
    p.add_argument("--probe-interval", type=float, default=0.1, help="visibility: seconds between probes")
    p.add_argument("--probe-levels", type=int, default=100, help="visibility: levels= of the orderbook poll")
    a = p.parse_args(argv)
    duration = a.duration if (a.duration is not None or a.requests is not None) else 10.0
    return Config(
        mode=a.mode, url=a.url, ws_url=a.ws_url, connections=a.connections, inflight=a.inflight, rate=a.rate,
        schedule=a.schedule, duration=duration, requests=a.requests, warmup=a.warmup, clients=a.clients,
        client_prefix=a.client_prefix, instruments=[s.strip() for s in a.instruments.split(",") if s.strip()],
        mix=a.mix, mids=_parse_mids(a.mid), api_keys_file=a.api_keys_file, idempotency_keys=a.idempotency_keys,
        idempotency_share=a.idempotency_share,
        timeout=a.timeout, max_error_rate=a.max_error_rate, max_stall_seconds=a.max_stall_seconds, seed=a.seed, instruments_file=a.instruments_file,
        out=a.out, plot=a.plot, label=a.label, progress=not a.quiet, visibility=a.visibility,
        query_url=a.query_url, query_ws=a.query_ws, probe_interval=a.probe_interval, probe_levels=a.probe_levels,
    )


def main(argv=None) -> int:
    cfg = parse_args(argv)
    parse_mix(cfg.mix)  # fail fast on a bad --mix
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    try:
        result = runner(run(cfg))
    except (ConnectionError, OSError, ValueError) as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(format_summary(result))
    if cfg.out:
        print(f"result: {cfg.out}")
    if cfg.plot:
        print(f"plot: {cfg.plot}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
