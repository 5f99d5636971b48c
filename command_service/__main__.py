"""`python -m command_service`: serve the command API with uvicorn (uvloop, httptools)."""

import gc
import logging

import uvicorn

from command_service.app import create_asgi
from command_service.settings import CommandSettings
from command_service.ws_transport import CoalescingWebSocketProtocol
from contracts.env import load_or_exit
from contracts.http_transport import BoundedHttpToolsProtocol
from contracts.logs import RequestIdMiddleware, node_name, setup_logging

log = logging.getLogger("command.main")


def main() -> None:
    # Requests allocate many short-lived containers: at the default gen-0 threshold (700)
    # the collector ran ~1,000 times a second and its older-generation passes over the
    # whole heap showed up as p99 spikes (WS bench: 15.2k -> 16.4k orders/s, p99 47 -> 28 ms).
    gc.set_threshold(50_000, 20, 100)
    settings = load_or_exit("command service", CommandSettings.from_env)
    load_or_exit("command service", lambda: setup_logging("command", node_name(settings.port)))
    log.info("command service starting on %s:%d", settings.host, settings.port)
    # log_config=None: uvicorn's own lines go through our handler (JSON) instead of its text config.
    uvicorn.run(RequestIdMiddleware(create_asgi(settings)), host=settings.host, port=settings.port, loop="uvloop",
                http=BoundedHttpToolsProtocol, ws=CoalescingWebSocketProtocol, log_level="warning", log_config=None,
                access_log=False, lifespan="on", backlog=2048, proxy_headers=False, server_header=False,
                date_header=False, ws_max_size=64 * 1024)
    log.info("command service stopped")


if __name__ == "__main__":
    main()
