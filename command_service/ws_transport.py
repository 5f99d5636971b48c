"""uvicorn's sans-I/O WebSocket protocol, with the frames of one event-loop turn written
to the socket together.

uvicorn writes every `websocket.send` to the transport at once: one send() syscall per
message. When a batch commit resolves hundreds of /ws requests, the writer sends their
answers back to back; here they are serialised as before but handed to the transport in one write at the end of
the loop turn (loop.call_soon). Order is kept: anything else (close, accept) first flushes
what is pending. uvicorn and websockets are pinned in pyproject.toml; tests/unit covers it.

The command service passes this class as uvicorn's `ws` protocol.
"""

from __future__ import annotations

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState


class CoalescingWebSocketProtocol(WebSocketsSansIOProtocol):
    _pending: list[bytes] | None = None

    async def send(self, message) -> None:
        if (message["type"] == "websocket.send" and self.handshake_complete and not self.close_sent
                and self.initial_response is None):
            text = message.get("text")
            try:
                if text is not None:
                    self.conn.send_text(text.encode())
                else:
                    self.conn.send_binary(message.get("bytes") or b"")
            except InvalidState:
                raise ClientDisconnected() from None
            out = self.conn.data_to_send()
            if self._pending is None:
                self._pending = out
                self.loop.call_soon(self._flush)
            else:
                self._pending.extend(out)
            return
        self._flush()
        await super().send(message)

    def _flush(self) -> None:
        pending, self._pending = self._pending, None
        if pending and not self.transport.is_closing():
            self.transport.write(b"".join(pending))
