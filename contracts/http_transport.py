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

Issue 19: a service may answer some requests itself (`direct_routes`), without what uvicorn
does for every request on its way to the application: a task, an asyncio.Event, the ASGI
receive/send messages, every middleware, and a regular-expression check of each response
header. Such a request is handed over once its body is complete, and answered exactly once,
at once or from a callback; everything else about the connection (keep-alive, pipelined
requests, flow control, shutdown) stays uvicorn's.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Sequence

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle

log = logging.getLogger("http")

Respond = Callable[[int, bytes, Sequence[tuple[bytes, bytes]]], None]
"""respond(status, JSON body, extra headers): the one answer to a request handled directly."""
DirectHandler = Callable[[Any, bytes, Respond], None]
"""handler(ASGI scope, complete body, respond): must call respond exactly once, now or later."""
DIRECT_BODY_MAX = 32 * 1024
"""A longer body goes the ASGI way (which reads it in chunks and refuses what is too large);
below uvicorn's 64 KiB mark at which it stops reading until the application receives."""

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
    # Set on a subclass by a service: scope -> DirectHandler for the requests it answers itself.
    direct_routes: Callable[[Any], DirectHandler | None] | None = None
    _direct_waiting: tuple[RequestResponseCycle, Any, DirectHandler] | None = None

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        routes = self.direct_routes
        handler = routes(cycle.scope) if routes is not None and app is self.app else None
        if handler is None:
            super()._start_asgi_task(cycle, app)
        elif cycle.more_body:
            self._direct_waiting = (cycle, app, handler)  # on_message_complete hands it over
        else:
            self._answer_directly(cycle, handler)

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        waiting = self._direct_waiting
        if waiting is not None and waiting[0] is self.cycle and len(self.cycle.body) > DIRECT_BODY_MAX:
            self._direct_waiting = None
            super()._start_asgi_task(waiting[0], waiting[1])

    def on_message_complete(self) -> None:
        super().on_message_complete()
        waiting = self._direct_waiting
        if waiting is not None and waiting[0] is self.cycle:
            self._direct_waiting = None
            self._answer_directly(waiting[0], waiting[2])

    def _answer_directly(self, cycle: RequestResponseCycle, handler: DirectHandler) -> None:
        def respond(status: int, payload: bytes, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
            if cycle.response_complete or cycle.disconnected:
                return  # answered already, or the client is gone
            out = [STATUS_LINE[status]]
            for name, value in self.server_state.default_headers:
                out += [name, b": ", value, b"\r\n"]
            out.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(payload))
            for name, value in headers:
                out += [name, b": ", value, b"\r\n"]
            if not cycle.keep_alive:
                out.append(b"connection: close\r\n")
            out += [b"\r\n", payload]
            cycle.response_started = cycle.response_complete = True
            self.transport.write(b"".join(out))
            cycle.message_event.set()
            if not cycle.keep_alive:
                self.transport.close()
            cycle.on_response()  # keep-alive timer, the next pipelined request

        try:
            handler(cycle.scope, bytes(cycle.body), respond)
        except Exception:
            log.exception("direct handler failed")
            respond(500, b'{"error":{"code":"internal","message":"internal error"}}', ())

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
