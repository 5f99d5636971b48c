"""The relay's notices on NATS (contracts.topics.RELAYED_SUBJECT): after every acknowledged round, where
the topic's partitions now end, with the round's records. The projectors apply the records they carry and
fetch from the broker only what a notice did not bring, instead of asking it every fetch wait (issue 19).
Best effort: NATS away or a notice lost only makes the projectors fall back to fetching continuously or to
their probe; the relay never waits for NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import nats

from contracts.env import Login, nats_login_kwargs
from contracts.topics import RELAYED_SUBJECT, RelayedRecords, relayed_notice

log = logging.getLogger("relay.notices")
CONNECT_RETRY_S = 2.0
# A round whose records exceed this goes out as a notice without them (the projectors fetch it):
# well under NATS's default max_payload (1 MB). A round of 2,000 orders/s with the relay's 15 ms
# linger carries ~30-60 KB; only catching up after an outage builds rounds this large.
NOTICE_RECORDS_MAX_BYTES = 256 * 1024


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

    async def announce(self, topic: str, ends: dict[int, int], records: Sequence[RelayedRecords] = ()) -> None:
        nc = self.nc
        if nc is None or not nc.is_connected or not ends:
            return
        if sum(len(v) for r in records for v in r.values) > NOTICE_RECORDS_MAX_BYTES:
            records = ()
        try:
            await nc.publish(RELAYED_SUBJECT, relayed_notice(topic, ends, records))
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
