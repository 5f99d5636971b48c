"""The shared logging module (contracts/logs.py) and the settings parsers (contracts/env.py): what an
operator reads in a service's log and sees when a setting is wrong."""

from __future__ import annotations

import io
import json
import logging
import uuid

import pytest

from command_service.event_log import EventLog
from contracts.enums import OrderType, Side, StpMode, TimeInForce
from contracts.env import SettingError, env_bool, env_float, env_int, env_port
from contracts.instruments import load_instruments
from contracts.logs import (
    JsonFormatter,
    LogSettings,
    RepeatLimiter,
    TextFormatter,
    request_id,
    sane_request_id,
    setup_logging,
)
from contracts.messages import OrderAccepted, TradeExecuted


@pytest.fixture
def captured():
    """setup_logging into a buffer; the root logger is restored afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    buf = io.StringIO()

    def setup(**env):
        setup_logging("command", "host:8001", env={"EXCHANGE_LOG_FORMAT": "json", **env}, stream=buf)
        return buf

    yield setup
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in saved[0]:
        root.addHandler(h)
    root.setLevel(saved[1])


def lines(buf) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def test_json_line_has_time_level_logger_message_and_context(captured):
    buf = captured()
    token = request_id.set("req-1")
    try:
        logging.getLogger("command.sequencer").info("BTC-USD: recovered at seq %d", 12,
                                                    extra={"instrument": "BTC-USD", "seq": 12})
    finally:
        request_id.reset(token)
    (line,) = lines(buf)
    assert line["level"] == "INFO" and line["logger"] == "command.sequencer"
    assert line["message"] == "BTC-USD: recovered at seq 12"
    assert line["time"].endswith("Z") and len(line["time"]) == len("2026-12-06T04:31:07.123Z")
    assert (line["instrument"], line["seq"], line["request_id"]) == ("BTC-USD", 12, "req-1")
    assert (line["service"], line["node"]) == ("command", "host:8001")


def test_exception_is_one_json_line_with_the_traceback_inside(captured):
    buf = captured()
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("x").exception("failed")
    (line,) = lines(buf)
    assert "RuntimeError: boom" in line["exc"]


def test_level_setting_filters(captured):
    buf = captured(EXCHANGE_LOG_LEVEL="warning")
    logging.getLogger("x").info("hidden")
    logging.getLogger("x").warning("shown")
    assert [l["message"] for l in lines(buf)] == ["shown"]


def test_order_and_trade_events_one_line_each_with_exact_numbers(captured):
    buf = captured()
    spec = load_instruments().get("BTC-USD")
    accepted = OrderAccepted(instrument="BTC-USD", seq=1, ts=1, order_id="o-1", client_id="client-A", side=Side.BUY,
                             order_type=OrderType.LIMIT, price=spec.price_to_ticks("70000.10"),
                             quantity=spec.quantity_to_lots("0.3"), tif=TimeInForce.GTC, post_only=False,
                             stp=StpMode.CANCEL_NEWEST)
    trade = TradeExecuted(instrument="BTC-USD", seq=2, ts=2, trade_id="t-1", price=spec.price_to_ticks("70000.10"),
                          quantity=spec.quantity_to_lots("0.1"), taker_side=Side.SELL, maker_order_id="o-1",
                          maker_client_id="client-A", taker_order_id="o-2", taker_client_id="client-B",
                          maker_remaining=1, taker_remaining=0)
    EventLog("BTC-USD", spec, every=1).batch([accepted, trade])
    a, t = lines(buf)
    assert (a["event"], a["order_id"], a["client_id"], a["instrument"]) == ("order_accepted", "o-1", "client-A",
                                                                            "BTC-USD")
    assert '"price":70000.1' in buf.getvalue().splitlines()[0] and a["quantity"] == 0.3
    assert (t["event"], t["trade_id"], t["maker_client_id"], t["client_id"]) == ("trade", "t-1", "client-A",
                                                                                  "client-B")


def test_event_sampling_logs_every_nth_batch(captured):
    buf = captured()
    spec = load_instruments().get("BTC-USD")
    log = EventLog("BTC-USD", spec, every=3)
    ev = OrderAccepted(instrument="BTC-USD", seq=1, ts=1, order_id="o", client_id="c", side=Side.BUY,
                       order_type=OrderType.MARKET, price=None, quantity=1, tif=TimeInForce.IOC, post_only=False,
                       stp=StpMode.CANCEL_NEWEST)
    for _ in range(9):
        log.batch([ev])
    assert len(lines(buf)) == 3
    EventLog("BTC-USD", spec, every=0).batch([ev])
    assert len(lines(buf)) == 3


def test_text_format():
    fmt = TextFormatter("relay", None)
    record = logging.LogRecord("exchange.relay", logging.INFO, __file__, 1, "relay %s is leader", ("r1",), None)
    record.instrument = "ETH-USD"
    text = fmt.format(record)
    assert "INFO exchange.relay: relay r1 is leader [instrument=ETH-USD]" in text
    assert JsonFormatter("relay").format(record).startswith("{")


def test_repeated_warnings_are_held_back_and_counted():
    now = [0.0]
    limiter = RepeatLimiter(window_s=10, clock=lambda: now[0])

    def record(msg, level=logging.WARNING):
        return logging.LogRecord("command.sequencer", level, __file__, 1, msg, None, None)

    assert limiter.filter(record("BTC-USD: recovery failed; retrying in 0.1s"))
    passed = [limiter.filter(record(f"BTC-USD: recovery failed; retrying in {0.1 * 2 ** i:.1f}s")) for i in range(20)]
    assert not any(passed)
    # another instrument's line is not the same line
    assert limiter.filter(record("ETH-USD: recovery failed; retrying in 0.1s"))
    # info lines (order events, system events) are never held back
    assert all(limiter.filter(record("order accepted", logging.INFO)) for _ in range(5))
    now[0] = 11.0
    later = record("BTC-USD: recovery failed; retrying in 5.0s")
    assert limiter.filter(later) and later.repeated == 20


def test_repeats_that_differ_only_in_addresses_ids_and_tokens_are_one_line():
    """Issue 20: an outage wrote an ERROR line every 40 ms: lines that differed only in an object
    address, an order id or a request id each passed the limiter as a new line."""
    now = [0.0]
    limiter = RepeatLimiter(window_s=10, clock=lambda: now[0])

    def record(msg):
        return logging.LogRecord("query_service.stream", logging.ERROR, __file__, 1, msg, None, None)

    lines = [f"unhandled error on POST /orders/{uuid.uuid4()}/cancel: <Conn object at {hex(id(object()) + i)}>"
             f" (request {uuid.uuid4().hex})" for i in range(250)]
    assert sum(limiter.filter(record(line)) for line in lines) == 1
    assert limiter.filter(record("another error entirely"))


def test_request_id_sanity():
    assert sane_request_id(b"abc-123_x.y:z") == "abc-123_x.y:z"
    assert sane_request_id(b"") is None
    assert sane_request_id(b"a" * 129) is None
    assert sane_request_id(b"bad id\r\nX-Injected: 1") is None
    assert sane_request_id("\u00e9t\u00e9".encode()) is None


@pytest.mark.parametrize("parse, value, expected", [
    (lambda e: env_int("V", 1, e), "abc", "an integer"),
    (lambda e: env_int("V", 1, e, minimum=1), "0", "an integer >= 1"),
    (lambda e: env_float("V", 1.0, e), "nan", "a finite number"),
    (lambda e: env_bool("V", True, e), "maybe", "one of"),
    (lambda e: env_port("V", 1, e), "70000", "a port"),
    (lambda e: LogSettings.from_env({"EXCHANGE_LOG_FORMAT": e["V"]}), "xml", "json|text"),
])
def test_bad_setting_names_the_variable_and_the_expectation(parse, value, expected):
    with pytest.raises(SettingError) as info:
        parse({"V": value})
    assert value in str(info.value) and expected in str(info.value)
    assert "\n" not in str(info.value)


def test_unset_or_empty_means_default():
    assert env_int("V", 7, {}) == 7 and env_int("V", 7, {"V": " "}) == 7
    assert env_bool("V", False, {"V": "on"}) is True
