"""Prometheus metrics of the write side (the seed's names plus the sequencer's own)."""

from __future__ import annotations

from bisect import bisect_left

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import HistogramMetricFamily

from contracts.messages import OrderAccepted, OrderRejected, TradeExecuted

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5)


class CommandMetrics:
    def __init__(self, instruments, specs):
        self.registry = r = CollectorRegistry()
        self.specs = specs
        self.orders_received = Counter("orders_received_total", "Orders received", ["type", "side"], registry=r)
        self.orders_matched = Counter("orders_matched_total", "Orders that traded (as taker)", ["instrument"], registry=r)
        self.orders_rejected = Counter("orders_rejected_total", "Orders rejected", ["reason"], registry=r)
        self.order_latency = LatencyHistogram("order_latency_seconds", "Queue + match + commit time of a command",
                                              _LATENCY_BUCKETS, r)
        self.book_depth = Gauge("current_orderbook_depth", "Price levels in the book", ["instrument", "side"], registry=r)
        self.resting_orders = Gauge("resting_orders", "Orders resting in the book", ["instrument"], registry=r)
        self.trades = Counter("trades_total", "Trades executed", ["instrument"], registry=r)
        self.trade_volume = Counter("trade_volume_total", "Traded quantity (base units)", ["instrument"], registry=r)
        self.batch_size = Histogram("sequencer_batch_size", "Commands per committed batch", ["instrument"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=r)
        self.commit_latency = Histogram("sequencer_commit_seconds", "Time of the batch write (one statement)",
                                        ["instrument"], buckets=_LATENCY_BUCKETS, registry=r)
        self.commit_failures = Counter("sequencer_commit_failures_total", "Batches that failed to commit",
                                       ["instrument"], registry=r)
        self.queue_depth = Gauge("sequencer_queue_depth", "Commands waiting for the next batch", ["instrument"],
                                 registry=r)
        self.sequencer_ready = Gauge("sequencer_ready", "1 when the instrument accepts commands", ["instrument"],
                                     registry=r)
        self.recently_closed = Gauge("sequencer_recently_closed_orders",
                                     "Closed orders held in memory to answer racing cancels (bounded)",
                                     ["instrument"], registry=r)
        self.journal_seq = Gauge("journal_seq", "Last committed seq", ["instrument"], registry=r)
        self.relay_lag_events = Gauge("relay_lag_events", "Journal events not yet published to Kafka",
                                      ["instrument"], registry=r)
        self.relay_lag_seconds = Gauge("relay_lag_seconds", "Age of the oldest unpublished event", registry=r)
        self.http_errors = Counter("http_errors_total", "Requests answered with an error", ["status", "code"],
                                   registry=r)
        # Nodes and ownership (issue 14, command_service/nodes.py)
        self.instrument_owner = Gauge("instrument_owner", "1 while this node owns the instrument (holds its lock)",
                                      ["instrument", "node"], registry=r)
        self.takeovers = Counter("takeovers_total", "Instruments this node took ownership of, by reason",
                                 ["reason"], registry=r)
        self.takeover_duration = Histogram("takeover_duration_seconds",
                                           "From deciding to take an instrument until it accepts commands",
                                           buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30), registry=r)
        self.forwarded = Counter("forwarded_commands_total", "Commands forwarded to the owning node, by outcome",
                                 ["op", "outcome"], registry=r)
        self.forward_latency = Histogram("forward_latency_seconds", "Round trip of a forwarded command",
                                         buckets=_LATENCY_BUCKETS, registry=r)
        self._batch_children = {}
        self._children: dict = {}  # (type, side) -> orders_received child
        self._instrument_children: dict = {}
        for sym in instruments:
            self._batch_children[sym] = (self.batch_size.labels(sym), self.commit_latency.labels(sym))

    def observe_batch(self, instrument: str, size: int, seconds: float) -> None:
        b, c = self._batch_children[instrument]
        b.observe(size)
        c.observe(seconds)

    def after_batch(self, instrument: str, events, book) -> None:
        # Counted per batch, not per event, through children looked up once: labels() is a locked
        # dict lookup, and seven of them per batch were 4 % of the service's profile (issue 19).
        trades = volume = 0
        received: dict[tuple[str, str], int] = {}
        rejected: dict[str, int] = {}
        takers = set()
        for e in events:
            t = type(e)
            if t is TradeExecuted:
                trades += 1
                volume += e.quantity
                takers.add(e.taker_order_id)
            elif t is OrderAccepted:
                k = (e.order_type.value, e.side.value)
                received[k] = received.get(k, 0) + 1
            elif t is OrderRejected:
                k = (e.order_type.value, e.side.value)
                received[k] = received.get(k, 0) + 1
                rejected[e.reason.value] = rejected.get(e.reason.value, 0) + 1
        children = self._children
        for key, n in received.items():
            c = children.get(key)
            if c is None:
                c = children[key] = self.orders_received.labels(*key)
            c.inc(n)
        for reason, n in rejected.items():
            self.orders_rejected.labels(reason).inc(n)
        per = self._instrument_children.get(instrument)
        if per is None:
            per = self._instrument_children[instrument] = (
                self.trades.labels(instrument), self.trade_volume.labels(instrument),
                self.orders_matched.labels(instrument), self.book_depth.labels(instrument, "buy"),
                self.book_depth.labels(instrument, "sell"), self.resting_orders.labels(instrument),
                self.journal_seq.labels(instrument))
        trades_c, volume_c, matched_c, depth_buy, depth_sell, resting, journal_seq = per
        if trades:
            trades_c.inc(trades)
            volume_c.inc(float(self.specs.get(instrument).lots_to_quantity(volume)))
            matched_c.inc(len(takers))
        bids, asks = book.depth()
        depth_buy.set(bids)
        depth_sell.set(asks)
        resting.set(len(book))
        journal_seq.set(book.seq)


class LatencyHistogram:
    """A histogram observed once per command on the sequencer's hot path, kept in plain
    lists: prometheus_client's Histogram takes a lock and walks every bucket per
    observation (~2 us each, for every order, on the service's busiest core). Read only
    by the /metrics handler on the same event loop, so no lock is needed."""

    def __init__(self, name: str, documentation: str, buckets, registry):
        self.name = name
        self.documentation = documentation
        self.bounds = [float(b) for b in buckets]
        self._bounds_ns = [round(b * 1e9) for b in self.bounds]
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum_ns = 0
        registry.register(self)

    def observe_ns(self, ns: int) -> None:
        # le semantics: a value equal to a bound falls in that bucket (bisect_left)
        self.counts[bisect_left(self._bounds_ns, ns)] += 1
        self.sum_ns += ns

    def collect(self):
        family = HistogramMetricFamily(self.name, self.documentation)
        cumulative, buckets = 0, []
        for bound, count in zip(self.bounds + [float("inf")], self.counts):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        family.add_metric([], buckets, self.sum_ns / 1e9)
        yield family
