"""An ASGI front for the hottest routes: POST /orders, POST /orders/{id}/cancel,
POST /orders/{id}/amend and WS /ws.

Measured here, Litestar's request/response machinery costs ~60 us of CPU per request
(88 us for a trivial Litestar route vs 26 us for the same route as bare ASGI on uvicorn):
at 4,000 orders/s that is a quarter of a core. These two routes call the same use cases,
authentication, rate limit and error shapes as the Litestar handlers (which stay, for the
OpenAPI schema and every other route); everything else passes through to Litestar.
"""

from __future__ import annotations

import logging

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
from contracts.api import ApiError, body_too_large

log = logging.getLogger("command.fastpath")
_JSON = (b"content-type", b"application/json")


class OrderFastPath:
    def __init__(self, app, max_body_bytes: int):
        self.app = app
        self.max_body = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            if path == "/orders":
                return await self._handle(scope, receive, send, None)
            if path.startswith("/orders/") and path.endswith("/cancel"):
                order_id = path[8:-7]
                if order_id and "/" not in order_id and order_id != "cancel-all":
                    return await self._handle(scope, receive, send, order_id)
            if path.startswith("/orders/") and path.endswith("/amend"):
                order_id = path[8:-6]
                if order_id and "/" not in order_id:
                    return await self._handle(scope, receive, send, order_id, amend=True)
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

    async def _handle(self, scope, receive, send, cancel_id: str | None, amend: bool = False) -> None:
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
        err = answer(exc, where)
        st.metrics.http_errors.labels(str(err.status), err.code).inc()
        status, payload, headers = err.status, err.body(), err.headers
        if limits and "RateLimit" in headers:
            limits = None  # a 429 carries its own figures
    if limits:
        headers = {**headers, **limits} if headers else limits
    return status, payload, headers


RATE_LIMIT_SCOPE_KEY = "exchange.rate_limit"


async def authorize(st, authorization: str | None, client_host: str):
    """Authenticate and charge the caller's rate limit (shared by every entry point)."""
    return (await authorize_limited(st, authorization, client_host))[0]


async def authorize_limited(st, authorization: str | None, client_host: str):
    """authorize() that also returns the RateLimit headers (None when limits are off)."""
    principal = await authenticate_guarded(st, authorization, client_host)
    limits = st.limiter.check(principal.rate_key if principal.client_id else f"ip:{client_host}")
    return principal, limits
