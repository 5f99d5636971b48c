"""HTTP clients for every route of the exchange: `ExchangeClient` (sync) and
`AsyncExchangeClient` (asyncio), both on httpx, with the same methods.

- Decimals in and out exactly (exchange_client.codec).
- `place_order` sends an `idempotency_key` (a new UUID unless you pass one), so a request that
  timed out or met a 5xx is retried safely: if the first attempt was committed, the retry
  returns the original answer (header `Idempotent-Replayed: true`) instead of a second order.
- 429 and 503 are retried after `Retry-After` (capped by `max_wait`); 502/504 and connection
  errors are retried for requests that are safe to repeat (reads, orders with their key, cancels).
- Errors are raised as typed exceptions (exchange_client.errors) built from the error body.
- Answers are dicts; with `typed=True` the main ones are msgspec Structs (exchange_client.results).
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal

import httpx

from exchange_client import codec, results
from exchange_client.errors import ConnectionFailed, ExchangeError, error_from

DEFAULT_URL = "http://127.0.0.1:3000"
RETRY_STATUSES = {429, 502, 503, 504}


@dataclass
class _Call:
    method: str
    path: str
    params: dict | None = None
    body: dict | None = None
    safe_to_repeat: bool = True  # may be sent again after an answer-less failure
    text: bool = False  # the answer is not JSON (/metrics)
    headers: dict = field(default_factory=dict)
    name: str | None = None  # the client method (set by @_route)


# (HTTP method, path as in the OpenAPI documents) -> the client method that calls it. Filled by
# @_route; tests/unit/test_client_routes.py checks that every route of both served OpenAPI
# documents is here (and calls each method to see it hits its route), so the client cannot drift.
ROUTES: dict[tuple[str, str], str] = {}


class _Build:
    """Stands in for the client while a route method builds its _Call (the methods only call
    self._do), so @_route can tag the call with the method's name before it is sent."""

    @staticmethod
    def _do(call: "_Call") -> "_Call":
        return call


_BUILD = _Build()


def _route(method: str, path: str):
    def mark(fn):
        ROUTES[(method, path)] = fn.__name__

        @functools.wraps(fn)
        def send(self, *args, **kwargs):
            call = fn(_BUILD, *args, **kwargs)
            call.name = fn.__name__  # the typed result (exchange_client.results) is chosen by it
            return self._do(call)
        return send
    return mark


def _time(v):
    """A time as the API takes it: ISO 8601 text as it is, a datetime as ISO 8601 (naive = UTC)."""
    if isinstance(v, datetime):
        return (v if v.tzinfo else v.replace(tzinfo=timezone.utc)).isoformat()
    return v


def _clean(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


def _num(v):
    """A price or quantity as the API takes it: Decimal/int/str pass, float is refused."""
    if v is None or isinstance(v, (Decimal, str)) or (isinstance(v, int) and not isinstance(v, bool)):
        return v
    raise TypeError(f"{v!r}: pass a Decimal, an int or a decimal string (floats are not exact)")


class _Routes:
    """Every route, as _Call values; the sync and async clients execute them."""

    def _do(self, call: _Call):  # pragma: no cover - implemented by the clients
        raise NotImplementedError

    # ------------------------------------------------------------------ command service
    @_route("POST", "/orders")
    def place_order(self, side: str, quantity, *, type: str = "limit", price=None, instrument: str = "BTC-USD",
                    time_in_force: str | None = None, post_only: bool | None = None, stop_price=None,
                    self_trade_prevention: str | None = None, client_order_id: str | None = None,
                    client_id: str | None = None, idempotency_key: str | None = None, display_quantity=None,
                    expire_time: str | datetime | None = None, order_id: str | None = None, **extra):
        """POST /orders -> {order, trades, orderbook}.

        type: limit, market, stop_limit, stop_market; time_in_force: GTC, IOC, FOK, GTD (GTD needs
        `expire_time`, ISO 8601 text or a datetime, in the future); `display_quantity` makes a limit
        order an iceberg that shows that much at a time; self_trade_prevention: cancel_newest (the
        server's default), cancel_oldest, cancel_both. `client_order_id`: your own id for the order,
        unique among all your orders (409 duplicate_client_order_id when reused); the answer's
        `order_id` is always the server's, and get/cancel/amend take either. `order_id` is the
        seed API's deprecated alias of client_order_id. `extra` passes fields this client does not
        name yet through unchanged."""
        body = _clean({"side": side, "type": type, "quantity": _num(quantity), "price": _num(price),
                       "instrument": instrument, "time_in_force": time_in_force, "post_only": post_only,
                       "stop_price": _num(stop_price), "self_trade_prevention": self_trade_prevention,
                       "client_order_id": client_order_id, "order_id": order_id, "client_id": client_id,
                       "display_quantity": _num(display_quantity), "expire_time": _time(expire_time),
                       "idempotency_key": idempotency_key or uuid.uuid4().hex,
                       **{k: _num(v) if isinstance(v, (Decimal, float)) else v for k, v in extra.items()}})
        return self._do(_Call("POST", "/orders", body=body))

    @_route("POST", "/orders/{order_id}/amend")
    def amend_order(self, order_id: str, quantity=None, price=None):
        """POST /orders/{order_id}/amend -> {order, trades, orderbook}. `quantity` is the new total
        (more than the filled quantity), `price` the new limit; give one or both. A pure decrease
        keeps the order's time priority; a price change or an increase re-enters at the back and
        may trade. Errors: 400 invalid_amend (nothing to change), 404, 409 order_closed, 409
        post_only_would_cross (the order stays as it was)."""
        # Not repeated after an answer-less failure: if the first attempt was committed, the
        # same amend again changes nothing and is refused (invalid_amend), which would hide
        # that it worked. Read the order (get_order) to find out instead.
        return self._do(_Call("POST", f"/orders/{order_id}/amend",
                              body=_clean({"quantity": _num(quantity), "price": _num(price)}), safe_to_repeat=False))

    @_route("POST", "/orders/{order_id}/cancel")
    def cancel_order(self, order_id: str):
        """POST /orders/{order_id}/cancel -> {order}. `order_id`: the server's id or your client_order_id."""
        return self._do(_Call("POST", f"/orders/{order_id}/cancel"))

    @_route("POST", "/orders/cancel-all")
    def cancel_all(self, instrument: str | None = None, side: str | None = None, client_id: str | None = None):
        """POST /orders/cancel-all -> {cancelled: [order_id]}; without an instrument, on every
        instrument (sent as the explicit `"all": true` the API requires)."""
        body = _clean({"instrument": instrument, "side": side, "client_id": client_id})
        if instrument is None:
            body["all"] = True
        return self._do(_Call("POST", "/orders/cancel-all", body=body))

    @_route("POST", "/orders/cancel-after")
    def cancel_after(self, timeout_ms: int, client_id: str | None = None):
        """POST /orders/cancel-after -> {timeout_ms, current_time, trigger_time}: the dead man's
        switch. Unless called again within `timeout_ms` (at most 86,400,000), every open order of
        the key's client on every instrument is cancelled (cancel_reason cancel_after); 0 turns it
        off. Call it periodically (e.g. every timeout/3) while your program is healthy."""
        if isinstance(timeout_ms, bool) or not isinstance(timeout_ms, int):
            raise TypeError(f"{timeout_ms!r}: timeout_ms is an int of milliseconds")
        return self._do(_Call("POST", "/orders/cancel-after",
                              body=_clean({"timeout_ms": timeout_ms, "client_id": client_id})))

    @_route("GET", "/orders/{order_id}")
    def get_order(self, order_id: str):
        """GET /orders/{order_id} -> {order} (committed state). `order_id`: the server's id or your
        client_order_id (another client's is 404, like an unknown one)."""
        return self._do(_Call("GET", f"/orders/{order_id}"))

    @_route("POST", "/admin/snapshot")
    def admin_snapshot(self, instrument: str | None = None):
        """POST /admin/snapshot (admin key) -> {snapshots: [{instrument, seq, bytes}]}."""
        return self._do(_Call("POST", "/admin/snapshot", params=_clean({"instrument": instrument})))

    @_route("POST", "/admin/handover")
    def admin_handover(self, instrument: str):
        """POST /admin/handover (admin key): move one instrument to another command node
        -> {instrument, seq, from, to}; 409 no_other_node when no other node is live."""
        return self._do(_Call("POST", "/admin/handover", params={"instrument": instrument}))

    @_route("POST", "/admin/settlement")
    def admin_settlement(self, cutoff: str | None = None, instrument: str | None = None):
        """POST /admin/settlement (admin key) -> {cutoff, runs}."""
        return self._do(_Call("POST", "/admin/settlement", body=_clean({"cutoff": cutoff, "instrument": instrument})))

    # ------------------------------------------------------------------ query service
    @_route("GET", "/market/orderbook")
    def orderbook(self, instrument: str = "BTC-USD", levels: int | None = None):
        """GET /market/orderbook -> {instrument, bids, asks, seq, timestamp}."""
        return self._do(_Call("GET", "/market/orderbook", params=_clean({"instrument": instrument, "levels": levels})))

    @_route("GET", "/market/trades")
    def trades(self, instrument: str = "BTC-USD", limit: int | None = None):
        """GET /market/trades -> {instrument, trades (newest first), count}."""
        return self._do(_Call("GET", "/market/trades", params=_clean({"instrument": instrument, "limit": limit})))

    @_route("GET", "/market/analytics")
    def analytics(self, instrument: str = "BTC-USD", start_time: str | None = None, end_time: str | None = None,
                  interval: int | None = None):
        """GET /market/analytics -> {aggregates: [...], overall_vwap, ...} (default: the last 24 h)."""
        return self._do(_Call("GET", "/market/analytics", params=_clean(
            {"instrument": instrument, "start_time": start_time, "end_time": end_time, "interval": interval})))

    @_route("GET", "/market/candles")
    def candles(self, instrument: str = "BTC-USD", interval: str | None = None, limit: int | None = None,
                end_time: str | None = None):
        """GET /market/candles."""
        return self._do(_Call("GET", "/market/candles", params=_clean(
            {"instrument": instrument, "interval": interval, "limit": limit, "end_time": end_time})))

    @_route("GET", "/market/ticker")
    def ticker(self, instrument: str = "BTC-USD"):
        """GET /market/ticker (24 h)."""
        return self._do(_Call("GET", "/market/ticker", params={"instrument": instrument}))

    @_route("GET", "/market/time")
    def server_time(self):
        """GET /market/time -> {time (ISO 8601), epoch_ms}: the server's clock (e.g. to set GTD
        expire times or to measure your clock's offset)."""
        return self._do(_Call("GET", "/market/time"))

    @_route("GET", "/market/instruments")
    def instruments(self):
        """GET /market/instruments: tick and lot sizes, limits."""
        return self._do(_Call("GET", "/market/instruments"))

    @_route("GET", "/market/positions/{client_id}")
    def positions(self, client_id: str):
        """GET /market/positions/{client_id} (that client's key)."""
        return self._do(_Call("GET", f"/market/positions/{client_id}"))

    @_route("GET", "/market/orders")
    def orders(self, status: str | None = None, instrument: str | None = None, limit: int | None = None,
               cursor: str | None = None, client_id: str | None = None):
        """GET /market/orders: the key's client's orders, newest first (next_cursor pages on)."""
        return self._do(_Call("GET", "/market/orders", params=_clean(
            {"status": status, "instrument": instrument, "limit": limit, "cursor": cursor, "client_id": client_id})))

    @_route("GET", "/market/fills")
    def fills(self, instrument: str | None = None, limit: int | None = None, cursor: str | None = None,
              client_id: str | None = None):
        """GET /market/fills: the key's client's fills, newest first."""
        return self._do(_Call("GET", "/market/fills", params=_clean(
            {"instrument": instrument, "limit": limit, "cursor": cursor, "client_id": client_id})))

    @_route("GET", "/market/settlements")
    def settlements(self, instrument: str | None = None, limit: int | None = None, client_id: str | None = None):
        """GET /market/settlements: the key's client's settlement records."""
        return self._do(_Call("GET", "/market/settlements", params=_clean(
            {"instrument": instrument, "limit": limit, "client_id": client_id})))

    # ------------------------------------------------------------------ operations
    @_route("GET", "/healthz")
    def health(self):
        """GET /healthz: through the gateway, the whole system (raises Unavailable when unhealthy)."""
        return self._do(_Call("GET", "/healthz"))

    @_route("GET", "/healthz/system")
    def system_health(self):
        """GET /healthz/system of a query replica (its URL, not the gateway's: through the gateway
        this is what health() answers): the whole exchange (raises Unavailable when unhealthy)."""
        return self._do(_Call("GET", "/healthz/system"))

    def metrics(self) -> str:
        """GET /metrics (Prometheus text; needs an admin key on the gateway)."""
        return self._do(_Call("GET", "/metrics", text=True))


class _Policy:
    def __init__(self, max_retries: int, max_wait: float, backoff: float, typed: bool = False):
        self.max_retries = max_retries
        self.max_wait = max_wait
        self.backoff = backoff
        self.typed = typed

    def wait_for(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_wait)
        return min(self.backoff * (2 ** attempt), self.max_wait)

    @staticmethod
    def retry_after(response: httpx.Response) -> float | None:
        value = response.headers.get("retry-after")
        try:
            return max(0.0, float(value)) if value is not None else None
        except ValueError:
            return None

    def decide(self, call: _Call, attempt: int, response: httpx.Response | None, exc: Exception | None):
        """(result, error, wait): a result to return, an error to raise, or seconds to wait before retrying."""
        if response is None:
            if attempt < self.max_retries and call.safe_to_repeat:
                return None, None, self.wait_for(attempt, None)
            return None, ConnectionFailed(0, "connection_failed", f"{type(exc).__name__}: {exc}"), None
        status = response.status_code
        if status < 400:
            if call.text:
                return response.text, None, None
            body = codec.loads(response.content)
            return (results.convert(call.name, body) if self.typed and call.name else body), None, None
        retry_after = self.retry_after(response)
        try:
            body = codec.loads(response.content)
        except ValueError:
            body = None
        err = error_from(status, body, retry_after)
        # 429/503: the request was refused before it was done, always safe to send again.
        # 502/504: it may or may not have been done: only requests that are safe to repeat.
        retry = status in (429, 503) or (status in RETRY_STATUSES and call.safe_to_repeat)
        if retry and attempt < self.max_retries:
            return None, None, self.wait_for(attempt, retry_after)
        return None, err, None


class ExchangeClient(_Routes):
    """Synchronous client. `ExchangeClient(url, api_key)`; use as a context manager or call close().
    typed=True: answers as the Structs of exchange_client.results instead of dicts."""

    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None, *, timeout: float = 10.0,
                 max_retries: int = 3, max_wait: float = 5.0, backoff: float = 0.1,
                 transport: httpx.BaseTransport | None = None, typed: bool = False):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=timeout, transport=transport)
        self.policy = _Policy(max_retries, max_wait, backoff, typed)

    def _do(self, call: _Call):
        attempt = 0
        while True:
            response = exc = None
            try:
                response = self.http.request(call.method, call.path, params=call.params,
                                             content=codec.dumps(call.body) if call.body is not None else None,
                                             headers={"Content-Type": "application/json"} if call.body is not None
                                             else None)
            except httpx.TransportError as e:
                exc = e
            result, err, wait = self.policy.decide(call, attempt, response, exc)
            if err is not None:
                raise err
            if wait is None:
                return result
            time.sleep(wait)
            attempt += 1

    def close(self) -> None:
        self.http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AsyncExchangeClient(_Routes):
    """asyncio client with the same methods (each returns an awaitable)."""

    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None, *, timeout: float = 10.0,
                 max_retries: int = 3, max_wait: float = 5.0, backoff: float = 0.1,
                 transport: httpx.AsyncBaseTransport | None = None, max_connections: int = 100,
                 typed: bool = False):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout, transport=transport,
                                      limits=httpx.Limits(max_connections=max_connections))
        self.policy = _Policy(max_retries, max_wait, backoff, typed)

    async def _run(self, call: _Call):
        attempt = 0
        while True:
            response = exc = None
            try:
                response = await self.http.request(
                    call.method, call.path, params=call.params,
                    content=codec.dumps(call.body) if call.body is not None else None,
                    headers={"Content-Type": "application/json"} if call.body is not None else None)
            except httpx.TransportError as e:
                exc = e
            result, err, wait = self.policy.decide(call, attempt, response, exc)
            if err is not None:
                raise err
            if wait is None:
                return result
            await asyncio.sleep(wait)
            attempt += 1

    def _do(self, call: _Call):
        return self._run(call)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.aclose()


__all__ = ["ExchangeClient", "AsyncExchangeClient", "ExchangeError", "DEFAULT_URL"]
