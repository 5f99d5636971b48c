"""Logging for every service: one setup, one JSON (or text) line format, request ids, and a
limit on repeated warnings. The command service, the relay and the query service all call
`setup_logging` first thing in their `main`.

A line (EXCHANGE_LOG_FORMAT=json, the default):
    {"time": "2026-12-06T04:31:07.123Z", "level": "INFO", "logger": "command.sequencer",
     "message": "BTC-USD: recovered at seq 12", "service": "command", "node": "host:8001",
     "instrument": "BTC-USD", "request_id": "..."}
Context fields (instrument, order_id, client_id, trade_id, seq, ...) come from `extra=` on
the call, and request_id from the request being served (RequestIdMiddleware).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
import time
import traceback
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping, MutableMapping, TextIO

import msgspec

from contracts.env import env_choice, env_float

LOG_FORMAT_VAR = "EXCHANGE_LOG_FORMAT"
LOG_LEVEL_VAR = "EXCHANGE_LOG_LEVEL"
LOG_REPEAT_VAR = "EXCHANGE_LOG_REPEAT_WINDOW_S"
LEVELS = ("debug", "info", "warning", "error", "critical")

# Fields taken from a record's `extra=` into the line, in this order.
CONTEXT_FIELDS = ("instrument", "order_id", "client_id", "trade_id", "seq", "event", "reason", "partition",
                  "repeated")

# The id of the HTTP request (or WebSocket connection) being served, for every line logged
# while serving it.
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

_encode = msgspec.json.Encoder().encode

# ASGI shapes (no framework import in contracts/)
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
_SANE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


# --------------------------------------------------------------------------- formatting


class _Clock:
    """ISO 8601 UTC with milliseconds; the seconds part is formatted once per second."""

    def __init__(self) -> None:
        self._sec = -1
        self._prefix = ""

    def iso(self, created: float) -> str:
        sec = int(created)
        if sec != self._sec:
            self._sec = sec
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return f"{self._prefix}.{int((created - sec) * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str, node: str | None = None):
        super().__init__()
        self.service = service
        self.node = node
        self.clock = _Clock()

    def base(self, record: logging.LogRecord) -> dict[str, Any]:
        line: dict[str, Any] = {
            "time": self.clock.iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": self.service,
        }
        if self.node:
            line["node"] = self.node
        rid = request_id.get()
        if rid is not None:
            line["request_id"] = rid
        d = record.__dict__
        for key in CONTEXT_FIELDS:
            value = d.get(key)
            if value is not None:
                line[key] = value
        if record.exc_info:
            line["exc"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return line

    def format(self, record: logging.LogRecord) -> str:
        line = self.base(record)
        lines = record.__dict__.get("lines")
        if lines:
            # One record, several lines (see log_lines): the logging machinery runs once per batch,
            # the common fields are encoded once, and each line's own fields (its message
            # included) are spliced in after them.
            del line["message"]
            head = _encode(line)[:-1] + b","
            return b"\n".join(head + _encode(extra)[1:] for extra in lines).decode()
        return _encode(line).decode()


class TextFormatter(logging.Formatter):
    def __init__(self, service: str, node: str | None = None):
        super().__init__()
        self.service = service
        self.node = node
        self.clock = _Clock()

    def _one(self, head: str, message: str, fields: Mapping[str, Any]) -> str:
        tail = " ".join(f"{k}={bytes(v).decode() if isinstance(v, msgspec.Raw) else v}"
                        for k, v in fields.items() if v is not None)
        return f"{head} {message}" + (f" [{tail}]" if tail else "")

    def format(self, record: logging.LogRecord) -> str:
        head = f"{self.clock.iso(record.created)} {record.levelname} {record.name}:"
        d = record.__dict__
        fields = {k: d.get(k) for k in CONTEXT_FIELDS}
        rid = request_id.get()
        if rid is not None:
            fields["request_id"] = rid
        lines = d.get("lines")
        if lines:
            return "\n".join(
                self._one(head, str(extra.get("message", record.getMessage())),
                          {**fields, **{k: v for k, v in extra.items() if k != "message"}})
                for extra in lines
            )
        text = self._one(head, record.getMessage(), fields)
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        return text


def log_lines(logger: logging.Logger, level: int, message: str, lines: list[dict[str, Any]],
              **context: Any) -> None:
    """Log several lines (each a dict merged over the common fields) as one record: the cost of
    the logging machinery (locks, handler, filters, one write) is paid once, not per line."""
    if lines and logger.isEnabledFor(level):
        logger.log(level, message, extra={"lines": lines, **context})


# --------------------------------------------------------------------------- repeats


class RepeatLimiter(logging.Filter):
    """Warnings and errors that repeat (same logger, level and text, numbers aside: "retrying in
    1.6s" and "in 3.2s" are the same line) are written once per window; the next one written
    after the window carries `repeated`: how many were held back. During an outage a retry
    loop per instrument would otherwise write the same line many times a second."""

    MAX_KEYS = 1000
    # What varies between repeats of one line: numbers, and (issue 20: an outage still wrote a
    # line every 40 ms) object addresses, UUIDs / order ids and other long tokens with digits
    # (request ids, hashes), which made each repeat a line of its own.
    _DIGITS = re.compile(
        r"0x[0-9a-fA-F]+"
        r"|\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"
        r"|\b(?=[A-Za-z_\-]*\d)[A-Za-z0-9_\-]{16,}\b"
        r"|\d+(?:\.\d+)?"
    )

    def __init__(self, window_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.window = window_s
        self.clock = clock
        self.seen: dict[tuple[str, int, str], list[float | int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or self.window <= 0:
            return True
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is logging's own problem to report
            return True
        key = (record.name, record.levelno, self._DIGITS.sub("#", text))
        now = self.clock()
        entry = self.seen.get(key)
        if entry is None:
            if len(self.seen) >= self.MAX_KEYS:
                self.seen.pop(next(iter(self.seen)))
            self.seen[key] = [now, 0]
            return True
        if now - entry[0] < self.window:
            entry[1] += 1
            return False
        if entry[1]:
            record.repeated = entry[1]
        entry[0], entry[1] = now, 0
        return True


# --------------------------------------------------------------------------- setup


@dataclass(frozen=True)
class LogSettings:
    format: str
    level: str
    repeat_window_s: float

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "LogSettings":
        return cls(
            format=env_choice(LOG_FORMAT_VAR, "json", ("json", "text"), env),
            level=env_choice(LOG_LEVEL_VAR, "info", LEVELS, env),
            repeat_window_s=env_float(LOG_REPEAT_VAR, 10.0, env, minimum=0.0),
        )


def setup_logging(service: str, node: str | None = None, env: Mapping[str, str] | None = None,
                  stream: TextIO | None = None) -> LogSettings:
    """Configure the root logger of this process (raises SettingError on a bad variable)."""
    settings = LogSettings.from_env(env)
    # Record fields no line shows, each a syscall or a stack walk per record (file and line of
    # the caller: `_srcfile = None` is the switch the logging module itself documents for this).
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None
    handler = logging.StreamHandler(stream or sys.stdout)
    formatter_cls = JsonFormatter if settings.format == "json" else TextFormatter
    handler.setFormatter(formatter_cls(service, node))
    handler.addFilter(RepeatLimiter(settings.repeat_window_s))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level.upper())
    # Libraries that narrate every retry: their outcome is logged by our own code.
    for noisy in ("aiokafka", "asyncio", "nats", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    logging.captureWarnings(True)
    return settings


def node_name(port: int | str | None = None) -> str:
    """host:port (or host:pid) of this process, for the `node` field."""
    host = os.environ.get("HOSTNAME") or os.uname().nodename
    return f"{host}:{port}" if port else f"{host}:{os.getpid()}"


# --------------------------------------------------------------------------- request ids


def new_request_id() -> str:
    return os.urandom(8).hex()


def sane_request_id(value: bytes | str | None) -> str | None:
    """A client-sent X-Request-Id, if it is short and plain (it is echoed and logged)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    return value if _SANE_ID.fullmatch(value) else None


class RequestIdMiddleware:
    """ASGI: every HTTP request (and WebSocket connection) gets an id: the client's
    X-Request-Id if sane, else a new one; it is in every line logged while serving it and
    echoed in the response's X-Request-Id header."""

    def __init__(self, app: ASGIApp):
        self.app = app

    def __getattr__(self, name: str) -> Any:  # e.g. .state of the wrapped app
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        rid = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                rid = sane_request_id(value)
                break
        if rid is None:
            rid = new_request_id()
        token = request_id.set(rid)
        header = (b"x-request-id", rid.encode())
        if kind == "http":
            async def send_with_id(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", ()), header]
                await send(message)
        else:
            async def send_with_id(message: Message) -> None:  # noqa: F811 - one of the two is defined
                if message["type"] == "websocket.accept":
                    message["headers"] = [*message.get("headers", ()), header]
                await send(message)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)


# --------------------------------------------------------------------------- stalls

LOOP_STALL_S = 0.5
"""A service's event loop that did not run for this long is logged (warning). Under load a loop
turn takes well under 10 ms; longer means the process did not run (a long computation, a GC pass,
the machine itself stopped) and every connection of the service waited."""


async def watch_loop_stalls(logger: logging.Logger, threshold_s: float = LOOP_STALL_S, tick_s: float = 0.1) -> None:
    """Sleep `tick_s` at a time, forever; a wake-up later than `threshold_s` beyond the tick is
    logged with how long the loop stood still and how much CPU the process used meanwhile (about
    none: the process was not running, so the machine or a lock outside it; about all of it: the
    service's own work held the loop)."""
    while True:
        before, cpu_before = time.monotonic(), time.process_time()
        await asyncio.sleep(tick_s)
        late = time.monotonic() - before - tick_s
        if late >= threshold_s:
            cpu = time.process_time() - cpu_before
            logger.warning("event loop stalled for %.2f s (process CPU meanwhile %.2f s)", late, cpu)
