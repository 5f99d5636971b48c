
"""NATS connection of a replica: feed publish/subscribe and order request/reply."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Awaitable, Callable

import nats
from nats.aio.client import Client

from contracts.env import Login, nats_login_kwargs

log = logging.getLogger("query_service.bus")
START_WAIT_S = 3.0  # how long a replica's start waits for NATS before serving without it


class Bus:
    def __init__(self, url: str, name: str = "query_service", login: Login | None = None):
        self.url = url
        self.login = login or Login("", "")
        self.name = name
        self.nc: Client | None = None
        self._subscriptions: list[tuple[str, Callable]] = []
        self._on_reconnect: list[Callable[[], Awaitable[None]]] = []
        self._task: asyncio.Task | None = None

    def subscribe_on_connect(self, subject: str, cb: Callable) -> None:
        self._subscriptions.append((subject, cb))

    def on_reconnect(self, cb: Callable[[], Awaitable[None]]) -> None:
        self._on_reconnect.append(cb)

    async def start(self) -> None:
        # Bounded: with max_reconnect_attempts=-1, nats.connect retries a server that refuses
        # forever instead of raising, and the replica's start (its REST API) waited with it.
        try:
            await asyncio.wait_for(self._connect(), START_WAIT_S)
        except Exception as exc:  # NATS down at start: serve REST, connect when it is back
            log.warning("bus: nats unavailable (%r); retrying in background", exc)
            self._task = asyncio.create_task(self._retry())

    async def _connect(self) -> None:
        async def reconnected() -> None:
            # Feed messages may have been lost while disconnected: let subscribers resync.
            for cb in self._on_reconnect:
                await cb()

        async def error(exc: Exception) -> None:
            log.debug("bus: %s", exc)

        nc = await nats.connect(
            self.url,
            name=self.name,
            connect_timeout=2,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            reconnected_cb=reconnected,
            error_cb=error,
            pending_size=64 * 1024 * 1024,
            **nats_login_kwargs(self.login),
        )
        for subject, cb in self._subscriptions:
            await nc.subscribe(subject, cb=cb, pending_msgs_limit=1_000_000, pending_bytes_limit=512 * 1024 * 1024)
        self.nc = nc

    async def _retry(self) -> None:
        delay = 0.5
        while self.nc is None:
            await asyncio.sleep(delay)
            try:
                await self._connect()
                log.info("bus: connected")
                for cb in self._on_reconnect:
                    await cb()
            except Exception:
                delay = min(delay * 2, 5.0)

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def publish(self, subject: str, data: bytes) -> bool:
        if not self.connected:
            return False
        try:
            await self.nc.publish(subject, data)
            return True
        except Exception as exc:
            log.warning("bus: publish failed: %s", exc)
            return False

    async def request(self, subject: str, data: bytes, timeout: float) -> bytes:
        if self.nc is None:
            raise ConnectionError("nats not connected")
        msg = await self.nc.request(subject, data, timeout=timeout)
        return msg.data

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        if self.nc is not None:
            with contextlib.suppress(Exception):  # shutting down: a broken NATS connection has nothing left to drain
                await self.nc.drain()
