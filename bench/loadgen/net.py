
"""Minimal HTTP/1.1 keep-alive and WebSocket clients as asyncio Protocols.

Why hand-written: on a 2-core machine the load generator shares the CPU with the
exchange, and general clients (httpx, aiohttp, the websockets package) spend 50-150 us of
Python per request on header objects, state machines and coroutine hops. These protocols
parse only what a benchmark needs (status line, Content-Length / chunked framing, body;
WebSocket frame headers), never create a coroutine or future per request, and let the
caller send the next request from inside `data_received`, so a request costs one write
syscall, one read and a few microseconds of Python.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
from urllib.parse import urlsplit

try:  # C masking from the websockets package; pure-Python fallback below
    from websockets.speedups import apply_mask as _apply_mask
except Exception:  # pragma: no cover - websockets is a dependency, speedups may be absent

    def _apply_mask(data: bytes, mask: bytes) -> bytes:
        n = len(data)
        if not n:
            return data
        key = int.from_bytes((mask * (n // 4 + 1))[:n], "little")
        return (int.from_bytes(data, "little") ^ key).to_bytes(n, "little")


def split_url(url: str, default_port: int) -> tuple[str, int, str, str]:
    """-> (host, port, path-with-query, Host header value)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "ws"):
        raise ValueError(f"only plain http:// and ws:// URLs are supported, got {url!r}")
    host = parts.hostname or "127.0.0.1"
    port = parts.port or default_port
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    host_header = host if port == 80 else f"{host}:{port}"
    return host, port, path, host_header


class HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time (no pipelining).

    The owner supplies `on_response(conn, status, body)` and `on_lost(conn, exc)`.
    Per-request state the owner needs (kind, send time, ...) lives in the plain
    attributes below so no per-request object is allocated here.
    """

    __slots__ = (
        "owner",
        "transport",
        "buf",
        "busy",
        "t0",
        "t_sent",
        "cmd",
        "ready",
        "closed",
        "must_close",
        "index",
    )

    def __init__(self, owner, index: int = 0):
        self.owner = owner
        self.index = index
        self.transport = None
        self.buf = b""
        self.busy = False
        self.t0 = 0.0  # latency origin (send time, or the scheduled time in open loop)
        self.t_sent = 0.0  # actual send time, for timeouts
        self.cmd = None
        self.ready = asyncio.get_running_loop().create_future()
        self.closed = False
        self.must_close = False

    # -- asyncio.Protocol
    def connection_made(self, transport):
        self.transport = transport
        if not self.ready.done():
            self.ready.set_result(self)

    def connection_lost(self, exc):
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(exc or ConnectionError("connection closed"))
        self.owner.on_lost(self, exc)

    def send(self, data: bytes) -> None:
        self.busy = True
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
            self.buf = b""
        while data:
            he = data.find(b"\r\n\r\n")
            if he < 0:
                self.buf = data
                return
            if data[:5] != b"HTTP/":
                self.owner.on_protocol_error(self, "bad status line: %r" % data[:40])
                self.transport.abort()
                return
            status = int(data[9:12])
            start = he + 4
            # "ontent-length:" matches Content-Length and content-length without lower-casing
            # the head (servers here send one of the two spellings); int() skips the blank.
            i = data.find(b"ontent-length:", 12, he)
            if i >= 0:
                j = data.find(b"\r\n", i, start)
                n = int(data[i + 14 : j])
                end = start + n
                if len(data) < end:
                    self.buf = data
                    return
                body = data[start:end]
            else:
                head = data[:he].lower()
                i = head.find(b"\ncontent-length:")
                if i >= 0:  # unusual capitalisation
                    j = head.find(b"\r", i)
                    n = int(head[i + 16 : j] if j >= 0 else head[i + 16 :])
                    end = start + n
                    if len(data) < end:
                        self.buf = data
                        return
                    body = data[start:end]
                elif b"\ntransfer-encoding: chunked" in head:
                    body, end = _dechunk(data, start)
                    if body is None:
                        self.buf = data
                        return
                elif status == 204 or status == 304 or 100 <= status < 200:
                    body, end = b"", start
                else:
                    # no length: the body runs to connection close; benchmark servers never do this
                    self.owner.on_protocol_error(self, "response without Content-Length")
                    self.transport.abort()
                    return
            if 100 <= status < 200:
                data = data[end:]
                continue
            if data.find(b"onnection: close", 12, he) >= 0:  # Connection / connection
                self.must_close = True
            data = data[end:] if end < len(data) else b""
            self.busy = False
            self.owner.on_response(self, status, body)
        # anything after a complete response would be a pipelined answer we never asked for


def _dechunk(data: bytes, pos: int):
    """Chunked body starting at pos -> (body, end) or (None, 0) if incomplete."""
    parts = []
    n_data = len(data)
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None, 0
        size = int(data[pos:eol].split(b";", 1)[0], 16)
        pos = eol + 2
        if size == 0:
            # trailers end with an empty line
            end = data.find(b"\r\n", pos)
            while end >= 0 and end != pos:
                pos = end + 2
                end = data.find(b"\r\n", pos)
            if end < 0:
                return None, 0
            return b"".join(parts), end + 2
        if n_data < pos + size + 2:
            return None, 0
        parts.append(data[pos : pos + size])
        pos += size + 2


class SimpleHttpClient:
    """Coroutine-style request/response over HttpConnection, for low-rate side traffic
    (the visibility probe). Not used on the load's hot path."""

    def __init__(self, url: str, headers: dict[str, str] | None = None):
        self.host, self.port, self.base_path, self.host_header = split_url(url, 80)
        self.base_path = self.base_path.rstrip("/")
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.extra = extra.encode()
        self.conn: HttpConnection | None = None
        self.waiter: asyncio.Future | None = None

    async def connect(self):
        await self._connect()

    async def _connect(self):
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: HttpConnection(self), self.host, self.port)
        self.conn = conn

    async def request(self, method: str, path: str, body: bytes | None = None, headers: bytes = b"", timeout=10.0):
        if self.conn is None or self.conn.closed or self.conn.must_close:
            await self._connect()
        head = b"%s %s HTTP/1.1\r\nHost: %s\r\n%s%s" % (
            method.encode(),
            (self.base_path + path).encode(),
            self.host_header.encode(),
            self.extra,
            headers,
        )
        if body is not None:
            head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
        self.waiter = asyncio.get_running_loop().create_future()
        self.conn.send(head + b"\r\n" + (body or b""))
        try:
            return await asyncio.wait_for(self.waiter, timeout)
        except asyncio.TimeoutError:
            self.conn.transport.abort()
            raise

    def on_response(self, conn, status, body):
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((status, body))

    def on_lost(self, conn, exc):
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc or ConnectionError("connection closed"))

    def on_protocol_error(self, conn, detail):
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(detail))

    def close(self):
        if self.conn is not None and self.conn.transport is not None:
            self.conn.transport.close()


class WsConnection(asyncio.Protocol):
    """A client WebSocket (RFC 6455) without extensions: text frames out (masked, as the
    RFC requires of clients), text/binary frames in, ping answered, close honoured.

    The owner supplies `on_open(conn)`, `on_messages(conn, [payload, ...])` (all complete
    messages of one read, so replies can be batched into one write) and `on_lost(conn, exc)`.
    """

    def __init__(self, owner, host_header: str, path: str, headers: bytes = b"", index: int = 0):
        self.owner = owner
        self.index = index
        self.transport = None
        self.buf = b""
        self.open = False
        self.closed = False
        self.frag: list[bytes] | None = None
        self.pending: dict = {}  # request_id -> (t0, command, t_sent), kept by the owner
        self.seq = 0  # last request_id number used on this connection
        self.ready = asyncio.get_running_loop().create_future()
        self._key = base64.b64encode(os.urandom(16))
        self._request = b"GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" % (
            path.encode(),
            host_header.encode(),
        )
        self._request += b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n" % (self._key, headers)
        self._rand = random.Random(os.urandom(8)).getrandbits

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self._request)

    def connection_lost(self, exc):
        self.closed = True
        self.open = False
        if not self.ready.done():
            self.ready.set_exception(exc or ConnectionError("connection closed during the WebSocket handshake"))
        self.owner.on_lost(self, exc)

    # -- sending
    def frame(self, payload: bytes, opcode: int = 0x1) -> bytes:
        n = len(payload)
        mask = self._rand(32).to_bytes(4, "big")
        if n < 126:
            head = bytes((0x80 | opcode, 0x80 | n))
        elif n < 65536:
            head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
        else:
            head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
        return head + mask + _apply_mask(payload, mask)

    def send(self, payload: bytes) -> None:
        self.transport.write(self.frame(payload))

    def send_many(self, payloads: list[bytes]) -> None:
        frame = self.frame
        self.transport.write(b"".join([frame(p) for p in payloads]))

    def close(self, code: int = 1000) -> None:
        if self.transport is not None and not self.closed:
            with contextlib.suppress(Exception):  # closing a connection that may already be broken
                self.transport.write(self.frame(code.to_bytes(2, "big"), 0x8))
            self.transport.close()

    # -- receiving
    def data_received(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
            self.buf = b""
        if not self.open:
            he = data.find(b"\r\n\r\n")
            if he < 0:
                self.buf = data
                return
            status_line = data[: data.find(b"\r\n")]
            if status_line[9:12] != b"101":
                err = ConnectionError("WebSocket upgrade refused: %s" % status_line.decode("latin-1"))
                if not self.ready.done():
                    self.ready.set_exception(err)
                self.transport.abort()
                return
            self.open = True
            data = data[he + 4 :]
            if not self.ready.done():
                self.ready.set_result(self)
            self.owner.on_open(self)
            if not data:
                return
        messages = []
        pos = 0
        n = len(data)
        while n - pos >= 2:
            b0 = data[pos]
            b1 = data[pos + 1]
            ln = b1 & 0x7F
            hdr = 2
            if ln == 126:
                if n - pos < 4:
                    break
                ln = int.from_bytes(data[pos + 2 : pos + 4], "big")
                hdr = 4
            elif ln == 127:
                if n - pos < 10:
                    break
                ln = int.from_bytes(data[pos + 2 : pos + 10], "big")
                hdr = 10
            mask = None
            if b1 & 0x80:  # servers must not mask, but be lenient
                if n - pos < hdr + 4:
                    break
                mask = data[pos + hdr : pos + hdr + 4]
                hdr += 4
            end = pos + hdr + ln
            if end > n:
                break
            payload = data[pos + hdr : end]
            if mask is not None:
                payload = _apply_mask(payload, mask)
            pos = end
            op = b0 & 0x0F
            fin = b0 & 0x80
            if op == 0x1 or op == 0x2:
                if fin:
                    messages.append(payload)
                else:
                    self.frag = [payload]
            elif op == 0x0:
                if self.frag is not None:
                    self.frag.append(payload)
                    if fin:
                        messages.append(b"".join(self.frag))
                        self.frag = None
            elif op == 0x9:
                self.transport.write(self.frame(payload, 0xA))
            elif op == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.owner.on_close_frame(self, code, payload[2:].decode("utf-8", "replace"))
                self.close(1000)
                break
        if pos < n:
            self.buf = data[pos:]
        if messages:
            self.owner.on_messages(self, messages)
