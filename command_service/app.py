
"""The command service's Litestar app: thin routes over OrderEntry; the lifespan owns the
PostgreSQL pool, the sequencers and the NATS bridge."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from prometheus_client import generate_latest

from command_service import docs
from command_service.auth import AddressLimiter, RateLimiter, authenticator
from command_service.edge import (
    AmendRequest,
    CancelAfterRequest,
    CancelAllRequest,
    OrderRequest,
    answer,
    check_json_body,
    check_no_query,
    check_order_id,
    decode_cancel_after,
    decode_cancel_all,
    decode_json,
    spec_for,
)
from command_service.event_log import EventLog
from command_service.fastpath import RATE_LIMIT_SCOPE_KEY, OrderFastPath, authorize_limited, order_route
from command_service.forwarding import Forwarder
from command_service.journal import JournalWriter, NoResetConnection
from command_service.lock_session import LockSession, lock_session_settings
from command_service.metrics import CommandMetrics
from command_service.nats_bridge import NatsBridge
from command_service.nodes import Membership
from command_service.openapi import complete
from command_service.order_entry import OrderEntry
from command_service.sequencer import Sequencer
from command_service.settings import CommandSettings
from command_service.settlement import settle
from contracts.api import (
    ApiError,
    body_too_large,
    framework_error,
    iso_ms,
    json_encoder,
    parse_iso,
)
from contracts.instruments import load_instruments
from contracts.logs import watch_loop_stalls
from relay.lag import relay_lag

log = logging.getLogger("command.app")
JSON = "application/json"


def _reply(status: int, body: bytes, headers: dict | None = None) -> Response:
    return Response(content=body, status_code=status, media_type=JSON, headers=headers or None)


def _state(request: Request) -> Any:
    return request.app.state


def _host(request: Request) -> str:
    """The client's address (X-Real-IP when the peer is a trusted proxy: the gateway)."""
    return _state(request).unauth.address(request.client.host if request.client else "",
                                          request.headers.get("x-real-ip"))


async def _principal(request: Request, query: tuple[str, ...] = ()):
    """Authenticate and charge the rate limit; then refuse query parameters the route does not
    take (`query`: the ones it does)."""
    principal, limits = await authorize_limited(_state(request), request.headers.get("authorization"),
                                                _host(request))
    if limits:
        request.scope[RATE_LIMIT_SCOPE_KEY] = limits  # added to the response by OrderFastPath
    check_no_query(request.scope.get("query_string", b""), query)
    return principal


async def _json_body(request: Request) -> bytes:
    body = await request.body()
    check_json_body(request.headers.get("content-type"), body)
    return body


def _route_args(request: Request) -> tuple:
    return (request.headers.get("authorization"), _host(request))


def _body_args(request: Request) -> dict:
    return {"content_type": request.headers.get("content-type"), "query": request.scope.get("query_string", b"")}


# ---------------------------------------------------------------------- routes


@post("/orders", status_code=201, summary="Place an order")
async def place_order(request: Request) -> Response:
    # The body is decoded from the raw bytes straight into Decimals (a generic JSON parse would
    # pass numbers through float). Served by the fast path; the same function answers here.
    return _reply(*await order_route(_state(request), None, await request.body(), *_route_args(request),
                                     **_body_args(request)))


@post("/orders/cancel-all", status_code=200, summary="Cancel all own open orders")
async def cancel_all(request: Request) -> Response:
    principal = await _principal(request)
    principal.require_trade()  # the scope first: a read key learns nothing about the body
    data = decode_cancel_all(await _json_body(request))
    status, body, headers = await _state(request).entry.cancel_all(principal, data)
    return _reply(status, body, headers)


@post("/orders/cancel-after", status_code=200, summary="Dead man's switch: cancel all own orders unless "
      "called again within timeout_ms (0 turns it off)")
async def cancel_after(request: Request) -> Response:
    principal = await _principal(request)
    data = decode_cancel_after(await _json_body(request))
    status, body, headers = await _state(request).entry.cancel_after(principal, data)
    return _reply(status, body, headers)


@post("/orders/{order_id:str}/amend", status_code=200, summary="Amend an order's quantity and/or price")
async def amend_order(request: Request, order_id: str) -> Response:
    # Served by the fast path; the same function answers here.
    return _reply(*await order_route(_state(request), order_id, await request.body(), *_route_args(request),
                                     amend=True, **_body_args(request)))


@post("/orders/{order_id:str}/cancel", status_code=200, summary="Cancel an order")
async def cancel_order(request: Request, order_id: str) -> Response:
    return _reply(*await order_route(_state(request), order_id, b"", *_route_args(request),
                                     **_body_args(request)))


@get("/orders/{order_id:str}", summary="Read an order (committed state)")
async def get_order(request: Request, order_id: str) -> Response:
    principal = await _principal(request)
    status, body, headers = await _state(request).entry.get(principal, check_order_id(order_id))
    return _reply(status, body, headers)


@post("/admin/snapshot", status_code=201, summary="Store an engine snapshot now (admin)")
async def admin_snapshot(request: Request, instrument: str | None = None) -> Response:
    principal = await _principal(request, query=("instrument",))
    status, body, headers = await _state(request).entry.snapshot(principal, instrument)
    return _reply(status, body, headers)


@post("/admin/handover", status_code=200, summary="Move one instrument to another command node (admin)")
async def admin_handover(request: Request, instrument: str) -> Response:
    principal = await _principal(request, query=("instrument",))
    status, body, headers = await _state(request).entry.handover(principal, instrument)
    return _reply(status, body, headers)


class SettlementRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    cutoff: str | None = None
    instrument: str | None = None


_settlement_decoder = msgspec.json.Decoder(SettlementRequest)


@post("/admin/settlement", status_code=201, summary="Run end-of-day settlement up to a cutoff (admin)")
async def admin_settlement(request: Request) -> Response:
    principal = await _principal(request)
    if not principal.is_admin:
        raise ApiError(403, "forbidden", "an admin key is required")
    raw = await _json_body(request)
    req = decode_json(_settlement_decoder.decode, raw) if raw.strip() else SettlementRequest()
    st = _state(request)
    if req.instrument is not None:
        spec_for(st.instruments, req.instrument)
    try:
        cutoff = parse_iso(req.cutoff) if req.cutoff else time.time_ns()
    except ValueError:
        raise ApiError(400, "invalid_field", "cutoff must be an RFC 3339 time after 1970", "cutoff") from None
    if cutoff > time.time_ns():
        raise ApiError(400, "invalid_field", "cutoff must not be in the future", "cutoff")
    runs = await settle(st.pool, st.instruments, cutoff, req.instrument)
    return _reply(201, json_encoder.encode({"cutoff": iso_ms(cutoff), "runs": runs}))


@get("/healthz", summary="Health of the command service")
async def healthz(request: Request) -> Response:
    st = _state(request)
    checks = {"postgres": "unhealthy", "kafka": st.kafka_status, "nats": st.bridge.status}
    with contextlib.suppress(Exception):  # any failure here is what 'unhealthy' reports
        async with st.pool.acquire(timeout=1) as conn:
            await asyncio.wait_for(conn.fetchval("SELECT 1"), 1)
        checks["postgres"] = "healthy"
    # An instrument is served when this node owns it or a live node does (issue 14: several
    # nodes share the instruments; "remote" ones are owned elsewhere).
    nodes = st.nodes
    owners = nodes.owners()
    live = nodes.view.nodes
    sequencers = {sym: ("ready" if s.ready else "remote" if owners.get(sym) in live else "unavailable")
                  for sym, s in st.sequencers.items()}
    ok = checks["postgres"] == "healthy" and all(v != "unavailable" for v in sequencers.values())
    status = "healthy" if ok and all(v == "healthy" for v in checks.values()) else ("degraded" if ok else "unhealthy")
    body = {"status": status, "timestamp": iso_ms(time.time_ns()), "checks": checks, "sequencers": sequencers,
            "node": nodes.node_id, "nodes": sorted(live), "owners": owners}
    return _reply(200 if ok else 503, json_encoder.encode(body))


@get("/metrics", summary="Prometheus metrics (internal port only)", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return await _metrics_response(_state(request))


@get("/admin/metrics", summary="Prometheus metrics (admin key; what the gateway's /metrics serves)",
     include_in_schema=False)
async def admin_metrics(request: Request) -> Response:
    # The gateway is public: there /metrics needs an admin key. Prometheus scrapes the
    # internal ports (127.0.0.1 locally, the compose network), where /metrics is open.
    principal = await _principal(request)
    if not principal.is_admin:
        raise ApiError(403, "forbidden", "an admin key is required")
    return await _metrics_response(_state(request))


async def _metrics_response(st) -> Response:
    m: CommandMetrics = st.metrics
    for sym, s in st.sequencers.items():
        m.queue_depth.labels(sym).set(s.queue_depth)
        m.sequencer_ready.labels(sym).set(1 if s.ready else 0)
        m.recently_closed.labels(sym).set(len(s.recently_closed))
    try:  # the relay's lag as PostgreSQL sees it: readable here even while the relay is down
        lag = await asyncio.wait_for(relay_lag(st.pool), 1)
        for sym, n in lag.get("events", {}).items():
            m.relay_lag_events.labels(sym).set(n)
        m.relay_lag_seconds.set(lag.get("seconds", 0.0))
    except (asyncio.TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        log.debug("relay lag not readable now; the gauges keep their last values")
    return Response(content=generate_latest(m.registry), media_type="text/plain; version=0.0.4; charset=utf-8")


@get("/openapi.json", summary="OpenAPI schema with the request bodies the handlers decode themselves",
     include_in_schema=False)
async def openapi_json(request: Request) -> Response:
    return _reply(200, json_encoder.encode(openapi_document(request.app)))


_BODIES = {("/orders", "post"): OrderRequest, ("/orders/cancel-all", "post"): CancelAllRequest,
           ("/orders/cancel-after", "post"): CancelAfterRequest,
           ("/orders/{order_id}/amend", "post"): AmendRequest,
           ("/admin/settlement", "post"): SettlementRequest}


def openapi_document(app: Litestar) -> dict:
    """The complete document (command_service.openapi): Litestar's generated schema plus the
    bodies of the routes that decode raw bytes, every answer and the bearer scheme."""
    return complete(app.openapi_schema.to_schema(), _BODIES)


class _CompleteDocument(JsonRenderPlugin):
    def render(self, request: Request, openapi_schema: dict) -> bytes:
        return json_encoder.encode(openapi_document(request.app))


# ---------------------------------------------------------------------- errors


def _edge_error(request: Request, exc: ApiError) -> Response:
    st = request.app.state
    if getattr(st, "metrics", None):
        st.metrics.http_errors.labels(str(exc.status), exc.code).inc()
    return Response(content=exc.body(), status_code=exc.status, media_type=JSON, headers=exc.headers or None)


def _validation_error(request: Request, exc: ValidationException) -> Response:
    field, message, code = None, str(exc.detail), "invalid_request"
    extra = exc.extra if isinstance(exc.extra, list) else []
    if extra and isinstance(extra[0], dict):
        field = extra[0].get("key")
        message = extra[0].get("message", message)
        code = "missing_field" if "missing required field" in message else "invalid_field"
        if message.startswith("Object missing required field"):
            field = message.split("`")[1]
            message = f"{field} is required"
    elif "JSON" in message or "decode" in message.lower() or "malformed" in message.lower():
        code = "invalid_json"
    return _edge_error(request, ApiError(400, code, message, field))


def _http_error(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 413:  # the same answer as the fast path's
        return _edge_error(request, body_too_large(_state(request).settings.max_body_bytes))
    return _edge_error(request, framework_error(exc.status_code, exc.detail))


def _internal_error(request: Request, exc: Exception) -> Response:
    return _edge_error(request, answer(exc, f"on {request.method} {request.url.path}"))


# ---------------------------------------------------------------------- lifespan


async def _ensure_partitions(pool) -> None:
    """Journal partitions ahead of the newest seq (db/migrations/006): at start and in every
    housekeeping round, so an insert never finds its seq range missing."""
    try:
        async with pool.acquire() as conn:
            if await conn.fetchval("SELECT to_regproc('ensure_event_partitions') IS NOT NULL"):
                await conn.fetchval("SELECT ensure_event_partitions()")
    except (OSError, asyncpg.PostgresError) as exc:
        logging.getLogger("command_service").warning("journal partitions not ensured: %r", exc)


async def _housekeeping(journal: JournalWriter, interval_s: float) -> None:
    """Expired idempotency rows leave the table (issue 18); snapshots are pruned as they are written."""
    if interval_s <= 0:
        return
    while True:
        await asyncio.sleep(interval_s)
        try:
            await _ensure_partitions(journal.pool)
            n = await journal.expire_idempotency()
            if n:
                logging.getLogger("command_service").info("housekeeping: %d expired idempotency rows deleted", n)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # PostgreSQL away: the next round retries
            logging.getLogger("command_service").warning("housekeeping failed: %r", exc)


def create_asgi(settings: CommandSettings | None = None):
    """What uvicorn serves: the Litestar app behind the fast path of the two hottest routes."""
    settings = settings or CommandSettings.from_env()
    return OrderFastPath(create_app(settings), settings.max_body_bytes)


def create_app(settings: CommandSettings | None = None) -> Litestar:
    settings = settings or CommandSettings.from_env()
    instruments = load_instruments(settings.instruments_file)

    @asynccontextmanager
    async def lifespan(app: Litestar):
        st = app.state
        st.settings = settings
        st.instruments = instruments
        st.pool = await _connect_pool(settings)
        await _ensure_partitions(st.pool)
        journal = JournalWriter(st.pool, settings.idempotency_ttl_s, settings.snapshots_keep)
        st.metrics = CommandMetrics(instruments.symbols, instruments)
        st.lock_session = LockSession(settings.pg_dsn, settings.node_id, linger_s=settings.commit_linger_us / 1e6,
                                      max_commands=settings.max_batch)
        st.lock_session.start()
        st.sequencers = {
            sym: Sequencer(sym, st.pool, st.lock_session, max_batch=settings.max_batch,
                           snapshot_every=settings.snapshot_every_events, metrics=st.metrics,
                           event_log=EventLog(sym, instruments.get(sym), settings.log_order_events),
                           recently_closed_keep=settings.recently_closed_keep)
            for sym in instruments.symbols
        }
        for sym, s in st.sequencers.items():
            notional, position = instruments.get(sym).risk_units()
            if notional or position or settings.max_open_orders:
                s.risk = s.book.risk = (notional, settings.max_open_orders, position)
            s.journal.snapshots_keep = settings.snapshots_keep
            await s.start(claim=False)  # the node layer decides which instruments this node takes
        st.nodes = Membership(settings.node_id, st.pool, st.sequencers, heartbeat_s=settings.node_heartbeat_s,
                              lease_s=settings.node_lease_s, url=f"http://{settings.host}:{settings.port}",
                              metrics=st.metrics)
        await st.nodes.start()
        st.auth = authenticator(journal, settings.auth_enabled, settings.auth_cache_ttl_s)
        st.limiter = RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)
        st.unauth = AddressLimiter(settings.unauth_rate_limit_per_second, settings.unauth_rate_limit_burst,
                                   settings.trusted_proxies)
        st.entry = OrderEntry(instruments, journal, st.sequencers, settings.book_levels_in_response)
        st.bridge = NatsBridge(settings.nats_url, st.entry, st.auth, st.limiter, enabled=settings.nats_enabled,
                               login=settings.nats_login)
        await st.bridge.start()
        if settings.nats_enabled:  # several nodes: commands for instruments owned elsewhere go there
            st.entry.set_forwarder(Forwarder(settings.node_id, st.bridge, settings.forward_timeout_s, st.metrics))
            st.nodes.forwarder = st.entry.forwarder
            st.entry.forwarder.on_no_owner = st.nodes.nudge
        st.entry.nodes = st.nodes
        st.kafka_status = "unknown"
        probe = asyncio.create_task(_probe_kafka(st, settings.kafka_bootstrap))
        housekeeping = asyncio.create_task(_housekeeping(journal, settings.housekeeping_s))
        stalls = asyncio.create_task(watch_loop_stalls(log))
        log.info("command service started: node %s, instruments %s, owned and ready %s", settings.node_id, ",".join(instruments.symbols),
                 ",".join(sym for sym, s in st.sequencers.items() if s.ready) or "none")
        try:
            yield
        finally:
            log.info("command service stopping")
            housekeeping.cancel()
            probe.cancel()
            stalls.cancel()
            # Graceful: every instrument is handed over (drained, snapshotted, released) while
            # NATS still forwards what arrives meanwhile to the next owners.
            await st.nodes.drain()
            await st.nodes.stop()
            await st.bridge.stop()
            for s in st.sequencers.values():
                await s.stop()
            await st.lock_session.close()
            await st.pool.close()

    return Litestar(
        route_handlers=[place_order, cancel_all, cancel_after, amend_order, cancel_order, get_order, admin_snapshot,
                        admin_handover,
                        admin_settlement, healthz, metrics, admin_metrics, openapi_json, *docs.ROUTES],
        lifespan=[lifespan],
        request_max_body_size=settings.max_body_bytes,
        exception_handlers={
            ApiError: _edge_error,
            ValidationException: _validation_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
        # Only the complete document at /schema/openapi.json: Litestar's own UI pages load their
        # assets from a CDN; the docs site is /docs (command_service/docs.py).
        openapi_config=OpenAPIConfig(title="Exchange command API", version="1.0.0",
                                     render_plugins=[_CompleteDocument()]),
        debug=False,
        logging_config=None,  # contracts.logs.setup_logging (in __main__) owns the log format
    )


async def _connect_pool(settings: CommandSettings) -> asyncpg.Pool:
    # Start even when PostgreSQL is not up yet: the sequencers keep retrying recovery and
    # answer 503 meanwhile. The pool itself connects lazily (min_size=0).
    # Named after the node like its lock sessions: a node with no session left is gone (nodes.py).
    return await asyncpg.create_pool(settings.pg_dsn, min_size=0, max_size=settings.pg_pool_size,
                                     command_timeout=10, connection_class=NoResetConnection,
                                     server_settings=lock_session_settings(settings.node_id))


async def _probe_kafka(st, bootstrap: str) -> None:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    while True:
        try:
            _, w = await asyncio.wait_for(asyncio.open_connection(host or "127.0.0.1", int(port)), 1)
            w.close()
            st.kafka_status = "healthy"
        except Exception:
            st.kafka_status = "unhealthy"
        await asyncio.sleep(2)
