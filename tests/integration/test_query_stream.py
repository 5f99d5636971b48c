"""WebSocket /stream against the real servers: snapshot + gap-free deltas equal the REST
book, malformed frames, slow consumers, the private orders channel, order entry over
NATS request/reply, heartbeats, and two replicas relaying the same feed."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import socket
import struct
from decimal import Decimal

import httpx
import msgspec
import nats
import pytest
from websockets.asyncio.client import connect

from contracts.api import json_encoder
from contracts.topics import ORDER_REQUEST_SUBJECT, feed_subject
from query_service.feed import FeedMessage, encode_feed
from tests.support.order_flow import OrderFlow
from tests.support.query import (
    JournalSeeder,
    Publisher,
    Replica,
    create_topic,
    delete_topic,
    free_port,
    settings_for_test,
    unique,
    wait_for_seq,
    wipe,
)
from tests.support.services import nats_login

decode = msgspec.json.Decoder(float_hook=Decimal).decode


@pytest.fixture
async def env():
    symbols = [unique("QW") + "-USD"]
    settings = settings_for_test(symbols)
    await create_topic(settings)
    await wipe(settings.redis_url, settings.redis_prefix)
    async with JournalSeeder(settings.pg_dsn) as journal:
        await journal.clear(symbols)
        keys: list[str] = []
        yield settings, symbols[0], journal, keys
        await journal.clear(symbols)
        await journal.remove_keys(keys)
    await wipe(settings.redis_url, settings.redis_prefix)
    await delete_topic(settings)


async def recv(ws, timeout=10.0) -> dict:
    return decode(await asyncio.wait_for(ws.recv(), timeout))


async def recv_type(ws, kind, timeout=10.0) -> dict:
    while True:
        m = await recv(ws, timeout)
        if m["type"] == kind:
            return m


async def open_ws(replica, headers=None):
    ws = await connect(replica.ws_url, additional_headers=headers or {}, max_size=2**24)
    hello = await recv(ws)
    assert hello["type"] == "connected"
    return ws


class BookClient:
    """Applies snapshot + updates the way a client should, checking the seq chain."""

    def __init__(self):
        self.bids: dict = {}
        self.asks: dict = {}
        self.seq = None
        self.updates = 0
        self.snapshots = 0

    def apply(self, m):
        if m["action"] == "snapshot":
            self.snapshots += 1
            self.bids = {r["price"]: r["quantity"] for r in m["bids"]}
            self.asks = {r["price"]: r["quantity"] for r in m["asks"]}
            self.seq = m["seq"]
            return
        assert self.seq is not None, "update before snapshot"
        assert m["prev_seq"] == self.seq, f"gap: holding {self.seq}, update from {m['prev_seq']}"
        assert m["seq"] > m["prev_seq"]
        for ch in m["changes"]:
            book = self.bids if ch["side"] == "buy" else self.asks
            if ch["quantity"] == 0:
                book.pop(ch["price"], None)
            else:
                book[ch["price"]] = ch["quantity"]
        self.seq = m["seq"]
        self.updates += 1


async def test_snapshot_then_contiguous_deltas_equal_the_rest_book(env):
    settings, sym, journal, _ = env
    sim = OrderFlow(instrument=sym, seed=31)
    events = sim.run(1500)
    last_trade = max(e.seq for e in events if type(e).__name__ == "TradeExecuted")
    await journal.append(events)
    replica = await Replica(settings.replace(watchdog_interval_s=600.0)).start()
    try:
        async with Publisher(settings) as pub:
            await pub.publish(events[:400])
            await wait_for_seq(settings.redis_url, settings.redis_prefix, {sym: events[399].seq})

            ws = await open_ws(replica)
            book = BookClient()
            trades = []

            async def reader():
                while True:
                    m = await recv(ws)
                    if m["type"] == "orderbook":
                        book.apply(m)
                    elif m["type"] == "trade":
                        trades.append(m)
                    if book.seq == events[-1].seq and trades and trades[-1]["seq"] == last_trade:
                        return

            task = asyncio.create_task(reader())
            await ws.send(json.dumps({"type": "subscribe", "channels": ["orderbook", "trades"], "instrument": sym}))
            # the rest arrives while the snapshot is being read and sent: small batches
            for i in range(400, len(events), 25):
                await pub.publish(events[i : i + 25])
            await asyncio.wait_for(task, 30)
        assert book.updates > 10
        assert book.snapshots == 1  # no resnapshot: the replica lost no feed message
        async with httpx.AsyncClient(base_url=replica.url) as http:
            rest = decode((await http.get("/market/orderbook", params={"instrument": sym, "levels": 100})).content)
        assert rest["seq"] == book.seq
        n = min(100, len(book.bids))
        assert [(r["price"], r["quantity"]) for r in rest["bids"]] == sorted(book.bids.items(), reverse=True)[:n]
        assert [(r["price"], r["quantity"]) for r in rest["asks"]] == sorted(book.asks.items())[: min(100, len(book.asks))]
        bids, asks = sim.levels()
        assert len(book.bids) == len(bids) and len(book.asks) == len(asks)
        # trades: in seq order, no duplicates, all of those after the subscription
        seqs = [t["seq"] for t in trades]
        assert seqs == sorted(set(seqs)) and seqs[-1] == last_trade
        await ws.close()
    finally:
        await replica.stop()


@pytest.mark.ws_invalid_frames
async def test_malformed_frames_get_errors_and_the_connection_stays_usable(env):
    settings, sym, _, _ = env
    # with its projector: it marks the (empty) views ready, so the subscribe-time ticker is sent
    replica = await Replica(settings).start()
    try:
        await wait_for_seq(settings.redis_url, settings.redis_prefix, {sym: 0})
        ws = await open_ws(replica)
        cases = [
            ("not json", "invalid_json", None),
            ("", "invalid_json", None),
            ("[1,2]", "invalid_message", None),
            ('{"type":"dance"}', "unknown_type", "type"),
            ('{"no_type":1}', "unknown_type", "type"),
            (json.dumps({"type": "subscribe", "channels": ["gossip"], "instrument": sym}), "invalid_channel", "channels"),
            (json.dumps({"type": "subscribe", "channels": [], "instrument": sym}), "invalid_channel", "channels"),
            (json.dumps({"type": "subscribe", "channels": "trades", "instrument": sym}), "invalid_channel", "channels"),
            (json.dumps({"type": "subscribe", "channels": ["trades"], "instrument": "NOPE-USD"}),
             "unknown_instrument", "instrument"),
            (json.dumps({"type": "unsubscribe", "channels": ["trades"], "instrument": 7}), "unknown_instrument",
             "instrument"),
            (json.dumps({"type": "subscribe", "channels": ["orders"], "instrument": sym}), "unauthorized", "api_key"),
            (json.dumps({"type": "subscribe", "channels": ["orders"], "instrument": sym, "api_key": "exk_bad"}),
             "unauthorized", "api_key"),
            (json.dumps({"type": "order", "request_id": "r1", "side": "buy"}), "missing_field", "order_type"),
        ]
        for frame, code, field in cases:
            await ws.send(frame)
            m = await recv(ws)
            assert m["type"] == "error", frame
            assert m["error"]["code"] == code and m["error"].get("field") == field and m["error"]["message"], frame
        await ws.send(b"\x00\x01binary")
        assert (await recv(ws))["error"]["code"] == "invalid_json"
        # still usable
        await ws.send(json.dumps({"type": "subscribe", "channels": ["trades", "ticker"], "instrument": sym}))
        m = await recv(ws)
        assert m == {"type": "subscribed", "channels": ["trades", "ticker"], "instrument": sym}
        assert (await recv(ws))["type"] == "ticker"
        await ws.send(json.dumps({"type": "ping"}))
        assert (await recv(ws))["type"] == "pong"
        await ws.send(json.dumps({"type": "unsubscribe", "channels": ["trades"], "instrument": sym}))
        assert (await recv(ws))["type"] == "unsubscribed"
        await ws.close()
    finally:
        await replica.stop()


def _fake_trades_feed(sym, seq, n, pad):
    trades = [msgspec.Raw(json.dumps({"type": "trade", "instrument": sym, "seq": seq, "i": i, "pad": pad}).encode())
              for i in range(n)]
    return encode_feed(FeedMessage(instrument=sym, prev_seq=seq - 1, seq=seq, trades=trades))


class RawWebSocket:
    """A minimal client over a plain socket with a tiny receive buffer: it reads only when
    asked, so the server sees a consumer that does not keep up."""

    async def connect(self, host, port, path="/stream"):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        self.reader, self.writer = await asyncio.open_connection(sock=sock, limit=1024)
        key = base64.b64encode(os.urandom(16)).decode()
        self.writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        return self

    def send_text(self, text: str):
        data = text.encode()
        mask = os.urandom(4)
        n = len(data)
        header = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack("!H", n))
        self.writer.write(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    async def frame(self):
        b0, b1 = await self.reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        return b0 & 0x0F, await self.reader.readexactly(n)


@pytest.mark.ws_synthetic_feed  # the test publishes padded stand-in trades on the feed
async def test_a_slow_consumer_is_dropped_and_the_others_keep_up(env):
    settings, sym, _, _ = env
    replica = await Replica(settings.replace(projector_enabled=False, ws_send_queue=200)).start()
    nc = await nats.connect(settings.nats_url, **nats_login("query"))  # publishes on the feed, like the projector
    try:
        fast = await open_ws(replica)
        slow = await RawWebSocket().connect("127.0.0.1", settings.port)
        op, payload = await slow.frame()
        assert op == 1 and json.loads(payload)["type"] == "connected"
        sub = json.dumps({"type": "subscribe", "channels": ["trades"], "instrument": sym})
        slow.send_text(sub)
        await fast.send(sub)
        assert (await recv(fast))["type"] == "subscribed"
        op, payload = await slow.frame()
        assert json.loads(payload)["type"] == "subscribed"
        # from here on the slow client reads nothing
        pad = "x" * 2000
        total = 0
        got = 0

        async def drain_fast():
            nonlocal got
            while got < total or total == 0:
                m = await recv(fast, 20)
                if m["type"] == "trade":
                    got += 1

        reader = asyncio.create_task(drain_fast())
        for seq in range(1, 101):
            await nc.publish(feed_subject(sym), _fake_trades_feed(sym, seq, 100, pad))
            total += 100
        await nc.flush()
        await asyncio.wait_for(reader, 60)
        assert got == total  # the fast client got everything, not stalled by the slow one
        metrics = replica.services.metrics
        assert metrics.ws_slow_disconnects._value.get() == 1
        assert metrics.ws_messages_dropped._value.get() > 0
        # what the slow client finally reads ends with a close frame and its reason
        frames = 0
        while True:
            op, payload = await asyncio.wait_for(slow.frame(), 15)
            if op == 8:
                code = struct.unpack("!H", payload[:2])[0]
                assert code == 1008 and b"slow consumer" in payload[2:]
                break
            frames += 1
        assert frames < total
        await fast.close()
    finally:
        await nc.close()
        await replica.stop()


async def test_orders_channel_needs_auth_and_carries_only_own_orders(env):
    settings, sym, journal, keys = env
    alice, bob = unique("alice-"), unique("bob-")
    ka, kb = "exk_" + secrets.token_urlsafe(16), "exk_" + secrets.token_urlsafe(16)
    keys += [ka, kb]
    await journal.add_key(ka, alice)
    await journal.add_key(kb, bob)
    sim = OrderFlow(instrument=sym, seed=41, clients=(alice, bob))
    events = sim.run(200)
    await journal.append(events)
    replica = await Replica(settings.replace(watchdog_interval_s=600.0)).start()
    try:
        anon = await open_ws(replica)
        await anon.send(json.dumps({"type": "subscribe", "channels": ["orders"], "instrument": sym}))
        m = await recv(anon)
        assert m["type"] == "error" and m["error"]["code"] == "unauthorized"
        wa = await open_ws(replica, {"Authorization": f"Bearer {ka}"})
        await wa.send(json.dumps({"type": "subscribe", "channels": ["orders"], "instrument": sym}))
        assert (await recv(wa)) == {"type": "subscribed", "channels": ["orders"], "instrument": sym, "client_id": alice}
        wb = await open_ws(replica)  # key in the subscribe message instead of the header
        await wb.send(json.dumps({"type": "subscribe", "channels": ["orders"], "instrument": sym, "api_key": kb}))
        assert (await recv(wb))["client_id"] == bob
        async with Publisher(settings) as pub:
            await pub.publish(events)
        await wait_for_seq(settings.redis_url, settings.redis_prefix, {sym: events[-1].seq})

        async def collect(ws):
            out = []
            try:
                while True:
                    m = await recv(ws, 1.0)
                    if m["type"] == "order_update":
                        out.append(m)
            except asyncio.TimeoutError:
                return out

        ua, ub = await collect(wa), await collect(wb)
        assert ua and ub
        assert {m["order"]["client_id"] for m in ua} == {alice}
        assert {m["order"]["client_id"] for m in ub} == {bob}
        own_a = {e.order_id for e in events if getattr(e, "client_id", None) == alice}
        assert {m["order"]["order_id"] for m in ua} == own_a
        # the anonymous connection got nothing private
        assert await collect(anon) == []
        for ws in (anon, wa, wb):
            await ws.close()
    finally:
        await replica.stop()


@pytest.mark.ws_synthetic_feed  # a stand-in command service answers with partial orders
async def test_order_entry_is_forwarded_over_nats_request_reply(env):
    settings, sym, journal, keys = env
    alice = unique("alice-")
    ka = "exk_" + secrets.token_urlsafe(16)
    keys.append(ka)
    await journal.add_key(ka, alice)
    replica = await Replica(settings.replace(projector_enabled=False, order_request_timeout_s=0.5)).start()
    nc = await nats.connect(settings.nats_url, **nats_login("command"))  # answers orders, like a command node
    requests = []

    async def responder(msg):
        req = decode(msg.data)
        requests.append((msg.data, req))
        body = req["body"]
        if body.get("quantity") == Decimal("999"):
            return  # never answers: the client must get "unavailable" after the timeout
        if body["type"] == "market" and "price" in body:
            reply = {"status": 400, "body": {"error": {"code": "invalid_field", "message": "no price on market",
                                                       "field": "price"}}}
        else:
            order = {"order_id": "o-1", "client_id": body["client_id"], "instrument": body["instrument"],
                     "side": body["side"], "type": body["type"], "price": body.get("price"),
                     "quantity": body["quantity"], "filled_quantity": Decimal("0.1"), "status": "partially_filled"}
            trade = {"trade_id": "t-1", "price": Decimal("70150.5"), "quantity": Decimal("0.1")}
            reply = {"status": 201, "body": {"order": order, "trades": [trade], "orderbook": {}}}
        await msg.respond(json_encoder.encode(reply))

    try:
        ws = await open_ws(replica, {"Authorization": f"Bearer {ka}"})
        # no responder yet: unavailable, and the connection carries on
        await ws.send(json.dumps({"type": "order", "order_type": "limit", "request_id": "r0", "client_id": alice,
                                  "instrument": sym, "side": "buy", "price": 1, "quantity": 1}))
        m = await recv(ws)
        assert m["type"] == "error" and m["request_id"] == "r0" and m["error"]["code"] == "unavailable"

        sub = await nc.subscribe(ORDER_REQUEST_SUBJECT, cb=responder)
        await nc.flush()
        frame = ('{"type":"order","order_type":"limit","request_id":"r1","client_id":"%s","instrument":"%s",'
                 '"side":"buy","price":70150.50,"quantity":0.30000000000000004,"idempotency_key":"k1",'
                 '"time_in_force":"GTC","post_only":false}' % (alice, sym))
        await ws.send(frame)
        m = await recv(ws)
        assert m["type"] == "order_accepted" and m["request_id"] == "r1"
        assert m["order"]["order_id"] == "o-1" and m["order"]["quantity"] == Decimal("0.30000000000000004")
        assert m["trades"][0]["price"] == Decimal("70150.5")
        raw, req = requests[-1]
        assert req["api_key"] == ka
        assert req["body"] == {"idempotency_key": "k1", "client_id": alice, "instrument": sym, "side": "buy",
                               "type": "limit", "price": Decimal("70150.50"),
                               "quantity": Decimal("0.30000000000000004"), "time_in_force": "GTC",
                               "post_only": False}
        assert b'"price":70150.50' in raw  # the exact number the client wrote, as a JSON number

        # every order member is forwarded (issue 20: self_trade_prevention was dropped), and only
        # the frame's own members (type, request_id, api_key, order_type) stay behind
        await ws.send(json.dumps({"type": "order", "order_type": "limit", "request_id": "r1b", "client_id": alice,
                                  "instrument": sym, "side": "buy", "price": "2", "quantity": "3",
                                  "self_trade_prevention": "cancel_both", "display_quantity": "1",
                                  "time_in_force": "GTD", "expire_time": "2099-01-01T00:00:00Z", "extra": 1}))
        assert (await recv(ws))["request_id"] == "r1b"
        assert requests[-1][1]["body"] == {
            "type": "limit", "client_id": alice, "instrument": sym, "side": "buy", "price": "2", "quantity": "3",
            "self_trade_prevention": "cancel_both", "display_quantity": "1", "time_in_force": "GTD",
            "expire_time": "2099-01-01T00:00:00Z", "extra": 1}

        await ws.send(json.dumps({"type": "order", "order_type": "market", "request_id": "r2", "client_id": alice,
                                  "instrument": sym, "side": "sell", "price": 5, "quantity": 1}))
        m = await recv(ws)
        assert m["type"] == "error" and m["request_id"] == "r2"
        assert m["error"] == {"code": "invalid_field", "message": "no price on market", "field": "price"}

        await ws.send(json.dumps({"type": "order", "order_type": "limit", "request_id": "r3", "client_id": alice,
                                  "instrument": sym, "side": "sell", "price": 5, "quantity": 999}))
        m = await recv(ws)
        assert m["type"] == "error" and m["request_id"] == "r3" and m["error"]["code"] == "unavailable"

        # many in flight on one connection, answered independently
        for i in range(20):
            await ws.send(json.dumps({"type": "order", "order_type": "limit", "request_id": f"m{i}",
                                      "client_id": alice, "instrument": sym, "side": "buy", "price": 1,
                                      "quantity": 1}))
        got = {(await recv(ws))["request_id"] for _ in range(20)}
        assert got == {f"m{i}" for i in range(20)}
        anon = await open_ws(replica)
        await anon.send(json.dumps({"type": "order", "order_type": "limit", "request_id": "a1", "client_id": alice,
                                    "instrument": sym, "side": "buy", "price": 1, "quantity": 1}))
        await recv(anon)
        assert requests[-1][1]["api_key"] is None  # no key: the command service decides (401)
        await sub.unsubscribe()
        await ws.close()
        await anon.close()
    finally:
        await nc.close()
        await replica.stop()


async def test_heartbeats_carry_seqs(env):
    settings, sym, journal, _ = env
    events = OrderFlow(instrument=sym, seed=2).run(30)
    await journal.append(events)
    replica = await Replica(settings.replace(ws_heartbeat_s=0.2)).start()
    try:
        await wait_for_seq(settings.redis_url, settings.redis_prefix, {sym: events[-1].seq})
        ws = await open_ws(replica)
        await ws.send(json.dumps({"type": "subscribe", "channels": ["orderbook"], "instrument": sym}))
        snap = await recv_type(ws, "orderbook")
        assert snap["action"] == "snapshot" and snap["seq"] == events[-1].seq
        hb = await recv_type(ws, "heartbeat")
        assert sym in hb["seqs"] and hb["timestamp"].endswith("Z")
        await ws.close()
    finally:
        await replica.stop()


async def test_two_replicas_send_the_same_feed(env):
    settings, sym, journal, _ = env
    sim = OrderFlow(instrument=sym, seed=51)
    events = sim.run(400)
    await journal.append(events)
    a = await Replica(settings.replace(watchdog_interval_s=600.0)).start()
    b = await Replica(settings.replace(projector_enabled=False, port=free_port())).start()
    try:
        # views first: a snapshot waits for views the journal says are complete
        async with Publisher(settings) as pub:
            await pub.publish(events[:40])
        await wait_for_seq(settings.redis_url, settings.redis_prefix, {sym: events[39].seq})
        streams = []
        for r in (a, b):
            ws = await open_ws(r)
            await ws.send(json.dumps({"type": "subscribe", "channels": ["orderbook", "trades", "ticker"],
                                      "instrument": sym}))
            assert (await recv(ws))["type"] == "subscribed"
            streams.append(ws)
        firsts = [await recv_type(ws, "orderbook") for ws in streams]
        assert firsts[0] == firsts[1] and firsts[0]["action"] == "snapshot"

        async def collect(ws):
            out = []
            while True:
                m = await recv(ws, 15)
                if m["type"] == "ticker" and "seq" in m and m.get("trade_count_24h") == 0 and not out:
                    continue  # the subscribe-time ticker is read at different moments
                out.append(m)
                if m["type"] == "orderbook" and m["seq"] == events[-1].seq:
                    return out

        tasks = [asyncio.create_task(collect(ws)) for ws in streams]
        for _ in range(200):
            if a.services.projector.assigned:
                break
            await asyncio.sleep(0.05)
        async with Publisher(settings) as pub:
            for i in range(40, len(events), 40):
                await pub.publish(events[i : i + 40])
                await asyncio.sleep(0.01)
        got_a, got_b = await asyncio.gather(*tasks)
        assert got_a == got_b and len(got_a) > 50
        async with httpx.AsyncClient() as http:
            ra = (await http.get(f"{a.url}/market/orderbook", params={"instrument": sym})).content
            rb = (await http.get(f"{b.url}/market/orderbook", params={"instrument": sym})).content
        assert ra == rb
        for ws in streams:
            await ws.close()
    finally:
        await b.stop()
        await a.stop()
