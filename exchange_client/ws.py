"""Order entry over WS /ws (command service): many requests in flight on one connection, each
answered after commit; answers are matched to requests by `request_id`.

    async with OrderSocket("http://127.0.0.1:3000", api_key, cancel_on_disconnect=True) as ws:
        r = await ws.place_order("buy", Decimal("0.1"), price=Decimal("70000"))
        await ws.amend_order(r["order"]["order_id"], price=Decimal("70001"))
        await ws.cancel_order(r["order"]["order_id"])
        await ws.cancel_all(instrument="BTC-USD")

Errors are raised as the same typed exceptions as over HTTP (the /ws error message has a code but
no HTTP status: the class comes from the code). Every order carries an idempotency_key (a new UUID
unless given): after a dropped connection (ConnectionFailed), sending the same order again with
the same key cannot place it twice."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from exchange_client import codec
from exchange_client.client import _clean, _num
from exchange_client.errors import (
    Conflict,
    ConnectionFailed,
    ExchangeError,
    Forbidden,
    InvalidRequest,
    NotFound,
    RateLimited,
    ServerError,
    Unauthorized,
    Unavailable,
)

# The WS codes that are not 400s (docs/ERRORS.md): the HTTP status the same condition gets.
_BY_CODE = {"unauthorized": (401, Unauthorized), "forbidden": (403, Forbidden),
            "insufficient_scope": (403, Forbidden), "not_found": (404, NotFound),
            "order_closed": (409, Conflict), "duplicate_order_id": (409, Conflict),
            "duplicate_client_order_id": (409, Conflict),
            "post_only_would_cross": (409, Conflict), "idempotency_key_reused": (409, Conflict),
            "rate_limited": (429, RateLimited), "too_many_requests": (429, RateLimited),
            "unavailable": (503, Unavailable), "bad_gateway": (502, Unavailable), "internal": (500, ServerError)}


def ws_error(err: dict) -> ExchangeError:
    code = str(err.get("code", "error"))
    status, cls = _BY_CODE.get(code, (400, InvalidRequest))
    return cls(status, code, str(err.get("message", "")), err.get("field"), body=err)


def ws_url(url: str) -> str:
    base = url.rstrip("/")
    if base.startswith(("ws://", "wss://")):
        return base
    return ("wss://" + base[8:] if base.startswith("https://") else "ws://" + base.removeprefix("http://")) + "/ws"


class OrderSocket:
    """cancel_on_disconnect=True: right after connecting, a `session` message asks the exchange to
    cancel the orders placed over this socket when it closes (also a dropped connection); the
    socket is ready only once the exchange confirmed it. session() changes it later."""

    def __init__(self, url: str, api_key: str, *, timeout: float = 10.0, cancel_on_disconnect: bool = False):
        self.url = ws_url(url)
        self.api_key = api_key
        self.timeout = timeout
        self.cancel_on_disconnect = cancel_on_disconnect
        self._ws = None
        self._reader: asyncio.Task | None = None
        self._pending: dict[str, asyncio.Future] = {}
        self._ids = (f"c{n}" for n in itertools.count(1))

    async def __aenter__(self) -> "OrderSocket":
        self._ws = await connect(self.url, additional_headers={"Authorization": f"Bearer {self.api_key}"},
                                 max_size=2**24)
        self._reader = asyncio.create_task(self._read())
        if self.cancel_on_disconnect:
            try:
                await self.session(cancel_on_disconnect=True)
            except BaseException:
                await self.close()
                raise
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._ws is not None:
            await self._ws.close()
        self._fail_all("connection closed")

    def _fail_all(self, why: str) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionFailed(0, "connection_failed", why))
        self._pending.clear()

    async def _read(self) -> None:
        try:
            async for raw in self._ws:
                msg = codec.loads(raw)
                fut = self._pending.pop(msg.get("request_id"), None)
                if fut is None or fut.done():
                    continue  # e.g. an error about the connection itself (no request_id)
                if msg.get("type") == "error":
                    fut.set_exception(ws_error(msg.get("error") or {}))
                else:
                    fut.set_result(msg)
        except ConnectionClosed as exc:
            self._fail_all(f"connection closed: {exc}")

    async def _request(self, msg: dict) -> dict:
        rid = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            await self._ws.send(codec.dumps({**msg, "request_id": rid}))
        except ConnectionClosed as exc:
            self._pending.pop(rid, None)
            raise ConnectionFailed(0, "connection_failed", str(exc)) from None
        return await asyncio.wait_for(fut, self.timeout)

    async def place_order(self, side: str, quantity, *, type: str = "limit", price=None, instrument: str = "BTC-USD",
                          time_in_force: str | None = None, post_only: bool | None = None, stop_price=None,
                          self_trade_prevention: str | None = None, client_order_id: str | None = None,
                          idempotency_key: str | None = None, order_id: str | None = None, **extra) -> dict:
        """-> {type: order_accepted, order, trades} after commit. `client_order_id`: your own id
        (unique among your orders); `order_id`: its deprecated alias."""
        return await self._request(_clean({
            "type": "order", "order_type": type, "side": side, "quantity": _num(quantity), "price": _num(price),
            "instrument": instrument, "time_in_force": time_in_force, "post_only": post_only,
            "stop_price": _num(stop_price), "self_trade_prevention": self_trade_prevention,
            "client_order_id": client_order_id, "order_id": order_id,
            "idempotency_key": idempotency_key or uuid.uuid4().hex, **extra}))

    async def cancel_order(self, order_id: str) -> dict:
        """-> {type: cancel_accepted, order}. `order_id`: the server's id or your client_order_id."""
        return await self._request({"type": "cancel", "order_id": order_id})

    async def amend_order(self, order_id: str, quantity=None, price=None) -> dict:
        """-> {type: amend_accepted, order, trades}. `quantity` is the new total (more than the
        filled quantity), `price` the new limit; a pure decrease keeps time priority. Errors as
        over HTTP: invalid_amend (nothing to change), not_found, order_closed, post_only_would_cross."""
        return await self._request(_clean({"type": "amend", "order_id": order_id, "quantity": _num(quantity),
                                           "price": _num(price)}))

    async def cancel_all(self, instrument: str | None = None, side: str | None = None,
                         client_id: str | None = None) -> dict:
        """-> {type: cancel_all_accepted, cancelled: [order_id]}: the key's open orders (of one
        instrument and side if given; every instrument when not)."""
        return await self._request(_clean({"type": "cancel_all", "instrument": instrument, "side": side,
                                           "client_id": client_id}))

    async def session(self, *, cancel_on_disconnect: bool) -> dict:
        """-> {type: session, cancel_on_disconnect}. True: the orders placed over this socket (before
        or after this message) that still rest are cancelled when the socket closes."""
        r = await self._request({"type": "session", "cancel_on_disconnect": cancel_on_disconnect})
        self.cancel_on_disconnect = bool(r.get("cancel_on_disconnect"))
        return r

    async def ping(self) -> dict:
        return await self._request({"type": "ping"})
