"""uvicorn's httptools HTTP protocol, with the request head bounded and the answers uvicorn
writes itself in the API's error shape. Both services pass it as uvicorn's `http` protocol.

Issue 20: on the services' own ports a request head had no size limit (httptools keeps every
header in memory until the head ends; uvicorn bounds it only for h11), and a request uvicorn
could not parse was answered in plain text. Here a head (request line + headers) over
MAX_HEAD_BYTES is refused with 431 `headers_too_large`, one that does not parse with 400
`invalid_http`; both JSON, then the connection is closed. uvicorn is pinned in pyproject.toml.

Issue 19: uvicorn writes a response's head and its body with two transport.write calls, and
uvloop sends each at once: two send() syscalls per answer, 17 % of the command service's CPU in
a profile of the hot-instrument run. The protocol's writes of one event-loop turn are handed to
the socket together instead (_CoalescingTransport), as the /ws protocol does for its frames.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

MAX_HEAD_BYTES = 16 * 1024
"""Request line + headers, as nginx's default large_client_header_buffers (4 x 8k) allow less."""


class HeadTooLarge(Exception):
    pass


_REFUSALS = {400: "invalid_http", 431: "headers_too_large"}


def _answer(status: int, message: str) -> bytes:
    body = b'{"error":{"code":"' + _REFUSALS[status].encode() + b'","message":"' + message.encode() + b'"}}'
    return b"".join([
        STATUS_LINE[status],
        b"content-type: application/json\r\n",
        b"content-length: " + str(len(body)).encode() + b"\r\n",
        b"connection: close\r\n\r\n",
        body,
    ])


class _CoalescingTransport:
    """The connection's transport, with the writes of one loop turn sent as one. Order is kept:
    close() first sends what is pending; everything else is the real transport's."""

    __slots__ = ("_transport", "_loop", "_pending")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self._pending is None:
            self._pending = [data]
            self._loop.call_soon(self.flush)
        else:
            self._pending.append(data)

    def flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self._transport.is_closing():
            self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    _head_bytes = 0
    _head_too_large = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = _CoalescingTransport(transport, self.loop)  # type: ignore[assignment]

    def handle_websocket_upgrade(self) -> None:
        # the /ws protocol takes over the real transport (it coalesces its own frames)
        coalescing = self.transport
        if isinstance(coalescing, _CoalescingTransport):
            coalescing.flush()
            self.transport = coalescing._transport
        super().handle_websocket_upgrade()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = 0

    def _count(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > MAX_HEAD_BYTES:
            self._head_too_large = True
            raise HeadTooLarge()  # httptools stops parsing: data_received answers via send_400_response

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def send_400_response(self, msg: str) -> None:
        if self._head_too_large:
            out = _answer(431, f"the request line and headers exceed {MAX_HEAD_BYTES} bytes")
        else:
            out = _answer(400, "the request is not valid HTTP/1.1")
        self.transport.write(out)
        self.transport.close()
