"""`python -m command_service`: serve the command API with uvicorn (uvloop, httptools)."""

import logging
import os

import uvicorn

from command_service.app import create_asgi
from command_service.settings import Settings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    uvicorn.run(create_asgi(settings), host=settings.host, port=settings.port, loop="uvloop", http="httptools",
                ws=os.environ.get("EXCHANGE_WS_IMPL", "websockets-sansio"), log_level="warning", access_log=False, lifespan="on", backlog=2048, proxy_headers=False, server_header=False, date_header=False,
                ws_max_size=64 * 1024)


if __name__ == "__main__":
    main()
