"""Latency and outcome bookkeeping for the load generator.

The hot path only appends a float to an array and bumps a few integers: everything that
costs (sorting, percentiles, histograms) happens once per second in the reporter tick or
once at the end, so the generator's own CPU per request stays small.
"""

from __future__ import annotations

import math
from array import array
from typing import Sequence


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending sequence (pct in 0..100).

    Nearest rank never invents a value that was not measured, so p100 == max and a p99
    of 100 samples is the 99th smallest: what a benchmark report should show.
    """
    n = len(sorted_values)
    if n == 0:
        return math.nan
    if pct <= 0:
        return sorted_values[0]
    if pct >= 100:
        return sorted_values[-1]
    rank = math.ceil(pct / 100.0 * n)
    return sorted_values[max(rank, 1) - 1]


PCTS = (("p50", 50.0), ("p90", 90.0), ("p95", 95.0), ("p99", 99.0), ("p999", 99.9))


def summary_ms(sorted_seconds: Sequence[float]) -> dict:
    """{count, mean, p50, p90, p95, p99, p999, max, min} in milliseconds."""
    n = len(sorted_seconds)
    if n == 0:
        return {"count": 0}
    out = {"count": n, "min": round(sorted_seconds[0] * 1e3, 3)}
    out["mean"] = round(math.fsum(sorted_seconds) / n * 1e3, 3)
    for name, p in PCTS:
        out[name] = round(percentile(sorted_seconds, p) * 1e3, 3)
    out["max"] = round(sorted_seconds[-1] * 1e3, 3)
    return out


class LogHistogram:
    """Cumulative latency histogram with ~1% relative precision (log buckets).

    Only used for the live "p99 so far" on the progress line: folding one second's samples
    in costs ~0.3 us each, where re-sorting the whole run every second would not scale.
    """

    __slots__ = ("counts", "total", "_k")

    def __init__(self, precision: float = 0.01):
        self._k = 1.0 / math.log1p(precision)
        self.counts: dict[int, int] = {}
        self.total = 0

    def add_many(self, values) -> None:
        k = self._k
        counts = self.counts
        log = math.log
        for v in values:
            b = int(log(v * 1e6) * k) if v > 1e-6 else 0  # bucket over microseconds
            counts[b] = counts.get(b, 0) + 1
        self.total += len(values)

    def percentile(self, pct: float) -> float:
        """Upper edge of the bucket holding the nearest-rank sample, in seconds."""
        if not self.total:
            return math.nan
        rank = max(1, math.ceil(pct / 100.0 * self.total))
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= rank:
                return math.exp((b + 1) / self._k) / 1e6
        return math.nan


class Recorder:
    """Outcomes of measured requests: latencies (seconds) per completion second, counts.

    `ok`/`fail`/`transport_error` are called from the protocol callbacks. Each kind of
    request (limit, market, ioc, cancel) has its own latency array, and every response
    is counted by status so nothing is hidden behind an aggregate.
    """

    def __init__(self, kinds: Sequence[str]):
        self.kinds = tuple(kinds)
        self.latency_by_kind = {k: array("d") for k in self.kinds}
        self.status_by_kind: dict[str, dict] = {k: {} for k in self.kinds}
        self.transport_errors: dict[str, int] = {}
        self.error_samples: list[str] = []
        # current second (rotated by the reporter tick)
        self.cur = array("d")
        self.cur_acked = 0
        self.cur_errors = 0
        self.cur_expected = 0
        self.acked = 0
        self.errors = 0
        self.expected_rejects = 0
        self.completed = 0
        self.series: list[dict] = []
        self.hist = LogHistogram()

    # -- hot path
    def record(self, kind: str, status, latency: float, outcome: int) -> None:
        """outcome: 0 acked (2xx), 1 expected reject (cancel raced a fill), 2 error."""
        self.cur.append(latency)
        self.latency_by_kind[kind].append(latency)
        counts = self.status_by_kind[kind]
        counts[status] = counts.get(status, 0) + 1
        if outcome == 0:
            self.cur_acked += 1
        elif outcome == 1:
            self.cur_expected += 1
        else:
            self.cur_errors += 1

    def transport_error(self, what: str, n: int = 1, detail: str | None = None) -> None:
        self.transport_errors[what] = self.transport_errors.get(what, 0) + n
        self.cur_errors += n
        if detail and len(self.error_samples) < 20:
            self.error_samples.append(detail)

    def sample_error(self, detail: str) -> None:
        if len(self.error_samples) < 20:
            self.error_samples.append(detail)

    # -- once per second
    def rotate(self, t_offset: float, interval: float, keep_point: bool = True) -> dict:
        """Close the current second: returns its series point (kept in self.series unless
        keep_point is false: a final sliver of a second would plot as a bogus rate)."""
        lat = sorted(self.cur)
        self.hist.add_many(lat)
        point = {
            "t": round(t_offset, 3),
            "acked": self.cur_acked,
            "acked_per_s": round(self.cur_acked / interval, 1) if interval > 0 else 0.0,
            "responses": len(lat),
            "errors": self.cur_errors,
            "expected_rejects": self.cur_expected,
            "p50_ms": _ms(percentile(lat, 50)),
            "p99_ms": _ms(percentile(lat, 99)),
            "max_ms": _ms(lat[-1]) if lat else None,
        }
        self.acked += self.cur_acked
        self.errors += self.cur_errors
        self.expected_rejects += self.cur_expected
        self.completed += len(lat)
        self.cur = array("d")
        self.cur_acked = self.cur_errors = self.cur_expected = 0
        if keep_point:
            self.series.append(point)
        return point

    # -- at the end
    def totals(self) -> dict:
        all_lat = array("d")
        per_kind = {}
        for k in self.kinds:
            arr = self.latency_by_kind[k]
            all_lat.extend(arr)
            if len(arr):
                per_kind[k] = {
                    "latency_ms": summary_ms(sorted(arr)),
                    "status": {str(s): c for s, c in sorted(self.status_by_kind[k].items(), key=lambda x: str(x[0]))},
                }
        status: dict[str, int] = {}
        for k in self.kinds:
            for s, c in self.status_by_kind[k].items():
                status[str(s)] = status.get(str(s), 0) + c
        responses = sum(status.values())
        transport = sum(self.transport_errors.values())
        attempts = responses + transport
        return {
            "latency_ms": summary_ms(sorted(all_lat)),
            "by_kind": per_kind,
            "status": dict(sorted(status.items())),
            "transport_errors": dict(self.transport_errors),
            "responses": responses,
            "acked": self.acked,
            "errors": self.errors,
            "expected_rejects": self.expected_rejects,
            "error_rate": (self.errors / attempts) if attempts else 0.0,
            "error_samples": list(self.error_samples),
        }


def _ms(seconds: float):
    if seconds != seconds:  # nan: no samples this second
        return None
    return round(seconds * 1e3, 3)
