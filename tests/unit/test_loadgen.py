"""The load generator against stub servers started inside the test (no exchange needed).

The stubs answer like the command service (201 {order, trades, orderbook}; cancels 200;
WebSocket order_accepted / cancel_accepted) so the generator's parsing, cancel
bookkeeping, statistics, JSON and PNG output are exercised end to end.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from bench.loadgen import cli as loadgen
from bench.loadgen.net import HttpConnection, WsConnection, _dechunk
from bench.loadgen.stats import LogHistogram, percentile, summary_ms
from bench.loadgen.workload import GridFormatter, Workload, build_models, parse_mix
from contracts.instruments import load_instruments

ROOT = Path(__file__).resolve().parents[2]

ORDERBOOK = (
    b'"orderbook":{"bids":[{"price":69999.5,"quantity":0.25,"cumulative":0.25}],'
    b'"asks":[{"price":70000.5,"quantity":1.5,"cumulative":1.5}]}'
)


def _order_json(oid: str, status: str, body: dict) -> bytes:
    return msgspec.json.encode(
        {
            "order_id": oid,
            "client_id": body.get("client_id"),
            "instrument": body.get("instrument"),
            "side": body.get("side"),
            "type": body.get("type") or body.get("order_type"),
            "price": body.get("price"),
            "quantity": body.get("quantity"),
            "filled_quantity": 0,
            "status": status,
            "time_in_force": body.get("time_in_force", "GTC"),
            "created_at": "2024-01-01T00:00:00.000Z",
            "updated_at": "2024-01-01T00:00:00.000Z",
        }
    )


class StubHttp(asyncio.Protocol):
    """POST /orders -> 201 {order, trades, orderbook}; POST /orders/{id}/cancel -> 200 {order}.
    GTC limit orders rest (status open) so the generator's cancel bookkeeping is used."""

    counter = 0
    seen: dict = {}

    def connection_made(self, transport):
        self.transport = transport
        self.buf = b""

    def data_received(self, data):
        self.buf += data
        while True:
            he = self.buf.find(b"\r\n\r\n")
            if he < 0:
                return
            head = self.buf[:he].lower()
            n = 0
            for header in head.split(b"\r\n"):
                if header.startswith(b"content-length:"):
                    n = int(header[15:])
            if len(self.buf) < he + 4 + n:
                return
            body = self.buf[he + 4 : he + 4 + n]
            line = self.buf[: self.buf.find(b"\r\n")]
            self.buf = self.buf[he + 4 + n :]
            self.respond(line, head, body)

    def respond(self, line: bytes, head: bytes, raw: bytes):
        method, path, _ = line.split(b" ", 2)
        body = json.loads(raw, parse_float=Decimal) if raw else {}
        if b"\nauthorization: bearer key-" in head:
            StubHttp.seen["auth"] = StubHttp.seen.get("auth", 0) + 1
        if method == b"POST" and path == b"/orders":
            StubHttp.counter += 1
            oid = f"ord-{StubHttp.counter}"
            rests = body.get("type") == "limit" and body.get("time_in_force", "GTC") == "GTC"
            out = b'{"order":' + _order_json(oid, "open" if rests else "filled", body) + b',"trades":[],' + ORDERBOOK + b"}"
            status = b"201 Created"
        elif method == b"POST" and path.startswith(b"/orders/") and path.endswith(b"/cancel"):
            oid = path.split(b"/")[2].decode()
            out = b'{"order":' + _order_json(oid, "cancelled", body) + b"}"
            status = b"200 OK"
        else:
            out = b'{"error":{"code":"not_found","message":"no route"}}'
            status = b"404 Not Found"
        self.transport.write(
            b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (status, len(out), out)
        )


async def start_stub_http(port: int = 0):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(StubHttp, "127.0.0.1", port)
    return server, server.sockets[0].getsockname()[1]


def serve_forever(port: int) -> None:
    """Stub server in its own process (used to measure the generator's CPU alone)."""
    import uvloop

    async def main():
        server, _ = await start_stub_http(port)
        print("ready", flush=True)
        await server.serve_forever()

    uvloop.run(main())


# -- pure functions ----------------------------------------------------------------------


def test_percentile_nearest_rank():
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 99.9) == 100
    assert percentile(values, 100) == 100
    assert percentile(values, 0) == 1
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))
    assert percentile([1, 2, 3, 4], 25) == 1 and percentile([1, 2, 3, 4], 26) == 2
    s = summary_ms([0.001 * i for i in range(1, 1001)])
    assert s["count"] == 1000 and s["p50"] == 500.0 and s["p99"] == 990.0 and s["max"] == 1000.0


def test_log_histogram_close_to_exact():
    rng = random.Random(1)
    values = [rng.lognormvariate(-6, 1) for _ in range(20000)]
    h = LogHistogram()
    h.add_many(values)
    exact = percentile(sorted(values), 99)
    assert abs(h.percentile(99) - exact) / exact < 0.03


def test_grid_formatter_exact():
    assert GridFormatter(Decimal("0.01"))(7015050) == "70150.5"
    assert GridFormatter(Decimal("0.01"))(7015000) == "70150"
    assert GridFormatter(Decimal("0.00000001"))(1) == "0.00000001"
    assert GridFormatter(Decimal("0.05"))(3) == "0.15"
    assert GridFormatter(Decimal("5"))(3) == "15"
    assert GridFormatter(Decimal("0.001"))(150123) == "150.123"
    assert GridFormatter(Decimal("0.00000001"))(123456789) == "1.23456789"
    assert GridFormatter(Decimal("0.00000001"))(120000000) == "1.2"
    assert GridFormatter(Decimal("0.01"))(5) == "0.05"
    rng = random.Random(4)
    for unit in ("0.01", "0.00000001", "0.001", "0.25", "1", "10"):
        fmt = GridFormatter(Decimal(unit))
        for _ in range(2000):
            n = rng.randrange(1, 10**12)
            assert Decimal(fmt(n)) == Decimal(unit) * n


def test_mix_parsing():
    assert parse_mix("limit=60,cancel=25,market=10,ioc=5") == {"limit": 60, "cancel": 25, "market": 10, "ioc": 5}
    with pytest.raises(ValueError):
        parse_mix("limit=1,stop=2")
    with pytest.raises(ValueError):
        parse_mix("limit=0")


def test_generated_orders_are_on_the_instrument_grid():
    instruments = load_instruments(ROOT / "config" / "instruments.json")
    models = build_models(instruments, instruments.symbols, {})
    clients = [f"c{i}" for i in range(10)]
    w = Workload(models, clients, parse_mix("limit=50,market=20,ioc=20,cancel=10"), seed=7)
    kinds = {}
    crossing = resting = 0
    for n in range(20000):
        kind, client, fields, order_type, order_id, remember = w.next()
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind == "cancel":
            assert order_id.startswith("x") and order_type == b""
            continue
        body = json.loads(b"{" + fields + b"}", parse_float=Decimal, parse_int=Decimal)
        assert body["client_id"] == clients[client]
        spec = instruments.get(body["instrument"])
        qty = body["quantity"]
        assert isinstance(qty, Decimal)
        lots = spec.quantity_to_lots(qty)  # raises ConversionError when off the lot grid / limits
        assert spec.lots_to_quantity(lots) == qty
        assert spec.min_quantity <= qty <= spec.max_quantity
        if kind == "market":
            assert "price" not in body and order_type == b"market"
            continue
        price = body["price"]
        ticks = spec.price_to_ticks(price)  # raises when off the tick grid or out of range
        assert spec.ticks_to_price(ticks) == price and price % spec.tick_size == 0
        assert body["time_in_force"] == ("IOC" if kind == "ioc" else "GTC") and order_type == b"limit"
        model = next(m for m in models if m.symbol == body["instrument"])
        if (body["side"] == "buy") == (ticks > model.mid):
            crossing += 1
        else:
            resting += 1
        assert remember == (kind == "limit")
        if remember and n % 3 == 0:
            w.remember(client, f"x{n}")
    assert set(kinds) == {"limit", "market", "ioc", "cancel"}
    assert crossing > 1000 and resting > 5000  # both rest and cross


def test_resting_order_id_parsing():
    body = b'{"order":{"order_id":"a-1","status":"open"},"trades":[{"buy_order_id":"z","sell_order_id":"y"}]}'
    assert loadgen.resting_order_id(body) == "a-1"
    assert loadgen.resting_order_id(b'{"order":{"order_id":"a-1","status":"filled"},"trades":[]}') is None
    assert loadgen.resting_order_id(b'{"order": {"order_id": 17, "status": "partially_filled"}}') == "17"


def test_dechunk():
    data = b"HTTP/1.1 201 x\r\n\r\n4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\nrest"
    body, end = _dechunk(data, data.find(b"\r\n\r\n") + 4)
    assert body == b"abcdefg" and data[end:] == b"rest"
    assert _dechunk(b"4\r\nab", 0) == (None, 0)


def test_http_parser_handles_split_and_chunked_responses():
    got = []

    class Owner:
        def on_response(self, conn, status, body):
            got.append((status, body))

        def on_lost(self, conn, exc):
            pass

        def on_protocol_error(self, conn, detail):
            got.append(("error", detail))

    async def scenario():
        conn = HttpConnection(Owner())

        class T:
            def write(self, data):
                pass

            def abort(self):
                pass

            def close(self):
                pass

        conn.connection_made(T())
        raw = b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\nhello"
        for i in range(len(raw)):  # byte by byte
            conn.data_received(raw[i : i + 1])
        conn.data_received(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n")
        conn.data_received(b"HTTP/1.1 204 No Content\r\n\r\n")

    asyncio.run(scenario())
    assert got == [(201, b"hello"), (200, b"hi"), (204, b"")]


# -- end to end against the stub servers -------------------------------------------------


def _run(cfg):
    import uvloop

    async def scenario():
        server, port = await start_stub_http()
        cfg.url = f"http://127.0.0.1:{port}"
        try:
            return await loadgen.run(cfg)
        finally:
            server.close()

    return uvloop.run(scenario())


def test_closed_loop_http_against_stub(tmp_path):
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({f"client-{i}": f"key-{i}" for i in range(20)}))
    out = tmp_path / "bench" / "http.json"
    png = tmp_path / "bench" / "http.png"
    StubHttp.seen = {}
    cfg = loadgen.Config(
        mode="http", connections=16, duration=2.0, warmup=0.3, out=str(out), plot=str(png),
        api_keys_file=str(keys), progress=False, seed=3,
    )
    result = _run(cfg)
    s = result["summary"]
    assert result["passed"], result["fail_reasons"]
    assert s["errors"] == 0 and s["error_rate"] == 0
    assert s["acked"] > 500 and s["acked"] == s["responses"]
    assert sum(int(c) for c in s["status"].values()) == s["responses"]
    assert set(s["status"]) <= {"200", "201"}
    assert s["by_kind"]["cancel"]["status"]["200"] > 0  # cancels of remembered resting orders
    lat = s["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["p999"] <= lat["max"]
    assert s["acked_per_s"] > 0 and 1.9 <= s["duration_s"] <= 3.0
    assert StubHttp.seen["auth"] >= s["responses"]  # every request carried its client's key
    assert len(result["series"]) >= 2 and all("p99_ms" in p for p in result["series"])
    on_disk = json.loads(out.read_text())
    assert on_disk["summary"]["acked"] == s["acked"] and on_disk["config"]["connections"] == 16
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["client"]["cpu_us_per_request"] > 0
    print(f"\nclosed loop against in-process stub: {s['acked_per_s']:.0f}/s, "
          f"{result['client']['cpu_us_per_request']} us CPU/request (client + stub server)")
    print(loadgen.format_summary(result))


def test_open_loop_http_sends_at_the_offered_rate(tmp_path):
    cfg = loadgen.Config(mode="http", connections=8, rate=400, duration=2.0, progress=False, seed=5,
                         schedule="uniform")
    result = _run(cfg)
    s = result["summary"]
    assert result["passed"], result["fail_reasons"]
    assert 700 <= s["sent"] <= 900 and s["responses"] == s["sent"]
    assert s["unsent_scheduled"] == 0
    assert s["latency_ms"]["p50"] <= s["latency_ms"]["p99"]


def test_open_loop_counts_requests_it_could_not_send():
    """One connection, a server that takes 20 ms per answer, 200/s offered: most slots find
    no free connection. Their latency is charged from the schedule and the rest is reported
    as unsent, instead of silently lowering the offered rate (coordinated omission)."""
    orig = StubHttp.respond

    def slow(self, line, head, raw):
        asyncio.get_running_loop().call_later(0.02, orig, self, line, head, raw)

    StubHttp.respond = slow
    try:
        result = _run(loadgen.Config(connections=1, rate=200, duration=1.5, progress=False, schedule="uniform"))
    finally:
        StubHttp.respond = orig
    s = result["summary"]
    assert 50 <= s["responses"] <= 80  # ~1.5 s / 20 ms
    assert s["unsent_scheduled"] >= 180
    assert s["latency_ms"]["max"] > 500  # queued behind the slow server, measured from schedule


def test_a_stall_fails_the_run_even_with_few_errors():
    """The server stops answering for ~2.2 s (no errors at all, just silence): the run fails
    on the measured seconds without an ack, not on the error rate."""
    orig = StubHttp.respond
    t0 = time.perf_counter()

    def pausing(self, line, head, raw):
        now = time.perf_counter() - t0
        if 0.8 <= now < 3.0:
            asyncio.get_running_loop().call_later(3.0 - now, orig, self, line, head, raw)
        else:
            orig(self, line, head, raw)

    StubHttp.respond = pausing
    try:
        result = _run(loadgen.Config(connections=4, duration=4.0, progress=False))
    finally:
        StubHttp.respond = orig
    s = result["summary"]
    assert s["errors"] == 0 and s["stalled_seconds"] >= 1
    assert not result["passed"] and "without any acknowledged request" in result["fail_reasons"][0]
    assert s["latency_ms"]["max"] > 1500


def test_requests_limit_and_error_rate_exit(tmp_path):
    # every order answers 201 but every cancel 404 -> errors, so the run fails
    cfg = loadgen.Config(mode="http", connections=4, duration=None, requests=300, progress=False,
                         mix="limit=50,cancel=50", seed=11)

    orig = StubHttp.respond

    def respond(self, line, head, raw):
        if line.split(b" ")[1].endswith(b"/cancel"):
            out = b'{"error":{"code":"not_found","message":"unknown order"}}'
            self.transport.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: %d\r\n\r\n%s" % (len(out), out))
        else:
            orig(self, line, head, raw)

    StubHttp.respond = respond
    try:
        result = _run(cfg)
    finally:
        StubHttp.respond = orig
    s = result["summary"]
    assert s["sent"] == 300 and s["responses"] == 300
    assert s["status"].get("404", 0) > 0 and s["errors"] == s["status"]["404"]
    assert not result["passed"] and "error rate" in result["fail_reasons"][0]
    assert any("HTTP 404" in e for e in s["error_samples"])


def test_unreachable_server_fails_fast():
    import uvloop

    cfg = loadgen.Config(url="http://127.0.0.1:1", duration=1, progress=False)
    with pytest.raises(ConnectionError):
        uvloop.run(loadgen.run(cfg))


@pytest.mark.parametrize("rate", [None, 500.0])
def test_websocket_mode_against_websockets_server(tmp_path, rate):
    """The hand-written framer against the `websockets` package's server, closed and open loop."""
    import uvloop
    from websockets.asyncio.server import serve

    counter = [0]

    async def handler(ws):
        async for raw in ws:
            msg = json.loads(raw)
            counter[0] += 1
            if msg["type"] == "order":
                rests = msg["order_type"] == "limit" and msg.get("time_in_force") == "GTC"
                reply = {"type": "order_accepted", "request_id": msg["request_id"], "trades": [],
                         "order": {"order_id": f"w{counter[0]}", "status": "open" if rests else "filled"}}
            elif msg["type"] == "cancel":
                if counter[0] % 7 == 0:  # an order that filled before the cancel arrived
                    reply = {"type": "error", "request_id": msg["request_id"],
                             "error": {"code": "order_closed", "message": "already filled"}}
                else:
                    reply = {"type": "cancel_accepted", "request_id": msg["request_id"],
                             "order": {"order_id": msg["order_id"], "status": "cancelled"}}
            else:
                reply = {"type": "error", "request_id": msg.get("request_id"), "error": {"code": "bad"}}
            await ws.send(json.dumps(reply))

    out = tmp_path / "ws.json"

    async def scenario():
        async with serve(handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            cfg = loadgen.Config(mode="ws", ws_url=f"ws://127.0.0.1:{port}/ws", connections=3, inflight=8,
                                 duration=1.5, progress=False, out=str(out), seed=2, rate=rate)
            return await loadgen.run(cfg)

    result = uvloop.run(scenario())
    s = result["summary"]
    assert result["passed"], (result["fail_reasons"], s["error_samples"])
    assert s["acked"] > 200 and s["errors"] == 0, s
    assert s["status"]["order_accepted"] > 0 and s["status"]["cancel_accepted"] > 0
    assert s["expected_rejects"] == s["status"].get("error:order_closed", 0)
    assert s["latency_ms"]["p50"] <= s["latency_ms"]["p99"]
    assert json.loads(out.read_text())["config"]["mode"] == "ws"
    if rate:
        assert 600 <= s["sent"] <= 900 and s["responses"] == s["sent"]


def test_ws_framer_large_and_fragmented_messages():
    got = []

    class Owner:
        def on_open(self, conn):
            pass

        def on_messages(self, conn, messages):
            got.extend(messages)

        def on_lost(self, conn, exc):
            pass

        def on_close_frame(self, conn, code, reason):
            got.append(("close", code))

    async def scenario():
        written = []

        class T:
            def write(self, data):
                written.append(data)

            def close(self):
                pass

            def abort(self):
                pass

        conn = WsConnection(Owner(), "h", "/ws")
        conn.connection_made(T())
        conn.data_received(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
        big = b"x" * 70000
        frames = (
            bytes((0x81, 126)) + (300).to_bytes(2, "big") + b"a" * 300
            + bytes((0x81, 127)) + len(big).to_bytes(8, "big") + big
            + bytes((0x01, 2)) + b"he" + bytes((0x80, 3)) + b"llo"  # fragmented "hello"
            + bytes((0x89, 1)) + b"p"  # ping
        )
        for i in range(0, len(frames), 1000):
            conn.data_received(frames[i : i + 1000])
        frame = conn.frame(b"hi")
        mask = frame[2:6]
        assert frame[0] == 0x81 and frame[1] == 0x82
        assert bytes(b ^ mask[i % 4] for i, b in enumerate(frame[6:])) == b"hi"
        return written

    written = asyncio.run(scenario())
    assert got == [b"a" * 300, b"x" * 70000, b"hello"]
    assert written[-1][0] == 0x8A  # pong


def test_client_cpu_per_request_against_subprocess_stub(tmp_path):
    """The number the brief asks for: the generator's own CPU per request, with the stub
    server in another process so its CPU is not counted."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-c", f"from tests.unit.test_loadgen import serve_forever; serve_forever({port})"],
        cwd=ROOT, stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout.readline().strip() == b"ready"
        out = tmp_path / "cpu.json"
        rc = subprocess.run(
            [sys.executable, "-m", "bench.loadgen", "--url", f"http://127.0.0.1:{port}", "--duration", "2",
             "--connections", "32", "--quiet", "--out", str(out)],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )
        assert rc.returncode == 0, rc.stdout + rc.stderr
        result = json.loads(out.read_text())
        per_req = result["client"]["cpu_us_per_request"]
        print(f"\nclient CPU per HTTP request (stub in another process): {per_req} us at "
              f"{result['summary']['acked_per_s']:.0f} req/s")
        assert per_req < 200  # loose: shared CI cores; the real figure is in the report
    finally:
        proc.terminate()
        proc.wait(5)


class StubPipeline(StubHttp):
    """Command + query stub for --visibility: probe buys (IOC) trade and get a journal seq;
    the 'projection' makes a seq visible PROJECTION_LAG seconds later, on GET
    /market/orderbook and on the /stream WebSocket."""

    PROJECTION_LAG = 0.02
    seq = 0
    committed: list = []  # (time, seq)

    def respond(self, line, head, raw):
        method, path, _ = line.split(b" ", 2)
        if method == b"GET" and path.startswith(b"/market/orderbook"):
            out = msgspec.json.encode({"instrument": "BTC-USD", "bids": [], "asks": [], "seq": visible_seq()})
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(out), out))
            return
        body = json.loads(raw, parse_float=Decimal) if raw else {}
        if path == b"/orders" and body.get("client_id", "").startswith("probe-"):
            StubPipeline.seq += 1
            trades = []
            if body["side"] == "buy":
                StubPipeline.seq += 1
                trades = [{"trade_id": f"t{StubPipeline.seq}", "seq": StubPipeline.seq, "price": body["price"]}]
            StubPipeline.committed.append((time.perf_counter(), StubPipeline.seq))
            out = msgspec.json.encode({"order": {"order_id": f"p{StubPipeline.seq}",
                                                 "status": "open" if body["side"] == "sell" else "filled"},
                                       "trades": trades})
            self.transport.write(b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n%s" % (len(out), out))
            return
        super().respond(line, head, raw)


def visible_seq() -> int:
    cutoff = time.perf_counter() - StubPipeline.PROJECTION_LAG
    seen = 0
    for t, s in StubPipeline.committed:
        if t <= cutoff:
            seen = s
    return seen


def test_visibility_probe_against_stub_pipeline(tmp_path):
    import uvloop
    from websockets.asyncio.server import serve

    subscribed = []

    async def stream(ws):
        await ws.send(json.dumps({"type": "connected"}))
        last = 0
        while True:
            try:
                raw = await asyncio.wait_for(ws.recv(), 0.003)
                msg = json.loads(raw)
                if msg.get("type") == "subscribe":
                    subscribed.append(msg["instrument"])
                    await ws.send(json.dumps({"type": "subscribed", "channels": msg["channels"]}))
            except asyncio.TimeoutError:
                pass
            now_seq = visible_seq()
            if now_seq > last:
                last = now_seq
                for inst in subscribed:
                    await ws.send(json.dumps({"type": "trade", "instrument": inst, "seq": now_seq, "price": 1}))

    out = tmp_path / "vis.json"
    png = tmp_path / "vis.png"

    async def scenario():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(StubPipeline, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with serve(stream, "127.0.0.1", 0) as ws_server:
            ws_port = ws_server.sockets[0].getsockname()[1]
            cfg = loadgen.Config(
                url=f"http://127.0.0.1:{port}", query_url=f"http://127.0.0.1:{port}",
                query_ws=f"ws://127.0.0.1:{ws_port}/stream", visibility=True, connections=4,
                duration=2.5, progress=False, out=str(out), plot=str(png), instruments=["BTC-USD"],
            )
            try:
                return await loadgen.run(cfg)
            finally:
                server.close()

    StubPipeline.committed = []
    result = uvloop.run(scenario())
    vis = result["visibility"]
    assert result["passed"], result["fail_reasons"]
    assert subscribed == ["BTC-USD"]
    assert vis["probes"] >= 10, vis
    for name in ("orderbook", "stream"):
        d = vis[name]
        assert d["count"] >= 10, vis
        # visible no earlier than the simulated projection lag, and not absurdly later
        assert 20 <= d["p50"] <= d["p99"] < 500, vis
    assert any(p.get("visible_p99_ms") for p in result["series"])
    assert png.read_bytes()[:4] == b"\x89PNG"
    print("\n" + loadgen.format_summary(result))


def test_idempotency_keys_are_unique_per_order():
    instruments = load_instruments(ROOT / "config" / "instruments.json")
    models = build_models(instruments, ["ETH-USD"], {})
    w = Workload(models, ["a", "b"], parse_mix("limit=1,market=1,ioc=1"), seed=1, idempotency_prefix="run7")
    keys = [json.loads(b"{" + w.next()[2] + b"}")["idempotency_key"] for _ in range(1000)]
    assert len(set(keys)) == 1000 and all(k.startswith("run7-") for k in keys)
