"""The relay's notices on NATS (contracts.topics.RELAYED_SUBJECT): after every acknowledged round, where
the topic's partitions now end. The projectors fetch from the broker on them instead of asking it every
fetch wait (issue 19). Best effort: NATS away or a notice lost only makes the projectors fall back to
fetching continuously or to their probe; the relay never waits for NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import nats

from contracts.env import Login, nats_login_kwargs
from contracts.topics import RELAYED_SUBJECT, relayed_notice

log = logging.getLogger("relay.notices")
CONNECT_RETRY_S = 2.0


class Notices:
    def __init__(self, url: str, login: Login, name: str):
        self.url = url
        self.login = login
        self.name = name
        self.nc = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self.url:
            self._task = asyncio.create_task(self._connect(), name="relay-notices")

    async def _connect(self) -> None:
        async def quiet(exc: Exception) -> None:
            log.debug("notices: %s", exc)

        while self.nc is None:
            try:
                self.nc = await nats.connect(
                    self.url, name=f"relay {self.name}", connect_timeout=2, allow_reconnect=True,
                    max_reconnect_attempts=-1, reconnect_time_wait=0.5, error_cb=quiet,
                    **nats_login_kwargs(self.login))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("notices: NATS unavailable (%r); projectors fetch without notices meanwhile", exc)
                await asyncio.sleep(CONNECT_RETRY_S)

    async def announce(self, topic: str, ends: dict[int, int]) -> None:
        nc = self.nc
        if nc is None or not nc.is_connected or not ends:
            return
        try:
            await nc.publish(RELAYED_SUBJECT, relayed_notice(topic, ends).encode())
        except Exception as exc:  # noqa: BLE001 - a lost notice only delays the projectors' fetch
            log.debug("notices: publish failed (%r)", exc)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # stopping; logged above
                await self._task
        if self.nc is not None:
            with contextlib.suppress(Exception):  # a connection already gone
                await asyncio.wait_for(self.nc.close(), 2.0)
