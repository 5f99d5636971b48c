"""uvicorn's sans-I/O WebSocket protocol, with the frames of one event-loop turn written
to the socket together.

uvicorn writes every `websocket.send` to the transport at once: one send() syscall per
message. When a batch commit resolves hundreds of /ws requests, the writer sends their
answers back to back; here they are serialised as before but handed to the transport in one write at the end of
the loop turn (loop.call_soon). Order is kept: anything else (close, accept) first flushes
what is pending. uvicorn and websockets are pinned in pyproject.toml; tests/unit covers it.

The command service passes this class as uvicorn's `ws` protocol.

Issue 19: the application may also take the connection's data messages directly (`on_message`,
a plain callable, set by command_service/ws.py) and write text messages without a coroutine
(`send_text_now`). uvicorn hands each message to the application through an asyncio.Queue, a
task wake-up and, per message, a pause_reading()/resume_reading() pair (two epoll_ctl calls);
with many clients of one request in flight each, every message paid all of it.
"""

from __future__ import annotations

from typing import Callable

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState


class CoalescingWebSocketProtocol(WebSocketsSansIOProtocol):
    _pending: list[bytes] | None = None
    # Set by the application: then every data message (str for text, bytes for binary) goes to
    # it directly, in the order received, instead of through receive(). It must not block; it
    # applies backpressure itself (transport.pause_reading). Control messages (disconnect)
    # still arrive through receive().
    on_message: Callable[[str | bytes], None] | None = None

    async def send(self, message) -> None:
        if (message["type"] == "websocket.send" and self.handshake_complete and not self.close_sent
                and self.initial_response is None):
            text = message.get("text")
            self._queue_frames(text.encode() if text is not None else message.get("bytes") or b"",
                               text is not None)
            return
        self._flush()
        await super().send(message)

    def send_text_now(self, data: bytes) -> None:
        """One text message (UTF-8 bytes), written with the others of this loop turn. Raises
        ClientDisconnected when the connection can no longer send (closing or gone)."""
        if not self.handshake_complete or self.close_sent or self.initial_response is not None:
            raise ClientDisconnected()
        self._queue_frames(data, True)

    def _queue_frames(self, data: bytes, text: bool) -> None:
        try:
            if text:
                self.conn.send_text(data)
            else:
                self.conn.send_binary(data)
        except InvalidState:
            raise ClientDisconnected() from None
        out = self.conn.data_to_send()
        if self._pending is None:
            self._pending = out
            self.loop.call_soon(self._flush)
        else:
            self._pending.extend(out)

    def _flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self.transport.is_closing():
            self.transport.write(b"".join(pending))

    def send_receive_event_to_app(self) -> None:
        deliver = self.on_message
        if deliver is None or self.close_sent:
            super().send_receive_event_to_app()
            return
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.curr_msg_data_type == "text":
            try:
                text = data.decode()
            except UnicodeDecodeError:
                self.logger.info("Invalid UTF-8 sequence received from client.")
                self.conn.send_close(1007)
                self.handle_parser_exception()
                return
            deliver(text)
        else:
            deliver(data)
