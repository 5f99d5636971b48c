"""An ASGI front for the hottest routes: POST /orders, POST /orders/{id}/cancel,
POST /orders/{id}/amend and WS /ws.

Measured here, Litestar's request/response machinery costs ~60 us of CPU per request
(88 us for a trivial Litestar route vs 26 us for the same route as bare ASGI on uvicorn):
at 4,000 orders/s that is a quarter of a core. These two routes call the same use cases,
authentication, rate limit and error shapes as the Litestar handlers (which stay, for the
OpenAPI schema and every other route); everything else passes through to Litestar.

Below the ASGI layer (contracts/http_transport.py `direct_routes`, wired in
command_service/__main__.py) a new order by a key already authenticated, without an
idempotency key or client order id, is answered without any ASGI machinery at all
(`order_route_nowait`): the request is checked and submitted as soon as its body is in, and
the sequencer's future answers it. Everything else on these routes runs `order_route` in a task.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial

from command_service import ws
from command_service.auth import authenticate_guarded
from command_service.edge import (
    answer,
    check_json_body,
    check_no_query,
    check_order_id,
    decode_amend,
    decode_order_request,
)
from command_service.sequencer import Unavailable
from contracts.api import ApiError, body_too_large
from contracts.auth import OPEN
from contracts.logs import new_request_id, request_id, sane_request_id

log = logging.getLogger("command.fastpath")
_JSON = (b"content-type", b"application/json")


class OrderFastPath:
    def __init__(self, app, max_body_bytes: int):
        self.app = app
        self.max_body = max_body_bytes
        self._tasks: set[asyncio.Task] = set()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST":
            route = fast_route(scope["path"])
            if route is not None:
                return await self._handle(scope, receive, send, *route)
        elif scope["type"] == "websocket" and scope["path"] == "/ws":
            return await ws.serve(self.app.state, scope, receive, send)
        if scope["type"] == "http":
            # Litestar routes: the handler's authorize() leaves the caller's rate-limit
            # figures in the scope; they go out on the response, whatever its status.
            async def send_with_limits(message):
                if message["type"] == "http.response.start":
                    limits = scope.get(RATE_LIMIT_SCOPE_KEY)
                    if limits:
                        message = dict(message)
                        message["headers"] = list(message.get("headers", [])) + [
                            (k.lower().encode(), v.encode()) for k, v in limits.items()]
                await send(message)

            return await self.app(scope, receive, send_with_limits)
        return await self.app(scope, receive, send)

    async def _handle(self, scope, receive, send, cancel_id: str | None, amend: bool) -> None:
        authorization = content_type = real_ip = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"x-real-ip":
                real_ip = value.decode("latin-1")
        client = scope.get("client")
        address = self.app.state.unauth.address(client[0] if client else "", real_ip)
        try:
            body = await self._body(receive)
        except ApiError as exc:
            status, payload, headers = exc.status, exc.body(), exc.headers
        else:
            status, payload, headers = await order_route(self.app.state, cancel_id, body, authorization,
                                                         address, amend, content_type,
                                                         scope.get("query_string", b""))
        out = [_JSON, (b"content-length", b"%d" % len(payload))]
        if headers:
            out += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": payload})

    # ------------------------------------------------------------ below ASGI
    def direct_routes(self, scope):
        """contracts/http_transport.py: the handler of a request answered without ASGI, or None."""
        if scope["method"] != "POST":
            return None
        route = fast_route(scope["path"])
        return None if route is None else partial(self._direct, *route)

    def _direct(self, order_id: str | None, amend: bool, scope, body: bytes, respond) -> None:
        authorization = content_type = real_ip = rid = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"x-real-ip":
                real_ip = value.decode("latin-1")
            elif name == b"x-request-id" and rid is None:
                rid = sane_request_id(value)
        rid = rid or new_request_id()
        tag = (b"x-request-id", rid.encode())  # as contracts.logs.RequestIdMiddleware does

        def reply(status: int, payload: bytes, headers: dict | None) -> None:
            out = [(k.lower().encode(), v.encode()) for k, v in headers.items()] if headers else []
            out.append(tag)
            respond(status, payload, out)

        if len(body) > self.max_body:
            exc = body_too_large(self.max_body)
            reply(exc.status, exc.body(), exc.headers)
            return
        st = self.app.state
        client = scope.get("client")
        address = st.unauth.address(client[0] if client else "", real_ip)
        query = scope.get("query_string", b"")
        token = request_id.set(rid)
        try:
            now = order_route_nowait(st, order_id, body, authorization, address, content_type, query)
        finally:
            request_id.reset(token)
        if now is None:
            task = asyncio.get_running_loop().create_task(self._routed(
                rid, reply, st, order_id, body, authorization, address, amend, content_type, query))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif now[0] == "now":
            reply(now[1], now[2], now[3])
        else:
            now[1].add_done_callback(partial(_placed, st, now[2], reply))

    async def _routed(self, rid: str, reply, *args) -> None:
        request_id.set(rid)  # this task's own context
        reply(*await order_route(*args))

    async def _body(self, receive) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ApiError(400, "invalid_request", "client disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise body_too_large(self.max_body)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


async def order_route(st, order_id: str | None, body: bytes, authorization: str | None,
                      client_host: str, amend: bool = False, content_type: str | None = None,
                      query: bytes | str = b"") -> tuple[int, bytes, dict | None]:
    """POST /orders (order_id None), POST /orders/{id}/cancel and POST /orders/{id}/amend: the
    one code path of these routes, called by this fast path and by the Litestar handlers that
    carry the schema. Every answer after authentication carries the RateLimit headers."""
    limits = None
    try:
        principal, limits = await authorize_limited(st, authorization, client_host)
        check_no_query(query)
        check_json_body(content_type, body)
        if order_id is not None:
            check_order_id(order_id)
        if order_id is None:
            status, payload, headers = await st.entry.place(principal, decode_order_request(body))
        elif amend:
            status, payload, headers = await st.entry.amend(principal, order_id, decode_amend(body))
        else:
            status, payload, headers = await st.entry.cancel(principal, order_id)
    except Exception as exc:
        where = "on POST /orders" if order_id is None else (
            "on POST /orders/{id}/amend" if amend else "on POST /orders/{id}/cancel")
        status, payload, headers, limits = _error(st, exc, where, limits)
    return status, payload, _with_limits(headers, limits)


def order_route_nowait(st, order_id: str | None, body: bytes, authorization: str | None, client_host: str,
                       content_type: str | None, query: bytes | str):
    """order_route's common case with no await: a new order without idempotency key or client
    order id, by a key already known (cached). ("now", status, payload, headers) when the answer
    is ready at once (a refusal), ("later", the sequencer's future of (status, body), RateLimit
    headers) for an order on its way, or None when the request needs order_route - nothing is
    charged then, so order_route charges it once."""
    if order_id is not None:
        return None
    principal = st.auth.known(authorization) if st.auth.enabled else OPEN
    if principal is None:
        return None
    try:
        check_no_query(query)
        check_json_body(content_type, body)
        req, problem = decode_order_request(body), None
    except Exception as exc:
        req, problem = None, exc
    if req is not None and not st.entry.may_place_nowait(req):
        return None
    limits = None
    try:
        limits = st.limiter.check(principal.rate_key if principal.client_id else f"ip:{client_host}")
        if problem is not None:
            raise problem
        return "later", st.entry.place_nowait(principal, req), limits
    except Exception as exc:
        status, payload, headers, limits = _error(st, exc, "on POST /orders", limits)
        return "now", status, payload, _with_limits(headers, limits)


def _placed(st, limits, reply, fut) -> None:
    """The sequencer's answer to a new order of order_route_nowait (as `place` would return it)."""
    headers = None
    try:
        if fut.cancelled():
            raise Unavailable("cancelled")
        status, payload = fut.result()
    except Exception as exc:
        if isinstance(exc, Unavailable):  # as order_entry._await
            exc = ApiError(503, "unavailable", str(exc), headers={"Retry-After": "1"})
        status, payload, headers, limits = _error(st, exc, "on POST /orders", limits)
    reply(status, payload, _with_limits(headers, limits))


def _error(st, exc: BaseException, where: str, limits):
    """(status, payload, headers, limits) of a failed request; a 429 carries its own figures."""
    err = answer(exc, where)
    st.metrics.http_errors.labels(str(err.status), err.code).inc()
    if limits and "RateLimit" in err.headers:
        limits = None
    return err.status, err.body(), err.headers, limits


def _with_limits(headers: dict | None, limits: dict | None) -> dict | None:
    if limits:
        return {**headers, **limits} if headers else limits
    return headers


def fast_route(path: str) -> tuple[str | None, bool] | None:
    """(order id, amend) of POST /orders (None, False), /orders/{id}/cancel (id, False) and
    /orders/{id}/amend (id, True); None for any other path."""
    if path == "/orders":
        return None, False
    if path.startswith("/orders/") and path.endswith("/cancel"):
        order_id = path[8:-7]
        if order_id and "/" not in order_id and order_id != "cancel-all":
            return order_id, False
    if path.startswith("/orders/") and path.endswith("/amend"):
        order_id = path[8:-6]
        if order_id and "/" not in order_id:
            return order_id, True
    return None


RATE_LIMIT_SCOPE_KEY = "exchange.rate_limit"


async def authorize(st, authorization: str | None, client_host: str):
    """Authenticate and charge the caller's rate limit (shared by every entry point)."""
    return (await authorize_limited(st, authorization, client_host))[0]


async def authorize_limited(st, authorization: str | None, client_host: str):
    """authorize() that also returns the RateLimit headers (None when limits are off)."""
    principal = await authenticate_guarded(st, authorization, client_host)
    limits = st.limiter.check(principal.rate_key if principal.client_id else f"ip:{client_host}")
    return principal, limits
