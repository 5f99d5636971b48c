"""WS /ws: order entry and cancel over one WebSocket, many requests in flight.

Each request is answered after its batch commits, in completion order (request_id ties
answers to requests). One writer task per connection serialises the sends.
"""

from __future__ import annotations

import asyncio
import logging

import msgspec
from litestar import WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect

from command_service.edge import EdgeError, database_unavailable, decode_json, decode_order_request, unavailable
from contracts.api import error, json_encoder

log = logging.getLogger("command.ws")
MAX_IN_FLIGHT = 1024  # per connection; beyond it we stop reading (backpressure)
ORDER_TYPES = ("limit", "market", "stop_limit", "stop_market")


def _err(request_id, exc: EdgeError) -> bytes:
    return json_encoder.encode({"type": "error", "request_id": request_id,
                                **error(exc.code, exc.message, exc.field)})


@websocket("/ws")
async def order_socket(socket: WebSocket) -> None:
    st = socket.app.state
    try:
        principal = await st.auth.authenticate(socket.headers.get("authorization"))
    except EdgeError as exc:
        await socket.accept()
        await socket.send_text(_err(None, exc).decode())
        await socket.close(code=4401, reason=exc.code)
        return
    await socket.accept()
    out: asyncio.Queue = asyncio.Queue()
    slots = asyncio.Semaphore(MAX_IN_FLIGHT)
    tasks: set[asyncio.Task] = set()

    async def writer():
        while True:
            data = await out.get()
            if data is None:
                return
            await socket.send_text(data.decode())

    async def handle(msg: dict):
        request_id = msg.get("request_id")
        try:
            st.limiter.check(principal.rate_key if principal.client_id else "ws:" + str(id(socket)))
            kind = msg.get("type")
            if kind == "order" or (kind in ORDER_TYPES and "side" in msg):
                # {"type":"order","order_type":...}; the seed's duplicated "type" key arrives
                # as its last value ("limit"/"market"), which we accept too.
                body = {k: v for k, v in msg.items() if k not in ("type", "order_type", "request_id")}
                body["type"] = msg.get("order_type", kind if kind != "order" else None)
                if body["type"] is None:
                    raise EdgeError(400, "missing_field", "order_type is required", "order_type")
                req = decode_order_request(body)
                status, payload, headers = await st.entry.place(principal, req, with_book=False)
                prefix = b'{"type":"order_accepted","request_id":' + json_encoder.encode(request_id)
                if headers:
                    prefix += b',"replayed":true'
                if status >= 400:
                    out.put_nowait(b'{"type":"error","request_id":' + json_encoder.encode(request_id) + b"," + payload[1:])
                else:
                    out.put_nowait(prefix + b"," + payload[1:])
            elif kind == "cancel":
                order_id = msg.get("order_id")
                if not isinstance(order_id, str) or not order_id:
                    raise EdgeError(400, "missing_field", "order_id is required", "order_id")
                status, payload, _ = await st.entry.cancel(principal, order_id)
                out.put_nowait(b'{"type":"cancel_accepted","request_id":' + json_encoder.encode(request_id)
                               + b"," + payload[1:])
            elif kind == "ping":
                out.put_nowait(b'{"type":"pong","request_id":' + json_encoder.encode(request_id) + b"}")
            else:
                raise EdgeError(400, "unknown_type", f"unknown message type {kind!r}", "type")
        except EdgeError as exc:
            out.put_nowait(_err(request_id, exc))
        except Exception as exc:
            if database_unavailable(exc):
                out.put_nowait(_err(request_id, unavailable()))
            else:
                log.exception("ws request failed")
                out.put_nowait(_err(request_id, EdgeError(500, "internal", "internal error")))
        finally:
            slots.release()

    writer_task = asyncio.create_task(writer())
    try:
        while True:
            raw = await socket.receive_data(mode="text")
            try:
                msg = decode_json(msgspec.json.decode, raw)
            except EdgeError as exc:
                out.put_nowait(_err(None, exc))
                continue
            if not isinstance(msg, dict):
                out.put_nowait(_err(None, EdgeError(400, "invalid_message", "message must be a JSON object")))
                continue
            await slots.acquire()
            t = asyncio.create_task(handle(msg))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
    except WebSocketDisconnect:
        pass
    finally:
        # Requests already handed to a sequencer still commit; their answers are dropped.
        for t in list(tasks):
            try:
                await t
            except Exception:
                pass
        out.put_nowait(None)
        writer_task.cancel()
