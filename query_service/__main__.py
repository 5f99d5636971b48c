"""`python -m query_service`: one replica (read API, WebSocket /stream, projector)."""

from __future__ import annotations

import gc
import logging
import warnings

import uvicorn

from contracts.env import load_or_exit
from contracts.http_transport import BoundedHttpToolsProtocol
from contracts.logs import RequestIdMiddleware, node_name, setup_logging
from query_service.app import create_asgi
from query_service.settings import QuerySettings

log = logging.getLogger("query_service.main")


def main() -> None:
    # uvicorn's "websockets" (legacy) protocol, deprecated in favour of websockets-sansio,
    # is kept on purpose: when a dropped slow consumer does not even read the close frame,
    # it aborts the TCP connection after close_timeout; the sans-io one waits for the
    # socket to become writable first and keeps such a connection (and its buffer) open.
    warnings.filterwarnings("ignore", message=".*websockets. implementation is deprecated")
    # Projection and rendering allocate many short-lived containers; at the default gen-0
    # threshold (700) the collector runs about a thousand times a second under load.
    gc.set_threshold(50_000, 20, 100)
    settings = load_or_exit("query service", QuerySettings.from_env)
    load_or_exit("query service", lambda: setup_logging("query", node_name(settings.port)))
    log.info("query service starting on %s:%d", settings.host, settings.port)
    uvicorn.run(
        RequestIdMiddleware(create_asgi(settings)),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=BoundedHttpToolsProtocol,  # bounded request head, JSON refusals (contracts/http_transport.py)
        ws="websockets",
        lifespan="on",
        access_log=False,
        log_level="warning",
        log_config=None,  # uvicorn's lines go through our handler (JSON)
        ws_max_queue=64,
        # Frames above this are refused by the protocol (close 1009) before anything is decoded:
        # six 16 MiB frames stalled a replica for 9.85 s (issue 20).
        ws_max_size=settings.ws_max_frame_bytes,
        timeout_graceful_shutdown=5,
    )
    log.info("query service stopped")


if __name__ == "__main__":
    main()
