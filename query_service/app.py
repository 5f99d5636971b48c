"""The query service's Litestar app: thin controllers over query_service.views.

The lifespan owns every connection (Redis, NATS, PostgreSQL, Kafka via the projector, an
HTTP client for the system health check) in one Services object on app.state.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from urllib.parse import parse_qsl

import asyncpg
import httpx
from litestar import Litestar, Request, Response, get, websocket
from litestar.connection import WebSocket
from litestar.exceptions import HTTPException
from redis.exceptions import RedisError

from contracts.api import (
    ApiError,
    bad_request,
    error_answer,
    framework_error,
    iso_ms,
    json_encoder,
)
from contracts.instruments import load_instruments
from contracts.logs import watch_loop_stalls
from contracts.ratelimit import TokenBuckets
from query_service import openapi, params, views
from query_service.auth import authenticator
from query_service.bus import Bus
from query_service.health import health
from query_service.journal import JournalReader
from query_service.metrics import QueryMetrics
from query_service.projector import Projector
from query_service.records import CANDLE_INTERVALS
from query_service.redis_cluster import connect as redis_connect
from query_service.redis_keys import Keys
from query_service.retention import Retention
from query_service.settings import QuerySettings
from query_service.settlements import settlements
from query_service.stream import Hub

log = logging.getLogger("query_service")
JSON = "application/json"
DAY_NS = 86_400 * 1_000_000_000
MAX_ANALYTICS_RANGE_NS = 31 * DAY_NS


HORIZON_MARGIN_S = 60.0


class Services:
    def __init__(self, settings: QuerySettings):
        self.settings = settings
        self.instruments = load_instruments(settings.instruments_file)
        self.keys = Keys(settings.redis_prefix)
        self.metrics = QueryMetrics()
        self.redis = redis_connect(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
        self.bus = Bus(settings.nats_url, login=settings.nats_login)
        self.journal = JournalReader(settings.pg_dsn)
        self.auth = authenticator(self.journal, settings.auth_enabled, settings.auth_cache_ttl_s)
        self.books = views.BookReader(self.redis, self.keys, self.instruments, settings.book_cache_max_age_s)
        self.hub = Hub(settings, self.instruments, self.redis, self.bus, self.auth, self.metrics, self.books)
        # The projector's own connections: no per-read socket timeout (redis-py arms one
        # per reply, which costs more than the write itself in large MULTI/EXECs); each
        # batch is bounded by one timeout around the whole transaction instead.
        self.projector_redis = redis_connect(settings.redis_url, socket_connect_timeout=2)
        self.projector = (
            Projector(settings, self.instruments, self.projector_redis, self.bus, self.journal, self.metrics)
            if settings.projector_enabled
            else None
        )
        self.retention = Retention(self.redis, self.keys, self.instruments.symbols, settings.retention_s,
                                   settings.retention_sweep_s)
        self.http = httpx.AsyncClient()
        self.instruments_body = views.instruments_body(self.instruments)
        self.read_limiter = TokenBuckets(settings.read_rate_limit_per_second, settings.read_rate_limit_burst, "read")
        self.hub.read_limiter = self.read_limiter
        self.openapi_body = json_encoder.encode(openapi.document(self.instruments))

    async def start(self) -> None:
        await self.journal.start()
        await self.bus.start()  # the hub registered its feed subscription before this
        await self.hub.start()
        if self.projector is not None:
            await self.projector.start()
        self.retention.start()

    async def stop(self) -> None:
        await self.retention.stop()
        if self.projector is not None:
            await self.projector.stop()
        await self.hub.stop()
        await self.bus.stop()
        await self.journal.stop()
        await self.http.aclose()
        await self.redis.aclose()
        await self.projector_redis.aclose()


def _svc(request) -> Services:
    return request.app.state.services


def _json(body: bytes, status: int = 200) -> Response:
    return Response(content=body, status_code=status, media_type=JSON)


# --------------------------------------------------------------------------- market data


@get("/market/orderbook")
async def orderbook(request: Request) -> Response:
    s = _svc(request)
    q = request.query_params
    spec = params.instrument(s.instruments, q.get("instrument"))
    levels = params.integer(q.get("levels"), "levels", 20, 1, views.MAX_LEVELS)
    return _json(await s.books.orderbook(spec, levels))


@get("/market/trades")
async def trades(request: Request) -> Response:
    s = _svc(request)
    q = request.query_params
    spec = params.instrument(s.instruments, q.get("instrument"))
    limit = params.integer(q.get("limit"), "limit", 50, 1, s.settings.recent_trades)
    return _json(await views.trades(s.redis, s.keys, spec, limit))


@get("/market/analytics")
async def analytics(request: Request) -> Response:
    s = _svc(request)
    q = request.query_params
    spec = params.instrument(s.instruments, q.get("instrument"))
    start = params.timestamp(q.get("start_time"), "start_time")
    end = params.timestamp(q.get("end_time"), "end_time")
    interval = params.integer(q.get("interval"), "interval", 1, 1, 10_080)
    if end is None:
        end = time.time_ns() if start is None else min(start + DAY_NS, time.time_ns())
        end = max(end, start or 0)
    if start is None:
        start = end - DAY_NS
    if start > end:
        raise bad_request("invalid_range", "start_time must not be after end_time", "start_time")
    if end - start > MAX_ANALYTICS_RANGE_NS:
        raise bad_request("range_too_large", "start_time..end_time may span at most 31 days", "start_time")
    return _json(await views.analytics(s.redis, s.keys, spec, start, end, interval))


@get("/market/candles")
async def candles(request: Request) -> Response:
    s = _svc(request)
    q = request.query_params
    spec = params.instrument(s.instruments, q.get("instrument"))
    interval = params.choice(q.get("interval"), "interval", tuple(CANDLE_INTERVALS), "1m")
    limit = params.integer(q.get("limit"), "limit", 100, 1, 1000)
    end = params.timestamp(q.get("end_time"), "end_time")
    return _json(await views.candles(s.redis, s.keys, spec, interval, CANDLE_INTERVALS[interval], limit, end))


@get("/market/ticker")
async def ticker(request: Request) -> Response:
    s = _svc(request)
    spec = params.instrument(s.instruments, request.query_params.get("instrument"))
    return _json(json_encoder.encode(await views.ticker(s.redis, s.keys, spec)))


@get("/market/time")
async def server_time(request: Request) -> Response:
    now = time.time_ns()
    return _json(json_encoder.encode({"time": iso_ms(now), "epoch_ms": now // 1_000_000}))


@get("/market/instruments")
async def instruments(request: Request) -> Response:
    return _json(_svc(request).instruments_body)


# --------------------------------------------------------------------------- per client


@get("/market/positions/{client_id:str}")
async def positions(request: Request, client_id: str) -> Response:
    s = _svc(request)
    client = await s.auth.require_client(request.headers.get("authorization"), client_id)
    return _json(await views.positions(s.redis, s.keys, s.instruments, client))


@get("/market/orders")
async def orders(request: Request) -> Response:
    s = _svc(request)
    q = request.query_params
    status = params.choice(q.get("status"), "status", ("open", "closed"), None)
    spec = params.optional_instrument(s.instruments, q.get("instrument"))
    limit = params.integer(q.get("limit"), "limit", 50, 1, 500)
    cursor = params.decode_cursor(q.get("cursor"))
    client = await s.auth.require_client(request.headers.get("authorization"), q.get("client_id"))
    # Every order created after the horizon is still in Redis (only orders closed before
    # now - retention leave it, and they were created before); the margin covers clock
    # differences between replicas (a merged page only dedupes more).
    horizon = (
        time.time_ns() - int((s.settings.retention_s - HORIZON_MARGIN_S) * 1e9) if s.settings.retention_s > 0 else None
    )
    return _json(await views.orders(s.redis, s.keys, s.instruments, client, status, spec, limit, cursor,
                                    s.journal, horizon))


@get("/market/fills")
async def fills(request: Request) -> Response:
    s = _svc(request)
    q = request.query_params
    spec = params.optional_instrument(s.instruments, q.get("instrument"))
    limit = params.integer(q.get("limit"), "limit", 50, 1, 500)
    cursor = params.decode_cursor(q.get("cursor"))
    client = await s.auth.require_client(request.headers.get("authorization"), q.get("client_id"))
    return _json(await views.fills(s.redis, s.keys, client, spec, limit, cursor, s.journal, s.instruments))


# --------------------------------------------------------------------------- ops


@get("/healthz")
async def healthz(request: Request) -> Response:
    status, body = await health(_svc(request))
    return _json(json_encoder.encode(body), status)


@get("/healthz/system")
async def healthz_system(request: Request) -> Response:
    status, body = await health(_svc(request), system=True)
    return _json(json_encoder.encode(body), status)


@get("/schema/openapi.json")
async def openapi_json(request: Request) -> Response:
    return _json(_svc(request).openapi_body)


@get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(content=_svc(request).metrics.render(), media_type="text/plain; version=0.0.4")


@websocket("/stream")
async def stream(socket: WebSocket) -> None:
    await socket.app.state.services.hub.serve(socket)


# --------------------------------------------------------------------------- errors / middleware


# Redis or PostgreSQL out of reach: 503 with Retry-After (contracts.api.error_answer).
STORE_ERRORS: tuple[type[BaseException], ...] = (RedisError, asyncpg.PostgresConnectionError,
                                                 asyncpg.CannotConnectNowError, asyncpg.InterfaceError)


def _api_error(request: Request, exc: Exception) -> Response:
    err = error_answer(exc, STORE_ERRORS, f"on {request.method} {request.url.path}")
    return Response(content=err.body(), status_code=err.status, media_type="application/json",
                    headers=err.headers or None)


def _http_error(request: Request, exc: HTTPException) -> Response:
    return _api_error(request, framework_error(exc.status_code, exc.detail))




_KNOWN = {
    "/market/orderbook", "/market/trades", "/market/analytics", "/market/candles", "/market/ticker",
    "/market/instruments", "/market/orders", "/market/fills", "/healthz", "/healthz/system", "/metrics",
    "/schema/openapi.json",
}


def _metrics_middleware(app):
    """Request latency per route (path templates only, to keep label cardinality bounded)."""

    async def mw(scope, receive, send):
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_wrapper)
        finally:
            path = scope["path"]
            if path.startswith("/market/positions/"):
                path = "/market/positions/{client_id}"
            elif path not in _KNOWN:
                path = "other"
            scope["app"].state.services.metrics.http_latency.labels(scope["method"], path, status).observe(
                time.perf_counter() - start
            )

    return mw


class FastPath:
    """ASGI front of the Litestar app: GET /market/orderbook - by far the hottest read - is
    answered here from the book cache without the framework's routing, request and
    response objects (~4x the throughput on one process); everything else, including the
    lifespan, goes to Litestar. Same parameters, errors and metrics as the route."""

    __slots__ = ("app", "_parsed")

    def __init__(self, app: Litestar):
        self.app = app
        self._parsed: dict[bytes, object] = {}  # raw query string -> (spec, levels) | ApiError

    @property
    def state(self):
        return self.app.state

    def _parse(self, services: Services, qs: bytes):
        hit = self._parsed.get(qs)
        if hit is None:
            q: dict[str, str] = {}
            for k, v in parse_qsl(qs.decode("latin-1"), keep_blank_values=True):
                q.setdefault(k, v)
            try:
                hit = (
                    params.instrument(services.instruments, q.get("instrument")),
                    params.integer(q.get("levels"), "levels", 20, 1, views.MAX_LEVELS),
                )
            except ApiError as exc:
                hit = exc
            if len(self._parsed) > 4096:
                self._parsed.clear()
            self._parsed[qs] = hit
        return hit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/market/"):
            await self.app(scope, receive, send)
            return
        limits = None
        extra: list[tuple[bytes, bytes]] = []
        services: Services = self.app.state.services
        if services.read_limiter.enabled:
            ok, limits, _ = services.read_limiter.take(read_rate_key(scope))
            extra = [(k.lower().encode(), v.encode()) for k, v in limits.items()]
            if not ok:
                body = ApiError(429, "rate_limited", "read rate limit exceeded").body()
                await send({"type": "http.response.start", "status": 429,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())] + extra})
                await send({"type": "http.response.body", "body": body})
                return
        if scope["path"] != "/market/orderbook" or scope["method"] != "GET":
            if limits is None:
                await self.app(scope, receive, send)
                return

            async def send_with_limits(message):
                if message["type"] == "http.response.start":
                    message = dict(message)
                    message["headers"] = list(message.get("headers", [])) + extra
                await send(message)

            await self.app(scope, receive, send_with_limits)
            return
        start = time.perf_counter()
        parsed = self._parse(services, scope["query_string"])
        if isinstance(parsed, ApiError):
            status, body = parsed.status, parsed.body()
        else:
            try:
                status, body = 200, await services.books.orderbook(*parsed)
            except Exception as exc:
                err = error_answer(exc, STORE_ERRORS, "on GET /market/orderbook")
                status, body = err.status, err.body()
                extra = extra + [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                + extra,
            }
        )
        await send({"type": "http.response.body", "body": body})
        services.metrics.http_latency.labels("GET", "/market/orderbook", status).observe(time.perf_counter() - start)


def read_rate_key(scope) -> str:
    """Reads are limited per API key when one is sent, else per client address."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            return "k:" + value.decode("latin-1")[-64:]
    client = scope.get("client")
    return "ip:" + (client[0] if client else "")


def create_asgi(settings: QuerySettings | None = None) -> FastPath:
    """The ASGI application uvicorn serves: the fast path in front of the Litestar app."""
    return FastPath(create_app(settings))


def create_app(settings: QuerySettings | None = None) -> Litestar:
    settings = settings or QuerySettings.from_env()

    @asynccontextmanager
    async def lifespan(app: Litestar):
        services = Services(settings)
        app.state.services = services
        await services.start()
        stalls = asyncio.create_task(watch_loop_stalls(log))
        log.info("query service started (projector %s)", "on" if settings.projector_enabled else "off")
        try:
            yield
        finally:
            log.info("query service stopping")
            stalls.cancel()
            await services.stop()

    return Litestar(
        route_handlers=[
            orderbook, trades, analytics, candles, ticker, server_time, instruments, positions, orders, fills, settlements,
            healthz, healthz_system, openapi_json, metrics, stream,
        ],
        lifespan=[lifespan],
        middleware=[_metrics_middleware],
        exception_handlers={
            HTTPException: _http_error,
            Exception: _api_error,  # ApiError, store outages and bugs: contracts.api.error_answer
        },
        openapi_config=None,
        debug=False,
        logging_config=None,  # contracts.logs.setup_logging (in __main__) owns the log format
    )
