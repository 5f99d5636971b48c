"""Every WebSocket frame the tests send to or receive from /ws and /stream is checked against
the AsyncAPI document (contracts/asyncapi.py).

tests/conftest.py wraps the websockets client (send/recv of websockets.asyncio.client.ClientConnection)
for the whole run; a frame that matches no message of its channel and direction makes the test
that saw it fail (at its teardown, naming the frame). Frames a test sends on purpose to check
that bad input is refused are exempt when the test is marked `ws_invalid_frames` (what the
exchange answers to them is still checked); a test that feeds /stream stand-in data of its own
(NATS messages, a stand-in command service) is marked `ws_synthetic_feed`. The check is bounded: at most PER_KIND frames of each
(test, channel, direction, type) are validated, so load tests do not pay for it per frame."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import jsonschema_rs

from contracts import asyncapi

PATHS = {address: cid for cid, (address, *_rest) in asyncapi.CHANNELS.items()}
PER_KIND = 200


def _keys(payload: dict) -> tuple[set, set | None]:
    props = payload.get("properties", {})
    t = props.get("type", {})
    types = {t["const"]} if "const" in t else set(t.get("enum", ()))
    a = props.get("action")
    return types, ({a["const"]} if a and "const" in a else None)


class FrameChecker:
    def __init__(self):
        self.by_kind: dict[tuple[str, str], list] = {}
        for cid in asyncapi.CHANNELS:
            for direction in ("in", "out"):
                self.by_kind[(cid, direction)] = [
                    (name, *_keys(payload), jsonschema_rs.validator_for(payload))
                    for name, (_, payload, _) in asyncapi.messages(cid, direction).items()
                ]

    def check(self, channel: str, direction: str, frame) -> str | None:
        """None when the frame is a message of this channel and direction, else why not."""
        try:
            msg = json.loads(frame)
        except (ValueError, TypeError):
            return "not JSON"
        if not isinstance(msg, dict):
            return "not a JSON object"
        kind = msg.get("type")
        candidates = [(n, v) for n, types, actions, v in self.by_kind[(channel, direction)]
                      if kind in types and (actions is None or msg.get("action") in actions)]
        if not candidates:
            return f"no {direction} message of {channel} has type {kind!r}"
        problems = []
        for name, validator in candidates:
            errors = [e.message for e in validator.iter_errors(msg)]
            if not errors:
                return None
            problems.append(f"{name}: {'; '.join(errors[:3])}")
        return " | ".join(problems)


@dataclass
class Recorder:
    checker: FrameChecker = field(default_factory=FrameChecker)
    test: str | None = None
    allow_invalid_sent: bool = False
    allow_invalid_received: bool = False
    counts: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    checked: int = 0

    def frame(self, path: str | None, direction: str, data) -> None:
        channel = PATHS.get((path or "").split("?", 1)[0])
        if channel is None or self.test is None:
            return
        if (direction == "in" and self.allow_invalid_sent) or (direction == "out" and self.allow_invalid_received):
            return
        try:
            kind = json.loads(data).get("type") if isinstance(data, (str, bytes)) else None
        except Exception:
            kind = None
        key = (self.test, channel, direction, kind if isinstance(kind, str) else None)
        n = self.counts.get(key, 0)
        if n >= PER_KIND:
            return
        self.counts[key] = n + 1
        self.checked += 1
        why = self.checker.check(channel, direction, data)
        if why is not None:
            shown = data if isinstance(data, str) else repr(data)
            self.failures.append(f"{'sent to' if direction == 'in' else 'received from'} {path}: {shown[:300]}\n"
                                 f"    -> {why[:600]}")


RECORDER = Recorder()


def install() -> None:
    """Wrap the websockets asyncio client so every frame passes through RECORDER."""
    from websockets.asyncio.client import ClientConnection

    if getattr(ClientConnection, "_conformance_wrapped", False):
        return
    send, recv = ClientConnection.send, ClientConnection.recv

    def path_of(conn) -> str | None:
        req = getattr(conn, "request", None)
        return getattr(req, "path", None)

    async def checked_send(self, message, *args, **kwargs):
        if isinstance(message, (str, bytes)):
            RECORDER.frame(path_of(self), "in", message)
        return await send(self, message, *args, **kwargs)

    async def checked_recv(self, *args, **kwargs):
        data = await recv(self, *args, **kwargs)
        RECORDER.frame(path_of(self), "out", data)
        return data

    ClientConnection.send = checked_send
    ClientConnection.recv = checked_recv
    ClientConnection._conformance_wrapped = True
