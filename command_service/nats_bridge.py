
"""NATS request/reply bridge: orders sent on the query service's /stream reach the
command service here and are answered after commit, exactly like POST /orders.

Request: {"api_key": str|null, "body": {POST /orders body}}; reply: {"status": int,
"body": <the POST /orders response or error body>}.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from decimal import Decimal

import msgspec
import nats

from command_service.edge import (
    answer,
    decode_json,
    decode_order_request,
)
from contracts.env import Login, nats_login_kwargs
from contracts.topics import ORDER_REQUEST_SUBJECT

log = logging.getLogger("command.nats")


class _Request(msgspec.Struct):
    body: dict
    api_key: str | None = None


# Numbers in the forwarded body stay exact (a JSON number becomes a Decimal, never a float).
_request_decoder = msgspec.json.Decoder(_Request, float_hook=Decimal)


class NatsBridge:
    def __init__(self, url: str, entry, auth, limiter=None, enabled: bool = True, login: Login | None = None):
        self.url = url
        self.login = login or Login("", "")
        self.entry = entry
        self.auth = auth
        self.limiter = limiter
        self.enabled = enabled
        self.nc = None
        self._task: asyncio.Task | None = None

    @property
    def status(self) -> str:
        if not self.enabled:
            return "disabled"
        return "healthy" if self.nc is not None and self.nc.is_connected else "unhealthy"

    async def start(self) -> None:
        if self.enabled:
            self._task = asyncio.create_task(self._connect())

    async def _connect(self) -> None:
        # NATS being down must not stop order entry over HTTP: keep trying in the background.
        delay = 0.2
        while True:
            try:
                self.nc = await nats.connect(self.url, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                                             connect_timeout=2, **nats_login_kwargs(self.login))
                # A queue group: with several command services each request is handled once.
                await self.nc.subscribe(ORDER_REQUEST_SUBJECT, queue="command-service", cb=self._on_request)
                log.info("nats bridge subscribed on %s", ORDER_REQUEST_SUBJECT)
                return
            except Exception as exc:
                log.warning("nats connect failed (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5)

    async def _on_request(self, msg) -> None:
        try:
            req = decode_json(_request_decoder.decode, msg.data)
            principal = (await self.auth.principal_for_key(req.api_key) if req.api_key
                         else await self.auth.authenticate(None))
            if self.limiter is not None:
                # The key's one bucket, whatever the entry point (HTTP, /ws, /stream over NATS):
                # forwarded orders once skipped it (6,000 at ~500/s past a 200/s limit). With
                # auth disabled the body's client_id stands for the key.
                client = req.body.get("client_id")
                self.limiter.check(principal.rate_key if principal.client_id
                                   else f"client:{client if isinstance(client, str) else ''}")
            status, body, _ = await self.entry.place(principal, decode_order_request(req.body), with_book=False)
        except Exception as exc:
            err = answer(exc, "on a NATS order request")
            status, body = err.status, err.body()
        if msg.reply:
            await msg.respond(b'{"status":%d,"body":%s}' % (status, body))

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        if self.nc is not None:
            with contextlib.suppress(Exception):  # shutting down: a broken NATS connection has nothing left to drain
                await self.nc.drain()
