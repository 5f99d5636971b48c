
"""WebSocket /stream: subscriptions fed from the NATS feed, snapshots from Redis, order
entry forwarded to the command service over NATS request/reply.

Each connection has a bounded send queue drained by its own writer task. Producers (the
feed relay, the heartbeat, replies) never await a socket: when a queue is full the
connection is closed with a reason, so one slow client never stalls the others.

Order book consistency: a subscriber gets a snapshot at seq S, then updates whose prev_seq
is the seq of the previous orderbook message sent to it. Feed messages that arrive while
the snapshot is read from Redis are buffered and those with seq <= S dropped afterwards;
the snapshot is a MULTI read (levels and last_seq together) and every batch moves last_seq
atomically, so S is a batch boundary and the buffered messages continue it exactly. If the
replica sees a feed gap (prev_seq != the seq it last saw: a NATS message was lost) it
resnapshots every subscriber of that instrument.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from decimal import Decimal

import msgspec
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from contracts.api import ApiError, iso_ms, json_encoder
from contracts.auth import REVOKED_CLOSE_CODE, SESSION_RECHECK_S, Authenticator, Principal, bearer_token
from contracts.instruments import Instruments
from contracts.ratelimit import rate_limit_fields
from contracts.topics import ORDER_REQUEST_SUBJECT
from query_service import views
from query_service.bus import Bus
from query_service.feed import FeedMessage, book_changes_text, decode_feed, order_update_text, ticker_text
from query_service.metrics import QueryMetrics
from query_service.params import DEFAULT_INSTRUMENT
from query_service.redis_keys import Keys
from query_service.render import level_rows
from query_service.settings import QuerySettings

log = logging.getLogger("query_service.stream")

CHANNELS = ("trades", "orders", "orderbook", "ticker")
# The /stream frame's own members; every other member of an order frame is the order's and is
# forwarded as is, so the command service judges all of them exactly like POST /orders (a fixed
# list here once dropped self_trade_prevention, display_quantity and expire_time silently, and
# hid unknown fields from its unknown_field check).
FRAME_FIELDS = frozenset({"type", "request_id", "api_key", "order_type"})
MAX_IN_FLIGHT_ORDERS = 256
# Orderbook snapshots: `depth` levels per side (issue 20: full-depth snapshots let 8 connections
# pull 456 MB in 10 s from a deep book). Updates carry changes at any depth, so a client's book
# is exact at prices at or better than the snapshot's last level when the snapshot is full.
SNAPSHOT_DEPTH = 100
MAX_SNAPSHOT_DEPTH = 1000
_frame_decoder = msgspec.json.Decoder(float_hook=Decimal)  # numbers stay exact decimals


def _err(code: str, message: str, field: str | None = None, request_id=None) -> dict:
    e = {"code": code, "message": message}
    if field is not None:
        e["field"] = field
    msg = {"type": "error", "error": e}
    if request_id is not None:
        msg["request_id"] = request_id
    return msg


class _Bucket:
    """A token bucket of one connection (no keys, no dict: two floats per connection)."""

    __slots__ = ("rate", "burst", "tokens", "at")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at = time.monotonic()

    def take(self) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class _BookSub:
    __slots__ = ("live", "seq", "applied", "buffer", "depth")

    def __init__(self, depth: int = SNAPSHOT_DEPTH) -> None:
        self.depth = depth
        self.live = False
        self.seq = 0  # seq of the last orderbook message sent on this connection
        self.applied = 0  # seq of the last feed message this connection's book reflects
        self.buffer: list[FeedMessage] = []


class Conn:
    def __init__(self, hub: "Hub", socket, identity: Principal | None, api_key: str | None):
        self.hub = hub
        self.socket = socket
        self.identity = identity
        self.api_key = api_key
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=hub.settings.ws_send_queue)
        self.channels: dict[str, set[str]] = {}  # instrument -> channels
        self.books: dict[str, _BookSub] = {}
        self.order_client: dict[str, str] = {}  # instrument -> client whose orders it follows
        self.closed = False
        self.in_flight = 0
        self.writer: asyncio.Task | None = None
        st = hub.settings
        # Per connection, before a frame is even decoded (issue 20: one client's frames stalled a
        # replica): every message, and subscribes (each may cost a snapshot read and send).
        self.messages = _Bucket(st.ws_messages_per_second, 2 * st.ws_messages_per_second)
        self.subscribes = _Bucket(st.ws_subscribes_per_second, 2 * st.ws_subscribes_per_second)

    def send(self, data: str) -> None:
        if self.closed:
            return
        try:
            self.queue.put_nowait(data)
        except asyncio.QueueFull:
            self.hub.metrics.ws_slow_disconnects.inc()
            self.hub.metrics.ws_messages_dropped.inc(self.queue.qsize() + 1)
            self.kill(1008, "slow consumer: send queue full")

    def send_obj(self, obj: dict) -> None:
        self.send(json_encoder.encode(obj).decode())

    def kill(self, code: int, reason: str, last: dict | None = None) -> None:
        """Close the connection (`last`: a message sent just before the close frame)."""
        if self.closed:
            return
        self.closed = True
        self.hub.detach(self)
        if self.writer is not None:
            self.writer.cancel()
        asyncio.get_running_loop().create_task(self._close(code, reason, last))

    async def _close(self, code: int, reason: str, last: dict | None = None) -> None:
        # Not cancelled early: the server's WebSocket protocol bounds the closing handshake
        # itself (close_timeout) and aborts the TCP connection when a client that does not
        # read cannot even take the close frame.
        with contextlib.suppress(Exception):  # a client that vanished or never reads: the close is best effort, the socket is aborted
            if last is not None:
                await asyncio.wait_for(self.socket.send_data(json_encoder.encode(last).decode()), 5.0)
            await asyncio.wait_for(self.socket.close(code=code, reason=reason), 30.0)

    async def write_loop(self) -> None:
        sent = self.hub.metrics.ws_messages_sent
        q = self.queue
        send = self.socket.send_data
        try:
            while True:
                data = await q.get()
                await send(data)
                sent.inc()
        except asyncio.CancelledError:
            pass
        except Exception:
            self.closed = True


class Hub:
    def __init__(
        self,
        settings: QuerySettings,
        instruments: Instruments,
        redis,
        bus: Bus,
        auth: Authenticator,
        metrics: QueryMetrics,
        books: views.BookReader,
    ):
        self.settings = settings
        self.instruments = instruments
        self.redis = redis
        self.keys = Keys(settings.redis_prefix)
        self.bus = bus
        self.auth = auth
        self.metrics = metrics
        self.books = books
        self.read_limiter = None  # contracts.ratelimit.TokenBuckets, set by the app (subscriptions)
        self.conns: set[Conn] = set()
        self.subs: dict[tuple[str, str], set[Conn]] = {}
        self.order_subs: dict[tuple[str, str], set[Conn]] = {}
        self.feed_seq: dict[str, int] = {}
        self._snapshots: dict[str, asyncio.Task] = {}
        self._heartbeat: asyncio.Task | None = None
        self._key_checks: asyncio.Task | None = None
        bus.subscribe_on_connect("exchange.feed.*", self._on_nats)
        bus.on_reconnect(self.resync_all)

    async def start(self) -> None:
        self._heartbeat = asyncio.create_task(self._heartbeats())
        if self.auth.enabled:
            self._key_checks = asyncio.create_task(self._recheck_keys())

    async def stop(self) -> None:
        if self._heartbeat:
            self._heartbeat.cancel()
        if self._key_checks:
            self._key_checks.cancel()
        for c in list(self.conns):
            c.kill(1001, "server shutting down")

    # ------------------------------------------------------------------ feed relay

    async def _on_nats(self, msg) -> None:
        try:
            m = decode_feed(msg.data)
        except Exception:
            log.error("stream: undecodable feed message on %s", msg.subject)
            return
        self.on_feed(m)

    def on_feed(self, m: FeedMessage) -> None:
        inst = m.instrument
        last = self.feed_seq.get(inst)
        if last is not None and m.seq <= last and not m.reset:
            return  # old or duplicate (e.g. two projectors during a rebalance)
        if m.reset or (last is not None and m.prev_seq != last):
            self.metrics.feed_gaps.labels(inst).inc()
        self.feed_seq[inst] = m.seq
        if self.books.feed_seq.get(inst, 0) < m.seq or m.reset:
            self.books.feed_seq[inst] = m.seq
        spec = self.instruments.get(inst)
        if spec is None:
            return
        subs = self.subs.get((inst, "orderbook"))
        if subs:
            changes = book_changes_text(spec, m)
            shared: dict[int, str] = {}
            for c in list(subs):
                b = c.books.get(inst)
                if b is None:
                    continue
                if not b.live:
                    b.buffer.append(m)
                elif not self._book_feed(c, b, inst, m, changes, shared):
                    self._resnapshot_conn(c, inst)
        if m.trades:
            subs = self.subs.get((inst, "trades"))
            if subs:
                texts = [bytes(t).decode() for t in m.trades]
                for c in list(subs):
                    for t in texts:
                        c.send(t)
        if m.orders and self.order_subs:
            for client, raw in m.orders:
                subs = self.order_subs.get((inst, client))
                if subs:
                    # rendered here, for the subscribers this replica has (feed.py)
                    text = order_update_text(spec, m, raw)
                    for c in list(subs):
                        c.send(text)
        if m.ticker is not None:
            subs = self.subs.get((inst, "ticker"))
            if subs:
                text = ticker_text(spec, inst, m.ticker)
                for c in list(subs):
                    c.send(text)

    @staticmethod
    def _book_feed(c: Conn, b: _BookSub, inst: str, m: FeedMessage, changes: str | None, shared: dict) -> bool:
        """Advance one subscriber's book by a feed message. False = it does not continue
        the book this connection holds (a lost NATS message): resnapshot."""
        if m.seq <= b.applied:
            return True
        if m.prev_seq != b.applied:
            return False
        b.applied = m.seq
        if changes is None:
            return True
        text = shared.get(b.seq)
        if text is None:
            # Most subscribers share prev_seq: encode once per distinct prev_seq.
            text = (
                f'{{"type":"orderbook","action":"update","instrument":"{inst}",'
                f'"prev_seq":{b.seq},"seq":{m.seq},"changes":{changes}}}'
            )
            shared[b.seq] = text
        b.seq = m.seq
        c.send(text)
        return True

    async def resync_all(self) -> None:
        for inst in {i for (i, ch) in self.subs if ch == "orderbook"}:
            for c in list(self.subs.get((inst, "orderbook"), ())):
                self._resnapshot_conn(c, inst, start=False)
            self._start_snapshot(inst)

    def _resnapshot_conn(self, c: Conn, inst: str, start: bool = True) -> None:
        b = c.books.get(inst)
        if b is None:
            return
        b.live = False
        b.buffer = []
        if start:
            self._start_snapshot(inst)

    def _start_snapshot(self, inst: str) -> None:
        t = self._snapshots.get(inst)
        if t is not None and not t.done():
            # A read is under way, but it may have started before the messages the
            # waiting subscribers now buffer: chain another read after it.
            if getattr(t, "chained", False):
                return  # the chained read will serve these subscribers too

            async def again(prev=t):
                with contextlib.suppress(Exception):  # only the order of sends matters here; the previous send's failure closed that client
                    await prev
                await self._snapshot(inst)

            nt = asyncio.create_task(again())
            nt.chained = True  # type: ignore[attr-defined]
            self._snapshots[inst] = nt
            return
        self._snapshots[inst] = asyncio.create_task(self._snapshot(inst))

    async def _snapshot(self, inst: str) -> None:
        """One Redis read serves every subscriber of `inst` that is waiting for a snapshot."""
        spec = self.instruments.get(inst)
        waiting = [c for c in self.subs.get((inst, "orderbook"), ()) if (b := c.books.get(inst)) and not b.live]
        if not waiting:
            return
        depth = max(b.depth for c in waiting if (b := c.books.get(inst)) is not None)
        delay = 0.05
        while True:
            try:
                seq, _ts, bids, asks = await views.read_top(self.redis, self.keys, inst, depth)
                break
            except views.NotReady:
                # Redis lost the views and they are being rebuilt: the subscribers wait for
                # a snapshot of complete views rather than get an empty or older book.
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
            except Exception as exc:
                log.warning("stream: snapshot of %s failed (%s); retrying", inst, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        texts: dict[int, str] = {}  # depth -> encoded snapshot, shared by the waiters that asked for it
        retry = False
        for c in waiting:
            b = c.books.get(inst)
            if c.closed or b is None or b.live:
                continue
            text = texts.get(b.depth)
            if text is None:
                text = texts[b.depth] = json_encoder.encode(
                    {
                        "type": "orderbook",
                        "action": "snapshot",
                        "instrument": inst,
                        "seq": seq,
                        "depth": b.depth,
                        "bids": level_rows(spec, bids[: b.depth], False),
                        "asks": level_rows(spec, asks[: b.depth], False),
                    }
                ).decode()
            c.send(text)
            b.seq = b.applied = seq
            b.live = True
            buffered, b.buffer = b.buffer, []
            shared: dict[int, str] = {}
            for m in buffered:
                changes = book_changes_text(spec, m)
                if not self._book_feed(c, b, inst, m, changes, shared):
                    b.live = False
                    b.buffer = []
                    retry = True
                    break
        if retry:
            self._start_snapshot(inst)

    async def _recheck_keys(self) -> None:
        """Close every connection whose key was revoked (issue 20: /stream kept serving a revoked
        key's private orders channel). One cached lookup per distinct key per round."""
        while True:
            await asyncio.sleep(SESSION_RECHECK_S)
            by_key: dict[str, list[Conn]] = {}
            for c in self.conns:
                if c.identity is not None and c.api_key:
                    by_key.setdefault(c.api_key, []).append(c)
            for key, conns in by_key.items():
                try:
                    revoked = await self.auth.revoked(key)
                except Exception as exc:  # never let one lookup end the checks
                    log.warning("stream: key re-check failed: %s", exc)
                    continue
                if revoked:
                    err = _err("unauthorized", "the API key of this session was revoked", "authorization")
                    for c in conns:
                        c.kill(REVOKED_CLOSE_CODE, "api key revoked", err)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.settings.ws_heartbeat_s)
            ts = iso_ms(time.time_ns())
            for c in list(self.conns):
                seqs = {i: self.feed_seq.get(i, 0) for i in c.channels}
                c.send_obj({"type": "heartbeat", "seqs": seqs, "timestamp": ts})

    # ------------------------------------------------------------------ connections

    def attach(self, c: Conn) -> None:
        self.conns.add(c)
        self.metrics.ws_connections.set(len(self.conns))

    def detach(self, c: Conn) -> None:
        if c in self.conns:
            self.conns.discard(c)
            self.metrics.ws_connections.set(len(self.conns))
        for inst, chans in c.channels.items():
            for ch in chans:
                s = self.subs.get((inst, ch))
                if s is not None:
                    s.discard(c)
        for inst, client in c.order_client.items():
            s = self.order_subs.get((inst, client))
            if s is not None:
                s.discard(c)
        c.channels = {}
        c.order_client = {}

    async def serve(self, socket) -> None:
        await socket.accept()
        key = bearer_token(socket.headers.get("authorization"))
        identity = None
        auth_error = None
        if key is not None and self.auth.enabled:
            try:
                identity = await self.auth.identify(key)
                if identity is None:
                    auth_error = _err("unauthorized", "unknown or revoked API key", "authorization")
            except ApiError as e:
                auth_error = _err(e.code, e.message, "authorization")
        c = Conn(self, socket, identity, key)
        self.attach(c)
        c.writer = asyncio.create_task(c.write_loop())
        hello = {"type": "connected", "timestamp": iso_ms(time.time_ns()), "instruments": self.instruments.symbols}
        if identity is not None:
            hello["client_id"] = identity.client_id
        c.send_obj(hello)
        if auth_error:
            c.send_obj(auth_error)
        try:
            while not c.closed:
                ev = await socket.receive()
                if ev["type"] == "websocket.disconnect":
                    break
                if not c.messages.take():
                    limit = f"more than {self.settings.ws_messages_per_second:g} messages per second on this connection"
                    c.kill(1008, "too many messages", _err("too_many_messages", limit))
                    # Stay until the close handshake is done: returning now would make the
                    # server drop the connection without the error and the close frame.
                    while (await socket.receive())["type"] != "websocket.disconnect":
                        pass
                    break
                data = ev.get("text")
                if data is None:
                    data = ev.get("bytes")
                await self.handle(c, data)
        except Exception as exc:  # client vanished mid-receive
            log.debug("stream: connection ended: %s", exc)
        finally:
            was_closed = c.closed
            c.closed = True
            self.detach(c)
            if c.writer is not None:
                c.writer.cancel()
            if not was_closed:
                with contextlib.suppress(Exception):  # the client is gone or slow; it is dropped either way
                    await asyncio.wait_for(socket.close(), 1.0)

    async def handle(self, c: Conn, data) -> None:
        if not data:
            c.send_obj(_err("invalid_json", "frame is not JSON"))
            return
        try:
            msg = _frame_decoder.decode(data)
        except (msgspec.DecodeError, RecursionError, UnicodeError):  # nesting too deep is malformed too
            c.send_obj(_err("invalid_json", "frame is not JSON"))
            return
        if not isinstance(msg, dict):
            c.send_obj(_err("invalid_message", "frame must be a JSON object"))
            return
        kind = msg.get("type")
        request_id = msg.get("request_id")
        if kind == "subscribe":
            await self._subscribe(c, msg)
        elif kind == "unsubscribe":
            self._unsubscribe(c, msg)
        elif kind == "order":
            if c.in_flight >= MAX_IN_FLIGHT_ORDERS:
                c.send_obj(_err("too_many_requests", "too many orders in flight on this connection", None, request_id))
                return
            c.in_flight += 1
            asyncio.get_running_loop().create_task(self._forward_order(c, msg))
        elif kind == "ping":
            c.send_obj({"type": "pong", "timestamp": iso_ms(time.time_ns())})
        else:
            c.send_obj(_err("unknown_type", f"unknown message type {kind!r}", "type", request_id))

    def _parse_sub(self, c: Conn, msg: dict) -> tuple[str, list[str]] | None:
        channels = msg.get("channels")
        if channels is None and isinstance(msg.get("channel"), str):
            channels = [msg["channel"]]
        if not isinstance(channels, list) or not channels or not all(isinstance(x, str) for x in channels):
            c.send_obj(_err("invalid_channel", f"channels must be a non-empty list of {', '.join(CHANNELS)}", "channels"))
            return None
        bad = [x for x in channels if x not in CHANNELS]
        if bad:
            c.send_obj(_err("invalid_channel", f"unknown channel {bad[0]!r} (one of {', '.join(CHANNELS)})", "channels"))
            return None
        inst = msg.get("instrument", DEFAULT_INSTRUMENT)
        if not isinstance(inst, str) or inst not in self.instruments:
            c.send_obj(_err("unknown_instrument", f"unknown instrument {inst!r}", "instrument"))
            return None
        return inst, list(dict.fromkeys(channels))

    async def _subscribe(self, c: Conn, msg: dict) -> None:
        if not c.subscribes.take():
            c.send_obj(_err("too_many_subscriptions",
                            f"more than {self.settings.ws_subscribes_per_second:g} subscribes per second on this "
                            "connection", None, msg.get("request_id")))
            return
        limiter = self.read_limiter
        limits = None
        if limiter is not None and limiter.enabled:
            # Subscriptions are reads: the same per-key (else per-address) budget as REST.
            if c.api_key:
                rate_key = "k:" + ("Bearer " + c.api_key)[-64:]  # as query_service.app.read_rate_key
            else:
                client = getattr(c.socket, "client", None)
                rate_key = "ip:" + (client.host if client else "")
            ok, headers, _ = limiter.take(rate_key)
            limits = rate_limit_fields(headers)
            if not ok:
                err = _err("rate_limited", "read rate limit exceeded", None, msg.get("request_id"))
                err["rate_limit"] = limits
                c.send_obj(err)
                return
        parsed = self._parse_sub(c, msg)
        if parsed is None:
            return
        inst, channels = parsed
        depth = msg.get("depth", SNAPSHOT_DEPTH)
        if type(depth) is not int or not 1 <= depth <= MAX_SNAPSHOT_DEPTH:
            c.send_obj(_err("out_of_range", f"depth must be an integer from 1 to {MAX_SNAPSHOT_DEPTH}", "depth",
                            msg.get("request_id")))
            return
        have = sum(len(chs) for chs in c.channels.values())
        new = [ch for ch in channels if ch not in c.channels.get(inst, ())]
        if have + len(new) > self.settings.ws_max_subscriptions:
            c.send_obj(_err("too_many_subscriptions",
                            f"at most {self.settings.ws_max_subscriptions} subscriptions (instrument and channel) "
                            "per connection", "channels", msg.get("request_id")))
            return
        order_client = None
        if "orders" in channels:
            order_client = await self._orders_client(c, msg)
            if order_client is None:
                return
        chans = c.channels.setdefault(inst, set())
        for ch in channels:
            if ch == "orders":
                prev = c.order_client.get(inst)
                if prev is not None and prev != order_client:
                    self.order_subs.get((inst, prev), set()).discard(c)
                c.order_client[inst] = order_client
                self.order_subs.setdefault((inst, order_client), set()).add(c)
            chans.add(ch)
            self.subs.setdefault((inst, ch), set()).add(c)
        reply = {"type": "subscribed", "channels": channels, "instrument": inst}
        if order_client is not None:
            reply["client_id"] = order_client
        if limits is not None:
            reply["rate_limit"] = limits
        c.send_obj(reply)
        if "orderbook" in channels and inst not in c.books:
            c.books[inst] = _BookSub(depth)
            self._start_snapshot(inst)
        if "ticker" in channels:
            try:
                t = await views.ticker(self.redis, self.keys, self.instruments.get(inst))
                c.send_obj({"type": "ticker", **t})
            except views.NotReady:
                pass  # views being rebuilt: the next ticker change is sent as usual
            except Exception as exc:
                log.warning("stream: ticker read failed: %s", exc)

    async def _orders_client(self, c: Conn, msg: dict) -> str | None:
        """Whose orders this connection may follow: the key's client (Authorization header
        at the upgrade, or `api_key` in the message); with auth disabled, `client_id`."""
        if not self.auth.enabled:
            client = msg.get("client_id") or (c.identity.client_id if c.identity else None)
            if not isinstance(client, str) or not client:
                c.send_obj(_err("missing_field", "client_id is required for the orders channel", "client_id"))
                return None
            return client
        key = msg.get("api_key")
        if isinstance(key, str) and key:
            try:
                ident = await self.auth.identify(key)
            except ApiError as e:
                c.send_obj(_err(e.code, e.message, "api_key"))
                return None
            if ident is None:
                c.send_obj(_err("unauthorized", "unknown or revoked API key", "api_key"))
                return None
            c.identity, c.api_key = ident, key
        if c.identity is None:
            c.send_obj(_err("unauthorized", "the orders channel needs an api key (Authorization header or api_key)", "api_key"))
            return None
        return c.identity.client_id

    def _unsubscribe(self, c: Conn, msg: dict) -> None:
        parsed = self._parse_sub(c, msg)
        if parsed is None:
            return
        inst, channels = parsed
        chans = c.channels.get(inst, set())
        for ch in channels:
            chans.discard(ch)
            s = self.subs.get((inst, ch))
            if s is not None:
                s.discard(c)
            if ch == "orderbook":
                c.books.pop(inst, None)
            if ch == "orders":
                client = c.order_client.pop(inst, None)
                if client is not None:
                    self.order_subs.get((inst, client), set()).discard(c)
        if not chans:
            c.channels.pop(inst, None)
        c.send_obj({"type": "unsubscribed", "channels": channels, "instrument": inst})

    # ------------------------------------------------------------------ order entry

    async def _forward_order(self, c: Conn, msg: dict) -> None:
        request_id = msg.get("request_id")
        try:
            order_type = msg.get("order_type")
            if order_type is None:
                c.send_obj(_err("missing_field", "order_type is required", "order_type", request_id))
                return
            if not isinstance(order_type, str) or not order_type:
                c.send_obj(_err("invalid_field", "order_type must be limit or market", "order_type", request_id))
                return
            body = {k: v for k, v in msg.items() if k not in FRAME_FIELDS}
            body["type"] = order_type
            key = c.api_key if c.api_key else msg.get("api_key")
            request = json_encoder.encode({"api_key": key if isinstance(key, str) else None, "body": body})
            try:
                raw = await self.bus.request(ORDER_REQUEST_SUBJECT, request, self.settings.order_request_timeout_s)
            except (NoRespondersError, NatsTimeout, asyncio.TimeoutError, ConnectionError) as exc:
                c.send_obj(_err("unavailable", f"order service unavailable ({type(exc).__name__})", None, request_id))
                return
            try:
                reply = _frame_decoder.decode(raw)
                status = int(reply["status"])
                rbody = reply.get("body") or {}
            except Exception:
                c.send_obj(_err("bad_gateway", "unreadable reply from the order service", None, request_id))
                return
            if 200 <= status < 300:
                c.send_obj(
                    {
                        "type": "order_accepted",
                        "request_id": request_id,
                        "order": rbody.get("order"),
                        "trades": rbody.get("trades", []),
                    }
                )
            else:
                error = rbody.get("error") if isinstance(rbody, dict) else None
                if not isinstance(error, dict):
                    error = {"code": "error", "message": f"order service answered {status}"}
                out = {"type": "error", "request_id": request_id, "error": error, "status": status}
                c.send_obj(out)
        except Exception as exc:  # never let one order kill the connection
            log.exception("stream: order forwarding failed")
            c.send_obj(_err("internal", f"order forwarding failed: {type(exc).__name__}", None, request_id))
        finally:
            c.in_flight -= 1
