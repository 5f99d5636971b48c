"""`python -m relay`: the relay process (leader or standby) with its /metrics and /healthz."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from aiokafka.errors import KafkaError

from contracts.env import load_or_exit
from contracts.logs import node_name, setup_logging, watch_loop_stalls
from relay.http import start_http
from relay.publisher import Relay
from relay.settings import RelaySettings

log = logging.getLogger("exchange.relay")

async def serve(settings: RelaySettings) -> None:
    relay = Relay(settings)
    server = None
    if settings.metrics_port:
        server = await start_http(relay, settings.host, settings.metrics_port)
        log.info("relay %s metrics on http://%s:%d/metrics", settings.name, settings.host, settings.metrics_port)
    try:
        await relay.run()
    finally:
        if server is not None:
            server.close()


def main() -> None:
    settings = load_or_exit("relay", RelaySettings.from_env)
    load_or_exit("relay", lambda: setup_logging("relay", node_name(settings.metrics_port or None)))
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # we log the outcome ourselves
    log.info("relay %s starting", settings.name)

    async def runner() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()

        def on_loop_error(loop, context) -> None:
            # A producer dropped mid-request leaves futures nobody reads; the relay has
            # already counted and logged that failure.
            if isinstance(context.get("exception"), KafkaError):
                log.debug("aiokafka: %s", context.get("exception"))
                return
            loop.default_exception_handler(context)

        loop.set_exception_handler(on_loop_error)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        stalls = asyncio.create_task(watch_loop_stalls(log))
        with contextlib.suppress(asyncio.CancelledError):
            await serve(settings)
        stalls.cancel()
        log.info("relay %s stopped", settings.name)

    try:
        import uvloop

        uvloop.run(runner())
    except ImportError:
        asyncio.run(runner())


if __name__ == "__main__":
    main()
