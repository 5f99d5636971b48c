
"""Order-to-visible probe for the full-pipeline benchmark (--visibility).

Every ~100 ms, while the load runs, the probe submits a crossing pair on the command
side (a GTC sell 2% above the instrument's mid, out of the load's reach, then an IOC buy
at the same price from another client, which trades with the best ask - or with that
sell on an empty book) and takes the journal `seq` of the trade from the 201 response. The order is visible on the read side once
  - GET {query}/market/orderbook?instrument=..&levels=.. reports seq >= that seq
    (the projection has applied the order's events), and
  - a trade with seq >= that seq arrives on the query WebSocket {query_ws} (trades channel).
Both are measured from the moment the order was sent, so the figure is the whole path a
user sees: command service, commit, relay, broker, projector, Redis, NATS fan-out.

Using the journal seq instead of searching the book for the probe's own price level
makes the check exact even when load orders rest at the same price.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from time import perf_counter

import msgspec

from bench.loadgen.net import SimpleHttpClient, WsConnection, split_url
from bench.loadgen.stats import percentile, summary_ms


class _BookSeq(msgspec.Struct):
    seq: int | None = None


_book_decoder = msgspec.json.Decoder(_BookSeq)  # skips the levels: only seq matters


class _StreamMsg(msgspec.Struct):
    type: str = ""
    instrument: str | None = None
    seq: int | None = None


_stream_decoder = msgspec.json.Decoder(_StreamMsg)
MAX_CONCURRENT_PROBES = 20
PROBE_TIMEOUT = 10.0
POLL_INTERVAL = 0.005


class VisibilityProbe:
    def __init__(self, run):
        self.run = run
        cfg = run.cfg
        self.cfg = cfg
        if run.api_keys:
            ids = list(run.api_keys)
            self.clients = [ids[0], ids[1] if len(ids) > 1 else ids[0]]
            self.auth = [b"Authorization: Bearer %s\r\n" % run.api_keys[c].encode() for c in self.clients]
        else:
            self.clients = ["probe-a", "probe-b"]  # two clients: self-trade prevention would stop one
            self.auth = [b"", b""]
        self.book_all: list[float] = []
        self.stream_all: list[float] = []
        self.book_cur: list[float] = []
        self.stream_cur: list[float] = []
        self.failures: dict[str, int] = {}
        self.probes = 0
        self.stream_seen: dict[str, collections.deque] = collections.defaultdict(lambda: collections.deque(maxlen=20000))
        self.waiters: dict[str, list] = collections.defaultdict(list)
        self.tasks: set[asyncio.Task] = set()
        self.ws: WsConnection | None = None
        self.stream_messages = 0
        self.closing = False

    # -- stream
    async def start(self) -> None:
        host, port, path, host_header = split_url(self.cfg.query_ws, 80)
        loop = asyncio.get_running_loop()
        headers = self.auth[0]
        _, ws = await loop.create_connection(lambda: WsConnection(self, host_header, path, headers), host, port)
        await asyncio.wait_for(ws.ready, 10)
        self.ws = ws
        ws.send_many(
            [
                msgspec.json.encode({"type": "subscribe", "channels": ["trades"], "instrument": m.symbol})
                for m in self.run.models
            ]
        )

    def on_open(self, conn) -> None:
        pass

    def on_messages(self, conn, messages) -> None:
        now = perf_counter()
        for raw in messages:
            try:
                msg = _stream_decoder.decode(raw)
            except msgspec.DecodeError:
                continue
            if msg.type != "trade" or msg.seq is None or msg.instrument is None:
                continue
            self.stream_messages += 1
            self.stream_seen[msg.instrument].append((msg.seq, now))
            waiters = self.waiters.get(msg.instrument)
            if waiters:
                keep = []
                for seq, fut in waiters:
                    if msg.seq >= seq:
                        if not fut.done():
                            fut.set_result(now)
                    else:
                        keep.append((seq, fut))
                self.waiters[msg.instrument] = keep

    def on_close_frame(self, conn, code, reason) -> None:
        self._fail(f"stream_closed:{code}")

    def on_lost(self, conn, exc) -> None:
        if not self.run.stopping:
            self._fail("stream_lost")
        for waiters in self.waiters.values():
            for _, fut in waiters:
                if not fut.done():
                    fut.set_exception(ConnectionError("query stream lost"))
            waiters.clear()

    # -- probing
    async def loop(self) -> None:
        models = self.run.models
        i = 0
        next_t = perf_counter()
        while not self.run.stopping:
            next_t += self.cfg.probe_interval
            delay = next_t - perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                next_t = perf_counter()  # fell behind: do not burst to catch up
            if self.run.stopping:
                break
            if len(self.tasks) >= MAX_CONCURRENT_PROBES:
                self._fail("skipped_too_many_pending")
                continue
            task = asyncio.create_task(self._probe(models[i % len(models)]))
            i += 1
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _order(self, cmd: SimpleHttpClient, who: int, body: dict) -> tuple[float, dict]:
        t0 = perf_counter()
        status, raw = await cmd.request(
            "POST", "/orders", msgspec.json.encode(body), self.auth[who], timeout=PROBE_TIMEOUT
        )
        if status != 201:
            raise ProbeError(f"order_http_{status}")
        return t0, msgspec.json.decode(raw)

    async def _probe(self, model) -> None:
        measured = perf_counter() >= self.run.measure_start
        cmd = SimpleHttpClient(self.cfg.url)  # one connection per probe: probes overlap
        leftover = None
        try:
            await cmd.connect()  # before t0: connecting is not part of the order's path
            # Far above the mid (2%), where the load's limit orders never reach: the sell
            # rests untouched, and the IOC buy at the same price must trade, with the best
            # ask (usually a load order) or, on an empty book, with this sell.
            price = model.fmt_price(model._clamp(model.mid + model.base // 50))
            qty = model.qty_text[0]
            base = {"instrument": model.symbol, "type": "limit", "price": price, "quantity": qty}
            # sell then buy on one connection: the buy reaches the sequencer after the sell
            t_a, a = await self._order(cmd, 0, {**base, "client_id": self.clients[0], "side": "sell", "time_in_force": "GTC"})
            order = a.get("order") or {}
            if order.get("status") in ("open", "partially_filled") and order.get("order_id"):
                leftover = order["order_id"]  # cancelled after the measurement, not before
            t_b, b = await self._order(cmd, 1, {**base, "client_id": self.clients[1], "side": "buy", "time_in_force": "IOC"})
            seq, t0 = None, None
            for t, reply in ((t_b, b), (t_a, a)):
                seqs = [tr.get("seq") for tr in reply.get("trades") or [] if isinstance(tr.get("seq"), int)]
                if seqs:
                    seq, t0 = max(seqs), t
                    break
            if seq is None:
                raise ProbeError("no_trade_with_seq")
            self.probes += 1
            book, stream = await asyncio.gather(
                self._book_visible(model.symbol, seq, t0), self._stream_visible(model.symbol, seq, t0),
                return_exceptions=True,
            )
            if measured:
                for value, cur, every, name in (
                    (book, self.book_cur, self.book_all, "orderbook"),
                    (stream, self.stream_cur, self.stream_all, "stream"),
                ):
                    if isinstance(value, BaseException):
                        self._fail(f"{name}_{type(value).__name__}")
                    else:
                        cur.append(value)
                        every.append(value)
        except ProbeError as exc:
            if measured:
                self._fail(str(exc))
        except (ConnectionError, OSError, asyncio.TimeoutError, msgspec.DecodeError) as exc:
            if measured:
                self._fail(type(exc).__name__)
        finally:
            if leftover is not None and not self.closing:
                await self._cancel(cmd, leftover)
            cmd.close()

    async def _cancel(self, cmd: SimpleHttpClient, order_id: str) -> None:
        with contextlib.suppress(Exception):  # best-effort clean-up of the probe's own order
            await cmd.request(
                "POST", f"/orders/{order_id}/cancel",
                msgspec.json.encode({"client_id": self.clients[0]}), self.auth[0], timeout=PROBE_TIMEOUT,
            )

    async def _book_visible(self, symbol: str, seq: int, t0: float) -> float:
        path = f"/market/orderbook?instrument={symbol}&levels={self.cfg.probe_levels}"
        deadline = t0 + PROBE_TIMEOUT
        client = SimpleHttpClient(self.cfg.query_url)  # its own connection: probes overlap
        try:
            while True:
                status, raw = await client.request("GET", path, None, self.auth[0], timeout=PROBE_TIMEOUT)
                now = perf_counter()
                if status == 200:
                    got = _book_decoder.decode(raw).seq
                    if got is not None and got >= seq:
                        return now - t0
                if now > deadline:
                    raise asyncio.TimeoutError()
                # 5 ms between polls: ~2.5 ms of resolution, and at 10 probes/s with ~100 ms
                # of lag a couple of hundred GETs/s, small next to the query service's capacity
                await asyncio.sleep(POLL_INTERVAL)
        finally:
            client.close()

    async def _stream_visible(self, symbol: str, seq: int, t0: float) -> float:
        for s, t in self.stream_seen.get(symbol, ()):  # arrived before we asked
            if s >= seq:
                return t - t0
        if self.ws is None or self.ws.closed:
            raise ConnectionError("query stream not connected")
        fut = asyncio.get_running_loop().create_future()
        self.waiters[symbol].append((seq, fut))
        t = await asyncio.wait_for(fut, max(0.1, t0 + PROBE_TIMEOUT - perf_counter()))
        return t - t0

    def _fail(self, what: str) -> None:
        self.failures[what] = self.failures.get(what, 0) + 1

    # -- reporting
    def rotate(self) -> dict:
        book = sorted(self.book_cur)
        stream = sorted(self.stream_cur)
        self.book_cur, self.stream_cur = [], []
        ms = lambda v: None if v != v else round(v * 1e3, 3)  # noqa: E731 (nan -> None)
        return {
            "visible_n": len(book),
            "visible_p50_ms": ms(percentile(book, 50)),
            "visible_p99_ms": ms(percentile(book, 99)),
            "stream_p50_ms": ms(percentile(stream, 50)),
            "stream_p99_ms": ms(percentile(stream, 99)),
        }

    def summary(self) -> dict:
        return {
            "method": "crossing pair per probe (GTC sell 2% above mid, IOC buy at that price); visible when GET /market/orderbook seq >= trade seq "
            "(orderbook) and when the trade arrives on the query WebSocket (stream); from order send",
            "interval_s": self.cfg.probe_interval,
            "probes": self.probes,
            "orderbook": summary_ms(sorted(self.book_all)),
            "stream": summary_ms(sorted(self.stream_all)),
            "failures": dict(self.failures),
            "stream_trades_seen": self.stream_messages,
        }

    async def close(self) -> None:
        self.closing = True
        if self.tasks:  # still waiting for visibility when the run ended: report, not hide
            self.failures["unfinished_at_end"] = self.failures.get("unfinished_at_end", 0) + len(self.tasks)
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        for waiters in self.waiters.values():
            for _, fut in waiters:
                if not fut.done():
                    fut.cancel()
        if self.ws is not None:
            self.ws.close()


class ProbeError(Exception):
    pass
