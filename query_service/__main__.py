"""`python -m query_service`: one replica (read API, WebSocket /stream, projector)."""

from __future__ import annotations

import gc
import logging
import warnings

import uvicorn

from query_service.app import create_asgi
from query_service.settings import Settings


def main() -> None:
    # uvicorn's "websockets" (legacy) protocol, deprecated in favour of websockets-sansio,
    # is kept on purpose: when a dropped slow consumer does not even read the close frame,
    # it aborts the TCP connection after close_timeout; the sans-io one waits for the
    # socket to become writable first and keeps such a connection (and its buffer) open.
    warnings.filterwarnings("ignore", message=".*websockets. implementation is deprecated")
    # Projection and rendering allocate many short-lived containers; at the default gen-0
    # threshold (700) the collector runs about a thousand times a second under load.
    gc.set_threshold(50_000, 20, 100)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    uvicorn.run(
        create_asgi(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        ws="websockets",
        lifespan="on",
        access_log=False,
        log_level="warning",
        ws_max_queue=64,
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
