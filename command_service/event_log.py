"""Order and trade event lines (the old system's "structured logs of order and trade events"):
logger `exchange.orders`, INFO, one line per event with its context fields, written once per
committed batch as one record (contracts.logs.log_lines) so the logging machinery's cost is paid
per batch, not per order. The journal stays the audit trail; these lines are for operators."""

from __future__ import annotations

import logging
from typing import Any

from contracts.logs import log_lines
from contracts.messages import (
    OrderAccepted,
    OrderAmended,
    OrderCancelled,
    OrderRejected,
    OrderTriggered,
    TradeExecuted,
)

log = logging.getLogger("exchange.orders")


class _Numbers:
    """Exact decimal JSON numbers of ticks and lots, cached: a book trades at few distinct prices
    and sizes, and formatting one costs more than the rest of a line."""

    def __init__(self, spec):
        self.spec = spec
        self.prices: dict[int, Any] = {}
        self.quantities: dict[int, Any] = {}

    def price(self, ticks: int):
        raw = self.prices.get(ticks)
        if raw is None:
            if len(self.prices) > 10_000:
                self.prices.clear()
            raw = self.prices[ticks] = self.spec.price_json(ticks)
        return raw

    def quantity(self, lots: int):
        raw = self.quantities.get(lots)
        if raw is None:
            if len(self.quantities) > 10_000:
                self.quantities.clear()
            raw = self.quantities[lots] = self.spec.quantity_json(lots)
        return raw


def event_lines(events, spec) -> list[dict[str, Any]]:
    """spec: an InstrumentSpec or a _Numbers cache of one."""
    if not isinstance(spec, _Numbers):
        spec = _Numbers(spec)
    price, quantity = spec.price, spec.quantity
    lines: list[dict[str, Any]] = []
    add = lines.append
    for e in events:
        t = type(e)
        if t is OrderAccepted:
            line = {"message": "order accepted", "event": "order_accepted", "seq": e.seq, "order_id": e.order_id,
                    "client_id": e.client_id, "side": e.side.value, "type": e.order_type.value,
                    "price": None if e.price is None else price(e.price),
                    "quantity": quantity(e.quantity), "tif": e.tif.value}
            if e.client_order_id is not None:  # an operator finds a client's order by the id it quotes
                line["client_order_id"] = e.client_order_id
            add(line)
        elif t is TradeExecuted:
            add({"message": "trade", "event": "trade", "seq": e.seq, "trade_id": e.trade_id,
                 "price": price(e.price), "quantity": quantity(e.quantity),
                 "taker_side": e.taker_side.value, "order_id": e.taker_order_id, "client_id": e.taker_client_id,
                 "maker_order_id": e.maker_order_id, "maker_client_id": e.maker_client_id})
        elif t is OrderCancelled:
            add({"message": "order cancelled", "event": "order_cancelled", "seq": e.seq, "order_id": e.order_id,
                 "client_id": e.client_id, "reason": e.reason.value,
                 "cancelled_quantity": quantity(e.cancelled_quantity)})
        elif t is OrderRejected:
            line = {"message": "order rejected", "event": "order_rejected", "seq": e.seq, "order_id": e.order_id,
                    "client_id": e.client_id, "reason": e.reason.value}
            if e.client_order_id is not None:
                line["client_order_id"] = e.client_order_id
            add(line)
        elif t is OrderAmended:
            add({"message": "order amended", "event": "order_amended", "seq": e.seq, "order_id": e.order_id,
                 "client_id": e.client_id, "quantity": quantity(e.quantity)})
        elif t is OrderTriggered:
            add({"message": "stop order triggered", "event": "order_triggered", "seq": e.seq,
                 "order_id": e.order_id, "client_id": e.client_id})
    return lines


class EventLog:
    """every: 1 = every committed batch's events, N = every Nth batch's, 0 = none."""

    def __init__(self, instrument: str, spec, every: int):
        self.instrument = instrument
        self.numbers = _Numbers(spec)
        self.every = every
        self._count = 0

    def batch(self, events) -> None:
        if not self.every or not events or not log.isEnabledFor(logging.INFO):
            return
        self._count += 1
        if self._count < self.every:
            return
        self._count = 0
        log_lines(log, logging.INFO, "order events", event_lines(events, self.numbers), instrument=self.instrument)
