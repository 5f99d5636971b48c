"""`python -m query_service`: one replica (read API, WebSocket /stream, projector)."""

from __future__ import annotations

import logging

import uvicorn

from query_service.app import create_asgi
from query_service.settings import Settings


def main() -> None:
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
