"""Forwarding between command nodes (issue 14): a node that receives a command for an instrument
it does not own sends it to the owner over NATS request/reply and answers with the owner's
answer unchanged (status, body, headers).

- The owner alone subscribes to the instrument's internal subject
  (contracts.topics.node_command_subject), from the moment its sequencer is ready until it is not;
  so a request reaches whoever holds the lock now, and NATS answers "no responders" at once
  while nobody does (a takeover in progress): the sender retries until its deadline, then
  answers 503 with Retry-After. It never waits longer than EXCHANGE_FORWARD_TIMEOUT_S.
- The owner runs the very use case a local request runs (order_entry.OrderEntry, with
  forwarding off: a forwarded request is never forwarded again) and replies only once that
  returned, i.e. after its batch committed: an acknowledgement always stands for a committed row.
  Idempotency keys and client order ids are reserved on the owner, the one writer of the
  instrument, so those rules hold across nodes.
- The receiving node authenticated the request; the principal it sends is trusted only on this
  internal subject (the /stream bridge subject carries API keys, never principals).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Awaitable, Callable

import msgspec
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from command_service.edge import answer
from contracts.api import ApiError, json_encoder
from contracts.auth import Principal
from contracts.topics import node_command_subject

log = logging.getLogger("command.forwarding")

Reply = tuple[int, bytes, dict]
NO_OWNER_RETRY_S = 0.05  # between tries while no node serves the instrument's subject


class _Forwarded(msgspec.Struct):
    op: str
    principal: dict
    args: dict
    origin: str = ""


class _Answer(msgspec.Struct):
    status: int
    body: msgspec.Raw
    headers: dict[str, str] = {}


_decode_request = msgspec.json.Decoder(_Forwarded).decode
_decode_answer = msgspec.json.Decoder(_Answer).decode


def unavailable(instrument: str) -> ApiError:
    return ApiError(503, "unavailable", f"no node serves {instrument} right now; retry",
                    headers={"Retry-After": "1"})


class Forwarder:
    def __init__(self, node_id: str, bridge, timeout_s: float, metrics=None):
        self.node_id = node_id
        self.bridge = bridge  # command_service.nats_bridge.NatsBridge: its connection
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.entry: Any = None  # set by OrderEntry (it serves what arrives)
        self._subs: dict[str, Any] = {}
        self._tasks: set[asyncio.Task] = set()
        self.on_no_owner: Callable[[], None] | None = None  # Membership.nudge

    # ------------------------------------------------------------------ sending
    async def forward(self, instrument: str, op: str, principal: Principal, args: dict,
                      local: Callable[[], Awaitable[Reply]] | None = None) -> Reply:
        """The owner's answer to `op`; `local` runs it here instead if this node becomes the
        owner meanwhile. 503 with Retry-After when no owner answers within the timeout."""
        t0 = time.perf_counter()
        deadline = time.monotonic() + self.timeout_s
        data = json_encoder.encode({"op": op, "origin": self.node_id, "args": args, "principal": {
            "client_id": principal.client_id, "is_admin": principal.is_admin, "rate_key": principal.rate_key,
            "scope": principal.scope}})
        subject = node_command_subject(instrument)
        outcome = "unavailable"
        try:
            while True:
                if local is not None and self.entry.sequencers[instrument].ready:
                    outcome = "local"
                    return await local()
                nc = self.bridge.nc
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if nc is None or not nc.is_connected:
                    await asyncio.sleep(min(NO_OWNER_RETRY_S, left))
                    continue
                try:
                    msg = await nc.request(subject, data, timeout=left)
                except NoRespondersError:
                    if self.on_no_owner is not None:
                        self.on_no_owner()  # the node layer looks for a dead owner now (nodes.py)
                    await asyncio.sleep(min(NO_OWNER_RETRY_S, max(0.0, deadline - time.monotonic())))
                    continue
                except (NatsTimeout, asyncio.TimeoutError):
                    break
                ans = _decode_answer(msg.data)
                outcome = str(ans.status)
                return ans.status, bytes(ans.body), dict(ans.headers)
            raise unavailable(instrument)
        finally:
            if self.metrics is not None:
                self.metrics.forwarded.labels(op, outcome).inc()
                self.metrics.forward_latency.observe(time.perf_counter() - t0)

    # ------------------------------------------------------------------ serving
    async def sync(self, sequencers) -> None:
        """Subscribe to the subjects of the instruments this node owns now, and only those."""
        nc = self.bridge.nc
        if nc is None or not nc.is_connected:
            return
        for sym, seq in sequencers.items():
            sub = self._subs.get(sym)
            if seq.ready and sub is None:
                self._subs[sym] = await nc.subscribe(node_command_subject(sym), cb=self._dispatch)
            elif not seq.ready and sub is not None:
                del self._subs[sym]
                with contextlib.suppress(Exception):  # a connection being replaced drops it anyway
                    await sub.unsubscribe()

    async def _dispatch(self, msg) -> None:
        # nats-py awaits a subscription's callback before it hands over the next message: a task
        # per request keeps them concurrent, so forwarded orders share the owner's group commit.
        t = asyncio.create_task(self._on_request(msg))
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _on_request(self, msg) -> None:
        try:
            req = _decode_request(msg.data)
            principal = Principal(**req.principal)
            status, body, headers = await self.entry.serve_forwarded(req.op, principal, req.args)
        except Exception as exc:
            err = answer(exc, "on a forwarded command")
            status, body, headers = err.status, err.body(), dict(err.headers or {})
        if msg.reply:
            await msg.respond(b'{"status":%d,"headers":%s,"body":%s}' % (status, json_encoder.encode(headers), body))
