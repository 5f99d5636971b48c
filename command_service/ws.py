"""WS /ws: order entry, cancel, amend and cancel-all over one WebSocket, many requests in
flight. A `session` message with cancel_on_disconnect:true makes the orders placed over this
socket (before or after that message) be cancelled when it closes.

Each request is answered after its batch commits, in completion order (request_id ties
answers to requests). Served as bare ASGI (like command_service.fastpath), not through
Litestar: this is the highest-rate entry point, and per message we want no task, no
coroutine chain and no middleware. A request that needs no database read before the
sequencer (the common case) is decoded, validated and submitted synchronously in the
receive loop; the sequencer's future carries a callback that queues the answer. Only
requests with an idempotency key, a client order id or a cancel of an order not in the
book run as a task.

On the command service's own WebSocket protocol (command_service/ws_transport.py) the
messages come to `on_message` straight from the protocol, and answers are written from the
future's callback (no receive() per message, no writer task). Elsewhere one writer task per
connection drains the queued answers, so a batch commit that resolves hundreds of requests
wakes the writer once.
"""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal
from typing import Any, Optional

import msgspec
from uvicorn.protocols.utils import ClientDisconnected

from command_service.auth import authenticate_guarded
from command_service.edge import (
    AmendRequest,
    CancelAllRequest,
    Num,
    OrderFields,
    OrderRequest,
    answer,
    check_cancel_all,
    decode_json,
    validation_error,
)
from command_service.sequencer import Unavailable
from command_service.ws_transport import CoalescingWebSocketProtocol
from contracts.api import ApiError, error, json_encoder
from contracts.auth import REVOKED_CLOSE_CODE, SESSION_RECHECK_S, bearer_token
from contracts.enums import CancelReason, OrderType, Side
from contracts.ratelimit import rate_limit_fields

log = logging.getLogger("command.ws")
MAX_IN_FLIGHT = 1024  # per connection; beyond it we stop reading (backpressure)
PRUNE_PLACED = 4096  # placed-order ids kept per connection before closed ones are dropped
ORDER_TYPES = frozenset(t.value for t in OrderType)


class WsMessage(OrderFields, kw_only=True):
    """Every message a client may send, decoded in one pass. `type` is "order", "cancel" or
    "ping"; the seed's form puts the order type in `type` ({"type":"limit","side":...}).
    A new order's own id is `client_order_id` (`order_id`: its deprecated alias); a cancel or
    amend names its order by `order_id` (the server's id or the caller's client order id) or by
    `client_order_id`."""

    type: Optional[str] = None
    request_id: Any = None
    order_type: Optional[OrderType] = None
    side: Optional[Side] = None
    quantity: Optional[Num] = None
    cancel_on_disconnect: Optional[bool] = None  # session
    all: Optional[bool] = None  # cancel_all on every instrument


_decode_message = msgspec.json.Decoder(WsMessage, float_hook=Decimal).decode
_encode = json_encoder.encode


def _err(request_id, exc: ApiError, limits: bytes = b"") -> bytes:
    body = {"type": "error", "request_id": request_id, **error(exc.code, exc.message, exc.field)}
    if exc.status == 429 and exc.headers and "RateLimit" in exc.headers:
        body["rate_limit"] = rate_limit_fields(exc.headers)
    elif limits:
        return b"{" + limits + _encode(body)[1:]
    return _encode(body)


def _limits_fragment(limits) -> bytes:
    """The RateLimit header figures as a JSON member of every answer (b"" when off)."""
    if not limits:
        return b""
    return b'"rate_limit":' + _encode(rate_limit_fields(limits)) + b","


def _decode(raw) -> WsMessage:
    try:
        return _decode_message(raw)
    except msgspec.ValidationError as exc:
        # The typed decode failed; find the request_id (and whether it is an object at all)
        # the slow way, so the error still says which request it answers.
        try:
            loose = msgspec.json.decode(raw)
        except Exception:
            loose = None
        if not isinstance(loose, dict):
            raise _Bad(None, ApiError(400, "invalid_message", "message must be a JSON object")) from None
        rid = loose.get("request_id")
        raise _Bad(rid if isinstance(rid, (str, int, float, bool)) else None, validation_error(str(exc))) from None
    except Exception:
        try:
            decode_json(msgspec.json.decode, raw)
        except ApiError as edge:
            raise _Bad(None, edge) from None
        raise _Bad(None, ApiError(400, "invalid_json", "message is not valid JSON")) from None


class _Bad(Exception):
    def __init__(self, request_id, edge: ApiError):
        self.request_id = request_id
        self.edge = edge


def _target(m: WsMessage) -> str:
    """The order a cancel or amend names: `order_id` (server id or the caller's client order
    id) or `client_order_id`."""
    if m.order_id is not None:
        if m.client_order_id is not None:
            raise ApiError(400, "invalid_field", "send order_id or client_order_id, not both", "client_order_id")
        return m.order_id
    if m.client_order_id is None:
        raise ApiError(400, "missing_field", "order_id is required", "order_id")
    return m.client_order_id


def _order_request(m: WsMessage, order_type) -> OrderRequest:
    if m.side is None:
        raise ApiError(400, "missing_field", "side is required", "side")
    if m.quantity is None:
        raise ApiError(400, "missing_field", "quantity is required", "quantity")
    # Every field was validated by the typed decode (same annotated types as OrderRequest).
    return OrderRequest(side=m.side, type=order_type, quantity=m.quantity, client_id=m.client_id,
                        instrument=m.instrument, price=m.price, stop_price=m.stop_price,
                        time_in_force=m.time_in_force, post_only=m.post_only,
                        self_trade_prevention=m.self_trade_prevention, order_id=m.order_id,
                        client_order_id=m.client_order_id,
                        idempotency_key=m.idempotency_key, display_quantity=m.display_quantity,
                        expire_time=m.expire_time)


class OrderSocket:
    """One /ws connection after the handshake."""

    def __init__(self, st, principal, rate_key: str, key: str | None = None):
        self.st = st
        self.key = key  # the session's API key, re-checked every SESSION_RECHECK_S
        self.revoked = False
        self.entry = st.entry
        self.principal = principal
        self.rate_key = rate_key
        self.out: list[bytes] = []
        self.wake = asyncio.Event()
        self.room = asyncio.Event()
        self.in_flight = 0
        self.tasks: set[asyncio.Task] = set()
        # Ids of the orders placed over this socket (for cancel_on_disconnect, which may be
        # switched on at any time), in two generations: `placed` collects new ids; every
        # PRUNE_PLACED of them move to `earlier`, whose ids that no longer rest are dropped
        # then. An id is only dropped a generation after it was placed, so an order still
        # on its way to the engine is never forgotten.
        # Both map order id -> instrument: an order whose instrument moved to another node since
        # (handover, takeover) is cancelled by that node (cancel_remote), not looked for here.
        self.placed: dict[str, str] = {}
        self.earlier: dict[str, str] = {}
        # Orders placed over this socket on instruments another node owns (forwarded; several nodes,
        # issue 14): order id -> instrument, so that cancel-on-disconnect reaches their owner. Pruned
        # like `earlier`, from the orders table (this node's books do not hold them).
        self.remote: dict[str, str] = {}
        self._pruning_remote = False
        self.closed = False
        self.cancel_on_disconnect = False
        # The protocol when it delivers messages and takes answers directly (see the module doc);
        # `paused`: reading stopped while MAX_IN_FLIGHT requests are unanswered.
        self.direct: CoalescingWebSocketProtocol | None = None
        self.paused = False

    # ---------------------------------------------------------------- answers
    def push(self, data: bytes) -> None:
        direct = self.direct
        if direct is not None:
            try:
                direct.send_text_now(data)
            except ClientDisconnected:  # closing or gone: receive() reports the disconnect
                pass
            return
        self.out.append(data)
        self.wake.set()

    def done(self) -> None:
        self.in_flight -= 1
        if self.in_flight < MAX_IN_FLIGHT:
            self.room.set()
            if self.paused:
                self.paused = False
                if not self.direct.transport.is_closing():
                    self.direct.transport.resume_reading()

    def on_direct_message(self, raw) -> None:
        """A message from the protocol (direct mode); stops reading at MAX_IN_FLIGHT."""
        if self.revoked or self.closed:
            return
        self.on_message(raw)
        if self.in_flight >= MAX_IN_FLIGHT and not self.paused:
            self.paused = True
            self.direct.transport.pause_reading()

    def _answer(self, kind: bytes, request_id, fut: asyncio.Future, limits: bytes = b"") -> None:
        self.done()
        exc = Unavailable("cancelled") if fut.cancelled() else fut.exception()
        if exc is None:
            self._reply(kind, request_id, *fut.result(), limits=limits)
        elif isinstance(exc, Unavailable):
            self.push(_err(request_id, ApiError(503, "unavailable", str(exc)), limits))
        else:
            self._failed(request_id, exc, limits)

    def _reply(self, kind: bytes, request_id, status: int, payload: bytes, replayed: bool = False,
               limits: bytes = b"") -> None:
        """A use case's (status, JSON object) as a WS message: `kind` or, for 4xx/5xx, error."""
        head = b'{"type":"' + (b"error" if status >= 400 else kind) + b'","request_id":' + _encode(request_id)
        self.push(head + (b',"replayed":true,' if replayed else b",") + limits + payload[1:])

    def _failed(self, request_id, exc: BaseException, limits: bytes = b"") -> None:
        self.push(_err(request_id, answer(exc, "on a /ws request"), limits))

    # ---------------------------------------------------------------- requests
    def on_message(self, raw) -> None:
        try:
            m = _decode(raw)
        except _Bad as bad:
            self.push(_err(bad.request_id, bad.edge))
            return
        rid = m.request_id
        lim = b""
        try:
            lim = _limits_fragment(self.st.limiter.check(self.rate_key))
            kind = m.type
            if kind == "order" or (kind in ORDER_TYPES and m.side is not None):
                # {"type":"order","order_type":...}; the seed's duplicated "type" key arrives
                # as its last value ("limit"/"market"), which we accept too.
                order_type = m.order_type if kind == "order" else (m.order_type or OrderType(kind))
                if order_type is None:
                    raise ApiError(400, "missing_field", "order_type is required", "order_type")
                req = _order_request(m, order_type)
                if len(self.placed) >= PRUNE_PLACED:
                    self._prune_placed()
                fut = self.entry.place_nowait(self.principal, req, with_book=False, track=self.placed)
                if fut is None:
                    self._spawn(self._place_slow(rid, req, lim))
                else:
                    self.in_flight += 1
                    fut.add_done_callback(lambda f: self._answer(b"order_accepted", rid, f, lim))
            elif kind == "cancel":
                target = _target(m)
                fut = self.entry.cancel_nowait(self.principal, target)
                if fut is None:
                    self._spawn(self._cancel_slow(rid, target, None, lim))
                else:
                    self.in_flight += 1
                    fut.add_done_callback(lambda f: self._cancel_done(rid, target, f, lim))
            elif kind == "amend":
                target = _target(m)
                req = AmendRequest(quantity=m.quantity, price=m.price)
                fut = self.entry.amend_nowait(self.principal, target, req, with_book=False)
                # a task, not a callback: "closed meanwhile" (status 0) is resolved from the database
                self._spawn(self._amend(rid, target, req, fut, lim))
            elif kind == "cancel_all":
                instrument = _given(raw, "instrument")
                req = check_cancel_all(CancelAllRequest(all=m.all, instrument=instrument, side=m.side,
                                                        client_id=m.client_id))
                self._spawn(self._cancel_all(rid, req, lim))
            elif kind == "session":
                if m.cancel_on_disconnect is None:
                    raise ApiError(400, "missing_field", "cancel_on_disconnect is required", "cancel_on_disconnect")
                if m.cancel_on_disconnect:
                    self.principal.require_trade()
                self.cancel_on_disconnect = m.cancel_on_disconnect
                self.push(b'{"type":"session","request_id":' + _encode(rid) + b"," + lim
                          + b'"cancel_on_disconnect":' + (b"true" if self.cancel_on_disconnect else b"false") + b"}")
            elif kind == "ping":
                self.push(b'{"type":"pong",' + lim + b'"request_id":' + _encode(rid) + b"}")
            else:
                raise ApiError(400, "unknown_type", f"unknown message type {kind!r}", "type")
        except Exception as exc:
            self._failed(rid, exc, lim)

    def _prune_placed(self) -> None:
        """Forget ids of earlier orders that no longer rest (filled, cancelled): amortised
        O(1) per order; memory ~ the socket's open orders + one generation."""
        entry = self.entry
        earlier = {}
        for oid, sym in self.earlier.items():
            if entry.is_resting(oid):
                earlier[oid] = sym
            elif entry.owned_elsewhere(sym):
                # Its instrument moved to another node: tracked (and pruned) like a forwarded order.
                self.remote[oid] = sym
        earlier.update(self.placed)
        self.earlier = earlier
        self.placed.clear()  # the same dict: slow-path places in flight still add to it

    def _cancel_done(self, rid, order_id: str, fut: asyncio.Future, lim: bytes = b"") -> None:
        if not fut.cancelled() and fut.exception() is None and fut.result()[0] == 0:
            # The order closed before the cancel ran: the database row says how.
            self.done()
            self._spawn(self._cancel_slow(rid, order_id, fut.result(), lim))
        else:
            self._answer(b"cancel_accepted", rid, fut, lim)

    def _spawn(self, coro) -> None:
        self.in_flight += 1
        t = asyncio.create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def _place_slow(self, rid, req: OrderRequest, lim: bytes = b"") -> None:
        try:
            if len(self.remote) >= PRUNE_PLACED and not self._pruning_remote:
                self._pruning_remote = True
                self._spawn_quiet(self._prune_remote())
            status, payload, headers = await self.entry.place(self.principal, req, with_book=False,
                                                              track=self.placed, track_remote=self.remote)
            if self.closed and self.cancel_on_disconnect and self.remote:
                # The socket dropped while this forwarded place was on its way: its order is
                # cancelled now, like the ones already placed (an order placed locally is in the
                # book at disconnect time and needs nothing more).
                self._cancel_remote()
            self._reply(b"order_accepted", rid, status, payload, replayed=bool(headers) and status < 400,
                        limits=lim)
        except Exception as exc:
            self._failed(rid, exc, lim)
        finally:
            self.done()

    def _spawn_quiet(self, coro) -> None:
        t = asyncio.create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def _prune_remote(self) -> None:
        """Forget forwarded orders that are no longer open (the owner's committed rows say so)."""
        try:
            ids = list(self.remote)
            still = await self.entry.still_open(ids)
            for oid in ids:
                if oid not in still:
                    self.remote.pop(oid, None)
        except Exception as exc:  # PostgreSQL away: tried again at the next PRUNE_PLACED
            log.warning("ws: forwarded orders not pruned: %r", exc)
        finally:
            self._pruning_remote = False

    def _cancel_remote(self) -> None:
        orders, self.remote = self.remote, {}
        self.entry.cancel_remote(self.principal, orders, CancelReason.DISCONNECT)

    async def _cancel_slow(self, rid, order_id: str, answer, lim: bytes = b"") -> None:
        try:
            if answer is None:
                status, payload, _ = await self.entry.cancel(self.principal, order_id)
            else:
                status, payload, _ = await self.entry.finish_cancel(self.principal, order_id, answer)
            self._reply(b"cancel_accepted", rid, status, payload, limits=lim)
        except Exception as exc:
            self._failed(rid, exc, lim)
        finally:
            self.done()

    async def _amend(self, rid, order_id: str, req: AmendRequest, fut, lim: bytes) -> None:
        try:
            answer = (0, b"") if fut is None else await fut
            if answer[0]:
                status, payload = answer
            else:
                # closed before the amend ran, or in no book: the database says how
                status, payload, _ = await self.entry.amend(self.principal, order_id, req, with_book=False)
            self._reply(b"amend_accepted", rid, status, payload, limits=lim)
        except Unavailable as exc:
            self.push(_err(rid, ApiError(503, "unavailable", str(exc)), lim))
        except Exception as exc:
            self._failed(rid, exc, lim)
        finally:
            self.done()

    async def _cancel_all(self, rid, req: CancelAllRequest, lim: bytes) -> None:
        try:
            status, payload, _ = await self.entry.cancel_all(self.principal, req)
            self._reply(b"cancel_all_accepted", rid, status, payload, limits=lim)
        except Exception as exc:
            self._failed(rid, exc, lim)
        finally:
            self.done()

    # ---------------------------------------------------------------- I/O
    async def writer(self, send) -> None:
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                batch, self.out = self.out, []
                for data in batch:
                    await send({"type": "websocket.send", "text": data.decode()})
        except Exception:  # the client went away; the receive loop sees the disconnect
            return

    async def watch_key(self, send) -> None:
        """Close the session once its key is revoked (issue 20: a /ws session traded 90 s after
        its key was revoked). Every message after that is refused: on_message checks `revoked`."""
        while not await self.st.auth.revoked(self.key):
            await asyncio.sleep(SESSION_RECHECK_S)
        self.revoked = True
        try:
            self.push(_err(None, ApiError(401, "unauthorized", "the API key of this session was revoked",
                                          "authorization")))
            await asyncio.sleep(0.05)  # the writer task sends the error before the close
            await send({"type": "websocket.close", "code": REVOKED_CLOSE_CODE, "reason": "api key revoked"})
        except Exception:  # the client is gone already
            return

    async def run(self, receive, send) -> None:
        protocol = getattr(receive, "__self__", None)
        writer = None
        if isinstance(protocol, CoalescingWebSocketProtocol):
            self.direct = protocol
            # Anything uvicorn queued before this point is handled first, in order (nothing yields
            # between the accept and here, so normally nothing is; uvicorn stops reading while its
            # queue holds a message). From then on the protocol calls on_direct_message itself.
            early = []
            while not protocol.queue.empty():
                early.append(protocol.queue.get_nowait())
            protocol.on_message = self.on_direct_message
            for message in early:
                if message["type"] == "websocket.receive":
                    text = message.get("text")
                    self.on_direct_message(text if text is not None else message.get("bytes") or b"")
                else:
                    protocol.queue.put_nowait(message)  # a disconnect: seen by the loop below
            if protocol.read_paused:
                protocol.read_paused = False
                if not self.paused:
                    protocol.transport.resume_reading()
        else:
            writer = asyncio.create_task(self.writer(send))
        watcher = asyncio.create_task(self.watch_key(send)) if self.key else None
        try:
            while True:
                message = await receive()
                t = message["type"]
                if self.revoked:
                    return
                if t == "websocket.receive":
                    raw = message.get("text")
                    self.on_message(raw if raw is not None else message.get("bytes") or b"")
                    if self.in_flight >= MAX_IN_FLIGHT:
                        self.room.clear()
                        await self.room.wait()
                elif t == "websocket.disconnect":
                    return
        finally:
            # Requests already handed to a sequencer still commit; their answers are dropped.
            if writer is not None:
                writer.cancel()
            if self.direct is not None:
                self.direct.on_message = None
            if watcher is not None:
                watcher.cancel()
            self.closed = True
            if self.cancel_on_disconnect:
                # cancel_on_disconnect: only this socket's orders, those still resting. An
                # order whose place is still in flight is in the book by now (the engine
                # runs before the commit), so it is found here too. Orders on instruments
                # another node serves now (placed there, or moved there since) go to that node.
                mine = {**self.earlier, **self.placed}
                moved = {oid: sym for oid, sym in mine.items() if self.entry.owned_elsewhere(sym)}
                self.remote.update(moved)
                if self.remote:
                    self._cancel_remote()
                here = [oid for oid in mine if oid not in moved]
                if here:
                    self.entry.cancel_orders(self.principal, here, CancelReason.DISCONNECT)


def _given(raw, field: str):
    """A field's value only if the message really carries it (the typed decode fills in
    defaults, e.g. instrument="BTC-USD", where cancel_all means every instrument)."""
    try:
        loose = msgspec.json.decode(raw)
    except Exception:
        return None
    value = loose.get(field) if isinstance(loose, dict) else None
    if value is not None and not isinstance(value, str):
        raise ApiError(400, "invalid_field", f"{field} must be a string", field)
    return value


async def serve(st, scope, receive, send) -> None:
    """The ASGI application of WS /ws."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    authorization = real_ip = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = value.decode("latin-1")
        elif name == b"x-real-ip":
            real_ip = value.decode("latin-1")
    client = scope.get("client")
    try:
        principal = await authenticate_guarded(st, authorization,
                                               st.unauth.address(client[0] if client else "", real_ip))
    except Exception as exc:
        edge = answer(exc, "authenticating /ws")
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": _err(None, edge).decode()})
        await send({"type": "websocket.close", "code": 4401 if edge.status == 401 else 1013, "reason": edge.code})
        return
    await send({"type": "websocket.accept"})
    rate_key = principal.rate_key if principal.client_id else f"ws:{id(scope)}"
    key = bearer_token(authorization) if principal.client_id else None
    await OrderSocket(st, principal, rate_key, key).run(receive, send)
