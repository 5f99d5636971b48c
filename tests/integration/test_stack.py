"""The servers `make test` starts (ops/stack, profile "test") answer and behave as the services
expect: PostgreSQL with the schema, Redis, NATS pub/sub and request/reply, the Kafka-API broker
(keyed produce with acks=all, consumer group, per-key order, commit and resume), the events topic.
Also the gateway config: nginx routes each path to the right upstream, answers its own errors as JSON
and passes WebSocket upgrades (against stub upstreams, on ports of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path

import pytest

from contracts.topics import EVENTS_TOPIC, EVENTS_TOPIC_PARTITIONS
from ops import gateway, stack
from ops.stack import free_port

REPO = Path(__file__).resolve().parents[2]
PG_DSN = os.environ["EXCHANGE_PG_DSN"]
REDIS_URL = os.environ["EXCHANGE_REDIS_URL"]
NATS_URL = os.environ["EXCHANGE_NATS_URL"]
KAFKA = os.environ["EXCHANGE_KAFKA_BOOTSTRAP"]

# Local broker: a consumer group forms in about half the session timeout, so keep it short here.
FAST_GROUP = dict(session_timeout_ms=2000, heartbeat_interval_ms=300, rebalance_timeout_ms=3000)


# --------------------------------------------------------------------------- servers


async def test_postgres_answers_and_schema_exists():
    import asyncpg

    conn = await asyncpg.connect(PG_DSN, timeout=10)
    try:
        assert await conn.fetchval("SELECT 1") == 1
        rows = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
        tables = {r["table_name"] for r in rows}
        assert {"events", "orders", "idempotency", "snapshots", "api_keys", "relay_cursors"} <= tables
        # Durability is not traded for speed in any profile.
        assert await conn.fetchval("SHOW fsync") == "on"
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
    finally:
        await conn.close()


async def test_redis_ping():
    import redis.asyncio as redis

    client = redis.from_url(REDIS_URL)
    try:
        assert await client.ping() is True
        key = f"test-stack:{uuid.uuid4().hex}"
        await client.set(key, "1", ex=10)
        assert await client.get(key) == b"1"
    finally:
        await client.aclose()


async def test_nats_publish_subscribe_and_request_reply():
    import nats

    from contracts.topics import node_command_subject
    from tests.support.services import nats_login

    # The command nodes' user may publish and subscribe the node command subjects (issue 20).
    nc = await nats.connect(NATS_URL, connect_timeout=5, **nats_login("command"))
    try:
        subject = node_command_subject(f"test-stack-{uuid.uuid4().hex}")
        got: asyncio.Queue = asyncio.Queue()

        async def on_msg(msg):
            await got.put(msg.data)

        await nc.subscribe(subject, cb=on_msg)
        await nc.flush()
        for i in range(3):
            await nc.publish(subject, f"m{i}".encode())
        received = [await asyncio.wait_for(got.get(), 5) for _ in range(3)]
        assert received == [b"m0", b"m1", b"m2"]

        async def responder(msg):
            await msg.respond(b"pong:" + msg.data)

        await nc.subscribe(subject + ".rpc", cb=responder)
        await nc.flush()
        reply = await nc.request(subject + ".rpc", b"ping", timeout=5)
        assert reply.data == b"pong:ping"
    finally:
        await nc.close()


async def _create_topic(name: str, partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA, request_timeout_ms=5000)
    await admin.start()
    try:
        # Created before any producer or consumer names it: the broker would auto-create it otherwise.
        resp = await admin.create_topics([NewTopic(name, partitions, 1)])
        assert all(e["error_code"] == 0 for e in resp.to_object()["topic_errors"])
    finally:
        await admin.close()


async def _delete_topic(name: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA, request_timeout_ms=5000)
    await admin.start()
    try:
        with contextlib.suppress(Exception):  # clean-up only
            await admin.delete_topics([name])
    finally:
        await admin.close()


async def _consume(consumer, count: int, timeout: float) -> list:
    records = []
    deadline = time.monotonic() + timeout
    while len(records) < count and time.monotonic() < deadline:
        batch = await consumer.getmany(timeout_ms=200, max_records=count - len(records))
        for tp_records in batch.values():
            records.extend(tp_records)
    return records


async def test_kafka_keyed_order_commit_and_resume():
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    topic = f"test.stack.{uuid.uuid4().hex[:12]}"
    group = f"test-stack-{uuid.uuid4().hex[:12]}"
    keys = [f"K{i}" for i in range(5)]
    await _create_topic(topic, 3)
    # acks=all, no idempotence: the embedded broker has no InitProducerId (the services do the same).
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA, acks="all", enable_idempotence=False, linger_ms=2)
    await producer.start()
    consumers = []
    try:
        async def produce(start: int, n: int) -> None:
            futures = [
                await producer.send(topic, key=k.encode(), value=json.dumps({"key": k, "seq": s}).encode())
                for s in range(start, start + n)
                for k in keys
            ]
            for f in futures:
                await asyncio.wait_for(f, 15)

        await produce(0, 40)

        def consumer():
            c = AIOKafkaConsumer(
                topic, bootstrap_servers=KAFKA, group_id=group, enable_auto_commit=False,
                auto_offset_reset="earliest", **FAST_GROUP,
            )
            consumers.append(c)
            return c

        first = consumer()
        await asyncio.wait_for(first.start(), 30)
        records = await _consume(first, 200, 45)
        assert len(records) == 200
        seen: dict[str, list[int]] = defaultdict(list)
        for r in records:
            body = json.loads(r.value)
            assert r.key.decode() == body["key"]
            seen[body["key"]].append(body["seq"])
        # One key -> one partition -> the order it was produced in.
        assert all(seen[k] == list(range(40)) for k in keys), seen
        await first.commit()
        await first.stop()

        await produce(40, 10)
        second = consumer()
        await asyncio.wait_for(second.start(), 30)
        resumed = await _consume(second, 50, 45)
        extra = await _consume(second, 1, 1.0)  # anything before the committed offset would show here
        seqs: dict[str, list[int]] = defaultdict(list)
        for r in resumed + extra:
            body = json.loads(r.value)
            seqs[body["key"]].append(body["seq"])
        assert all(seqs[k] == list(range(40, 50)) for k in keys), seqs
    finally:
        for c in consumers:
            with contextlib.suppress(Exception):  # clean-up only
                await c.stop()
        await producer.stop()
        await _delete_topic(topic)


async def test_events_topic_created_with_its_partitions():
    from aiokafka.admin import AIOKafkaAdminClient

    topic = os.environ.get("EXCHANGE_KAFKA_TOPIC", EVENTS_TOPIC)
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA, request_timeout_ms=5000)
    await admin.start()
    try:
        assert topic in await admin.list_topics()  # all topics: does not auto-create it
        described = await admin.describe_topics([topic])
        assert len(described[0]["partitions"]) == EVENTS_TOPIC_PARTITIONS
    finally:
        await admin.close()


# --------------------------------------------------------------------------- ops/stack API


def test_exported_env_matches_the_stack_api():
    env = stack.service_env("test")
    for key in ("EXCHANGE_PG_DSN", "EXCHANGE_REDIS_URL", "EXCHANGE_NATS_URL", "EXCHANGE_KAFKA_BOOTSTRAP"):
        assert env[key] == os.environ[key], key
    printed = subprocess.run(
        [sys.executable, "-m", "ops.stack", "env", "--profile", "test"], cwd=REPO,
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    exported = dict(line.removeprefix("export ").split("=", 1) for line in printed.splitlines())
    assert exported["EXCHANGE_PG_DSN"] == env["EXCHANGE_PG_DSN"]
    cfg = stack.config("test")
    assert env["EXCHANGE_COMMAND_PORT"] == str(cfg.command_port)
    assert cfg.query_ports[0] != cfg.query_ports[1]
    # query-2 listens on its own port
    assert stack._service_overrides(cfg, "query-2")["EXCHANGE_QUERY_PORT"] == str(cfg.query_ports[1])


def test_servers_are_ours_and_answer():
    cfg = stack.config("test")
    if os.environ.get("EXCHANGE_STATE_DIR") != str(cfg.state_dir):
        pytest.skip("servers were not started by ops/stack from this checkout")
    for name in stack.SERVERS:
        assert stack.server_pid(cfg, name) is not None, f"{name} is not running from {cfg.state_dir}"


# --------------------------------------------------------------------------- gateway (nginx)


class _Stub(http.server.ThreadingHTTPServer):
    daemon_threads = True


def _stub_upstream(label: str) -> tuple[_Stub, int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self):
            length = int(self.headers.get("content-length") or 0)
            if length:
                self.rfile.read(length)
            body = json.dumps({"upstream": label, "path": self.path}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args):  # noqa: D401 - quiet
            pass

    server = _Stub(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def _start_nginx(tmp_path: Path, command_ports: list[int], query_ports: list[int]) -> tuple[subprocess.Popen, int]:
    port = free_port()
    conf = gateway.write_local_conf(tmp_path, listen_port=port, command_ports=command_ports, query_ports=query_ports)
    checked = gateway.check_conf(conf)
    assert checked.returncode == 0, checked.stderr
    proc = subprocess.Popen(gateway.nginx_argv(conf), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert stack.wait_port(port, timeout=10), (tmp_path / "logs" / "gateway-error.log").read_text()
    return proc, port


def _get(url: str, data: bytes | None = None) -> tuple[int, str, dict]:
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("content-type", ""), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type", ""), json.loads(e.read())


@pytest.fixture
def routed_gateway(tmp_path):
    command, command_port = _stub_upstream("command")
    query1, query1_port = _stub_upstream("query-1")
    dead_query_port = free_port()  # a replica that is down: the gateway must use the other one
    proc, port = _start_nginx(tmp_path, [command_port], [query1_port, dead_query_port])
    yield f"http://127.0.0.1:{port}"
    stack.stop_process(proc, 5)
    command.shutdown()
    query1.shutdown()


def test_gateway_routes_paths_to_their_service(routed_gateway):
    expected = {
        "/orders": ("command", "/orders"),
        "/orders/o-1": ("command", "/orders/o-1"),
        "/orders/o-1/cancel": ("command", "/orders/o-1/cancel"),
        "/admin/snapshot": ("command", "/admin/snapshot"),
        "/metrics": ("command", "/admin/metrics"),  # admin key checked by the command service
        "/market/orderbook?instrument=BTC-USD": ("query-1", "/market/orderbook?instrument=BTC-USD"),
        "/market/trades": ("query-1", "/market/trades"),
        "/healthz": ("query-1", "/healthz/system"),
    }
    for _ in range(2):  # twice: round robin must skip the dead replica every time
        for path, (upstream, upstream_path) in expected.items():
            status, _, body = _get(routed_gateway + path)
            assert status == 200, (path, body)
            assert body == {"upstream": upstream, "path": upstream_path}, path


def test_gateway_answers_its_own_errors_as_json(routed_gateway, tmp_path):
    status, ctype, body = _get(routed_gateway + "/no-such-route")
    assert status == 404 and ctype.startswith("application/json") and body["error"]["code"] == "not_found"

    status, ctype, body = _get(routed_gateway + "/orders", data=b"x" * (70 * 1024))
    assert status == 413 and ctype.startswith("application/json")
    assert body["error"]["code"] == "payload_too_large"

    # Nothing listens behind this gateway: 502 in the API's error shape.
    proc, port = _start_nginx(tmp_path / "down", [free_port()], [free_port()])
    try:
        for path in ("/healthz", "/orders", "/market/orderbook"):
            status, ctype, body = _get(f"http://127.0.0.1:{port}{path}")
            assert status == 502 and ctype.startswith("application/json"), path
            assert set(body["error"]) >= {"code", "message"}
    finally:
        stack.stop_process(proc, 5)


@pytest.mark.ws_invalid_frames  # a stand-in echo server behind the gateway
@pytest.mark.ws_synthetic_feed
async def test_gateway_passes_websocket_upgrades(tmp_path):
    import websockets

    async def echo(ws):
        async for message in ws:
            await ws.send(f"{ws.request.path}:{message}")

    async with websockets.serve(echo, "127.0.0.1", 0) as server:
        upstream_port = server.sockets[0].getsockname()[1]
        proc, port = await asyncio.to_thread(_start_nginx, tmp_path, [upstream_port], [upstream_port])
        try:
            for path in ("/ws", "/stream"):
                async with websockets.connect(f"ws://127.0.0.1:{port}{path}", open_timeout=10) as ws:
                    await ws.send("hello")
                    assert await asyncio.wait_for(ws.recv(), 5) == f"{path}:hello"
        finally:
            await asyncio.to_thread(stack.stop_process, proc, 5)


def _raw_http(port: int, request: bytes) -> tuple[int, dict, bytes]:
    """Send raw bytes, read the answer to the end (the server closes): status, headers, body."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        with contextlib.suppress(OSError):  # a server that refused early may reset while we still send
            s.sendall(request)
        data = b""
        with contextlib.suppress(OSError):
            while chunk := s.recv(65536):
                data += chunk
                if b"\r\n\r\n" in data:
                    head, _, rest = data.partition(b"\r\n\r\n")
                    n = [int(v) for k, _, v in (ln.partition(b": ") for ln in head.split(b"\r\n")[1:])
                         if k.lower() == b"content-length"]
                    if n and len(rest) >= n[0]:
                        break
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {k.decode().lower(): v.decode() for k, _, v in (ln.partition(b": ") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def test_gateway_refusals_are_json_and_its_access_log_has_no_query_strings(routed_gateway, tmp_path):
    """Issue 20: keys sent in a query string were written to the access log; nginx's own 400,
    414 and header refusals were HTML."""
    secret = "exk_" + uuid.uuid4().hex
    status, _, _ = _get(routed_gateway + f"/market/orderbook?instrument=BTC-USD&api_key={secret}")
    assert status == 200
    port = int(routed_gateway.rsplit(":", 1)[1])
    cases = [
        (b"GARBAGE\r\n\r\n", 400, "invalid_http"),
        (b"GET /market/" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
        (b"GET /market/trades HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20_000 + b"\r\n\r\n", 431, "headers_too_large"),
    ]
    for request, want, code in cases:
        status, headers, body = _raw_http(port, request)
        assert status == want and headers.get("content-type", "").startswith("application/json"), (want, body[:200])
        assert json.loads(body)["error"]["code"] == code
    time.sleep(1.5)  # the access log is buffered, flushed every second
    log = (tmp_path / "logs" / "gateway-access.log").read_text()
    assert "/market/orderbook" in log and secret not in log and "api_key" not in log


@pytest.mark.parametrize("module,port_var", [("command_service", "EXCHANGE_COMMAND_PORT"),
                                              ("query_service", "EXCHANGE_QUERY_PORT")])
async def test_services_bound_the_request_head_and_refuse_bad_http_as_json(module, port_var):
    """Issue 20: on a service's own port the request head was unbounded and a request uvicorn
    could not parse got a plain-text 400."""
    proc = stack.ServiceProcess(module, free_port(), {"EXCHANGE_QUERY_PROJECTOR": "false"}, port_var=port_var,
                                log_name=f"{module}-head").start()
    try:
        await proc.wait_ready(path="/healthz" if module == "command_service" else "/market/instruments")
        status, headers, body = _raw_http(proc.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "
                                          + b"b" * 64 * 1024 + b"\r\n\r\n")
        assert status == 431 and headers["content-type"] == "application/json", body[:200]
        assert json.loads(body)["error"]["code"] == "headers_too_large"
        status, headers, body = _raw_http(proc.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
        assert status == 400 and json.loads(body)["error"]["code"] == "invalid_http", body[:200]
        status, _, _ = _raw_http(proc.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Ok: "
                                 + b"o" * 8 * 1024 + b"\r\n\r\n")
        assert status in (200, 503)  # a head within the bound is served as before
    finally:
        proc.stop()


def test_state_folder_and_stack_log_are_private():
    """Issue 20: stack.log (with the demo keys) was world-readable. The state folder and its logs
    may only be traversed by others (PostgreSQL and nginx's workers reach their own folders);
    stack.log is the owner's alone and holds no key."""
    import stat as st

    cfg = stack.config("test")
    for d in (cfg.state_dir, cfg.logs):
        assert st.S_IMODE(d.stat().st_mode) & 0o066 == 0, (d, oct(d.stat().st_mode))
    log = cfg.logs / "stack.log"
    assert log.exists() and st.S_IMODE(log.stat().st_mode) == 0o600
    assert "exk_" not in log.read_text()
