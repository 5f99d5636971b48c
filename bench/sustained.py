"""Helpers of the scenarios users live in: a journal seeded with resting orders, projection lag
sampled while a run goes on, and the per-minute view of a long run with its plot."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import asyncpg
import httpx

from bench.cpu import tree_cpu
from contracts.enums import OrderType, Side, StpMode, TimeInForce
from contracts.messages import OrderAccepted, encode_event

MID_TICKS = 6_000_000  # BTC-USD 60,000.00: the seeded book sits around it


async def seed_resting(dsn: str, n: int, say) -> None:
    """n accepted, non-crossing BTC-USD limit orders in the journal (COPY), 5,000 levels a side."""
    conn = await asyncpg.connect(dsn)
    try:
        ts0 = time.time_ns()

        def rows(start, stop):
            for i in range(start, stop):
                buy = i % 2 == 0
                price = MID_TICKS - 1 - (i // 2 % 5000) if buy else MID_TICKS + 1 + (i // 2 % 5000)
                e = OrderAccepted(instrument="BTC-USD", seq=i + 1, ts=ts0 + i, order_id=f"r-{i}",
                                  client_id=f"c{i % 1000}", side=Side.BUY if buy else Side.SELL,
                                  order_type=OrderType.LIMIT, price=price, quantity=1_000_000 + i % 997,
                                  tif=TimeInForce.GTC, post_only=False, stp=StpMode.CANCEL_NEWEST)
                yield ("BTC-USD", i + 1, "order_accepted", e.ts, encode_event(e))

        for start in range(0, n, 100_000):
            await conn.copy_records_to_table("events", records=rows(start, min(n, start + 100_000)),
                                             columns=["instrument", "seq", "type", "ts", "payload"])
            say(f"  seeded {min(n, start + 100_000):,} / {n:,} resting orders")
    finally:
        await conn.close()


async def _cancel(task: asyncio.Task | None) -> None:
    """Stop a sampler's loop and wait for it."""
    if task is not None:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


class LagSampler:
    """Samples the projection lag every `every` seconds while a run goes on: the events behind
    (max of projection_lag_events over the replicas and instruments) and the p99 of the lag in
    time (projection_lag_seconds: event ts to its view update, both replicas' histograms summed)
    over the interval since the previous sample - None when no event was projected in it."""

    def __init__(self, query_urls: list[str], every: float = 0.5):
        self.urls = query_urls
        self.every = every
        self.samples: list[tuple[float, float]] = []  # (seconds since start, lag in events)
        self.p99_ms: list[tuple[float, float | None]] = []  # (seconds since start, interval lag p99, ms)
        self.t0 = time.monotonic()
        self.wall_t0 = time.time()
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        previous: dict[float, float] | None = None
        async with httpx.AsyncClient(timeout=2) as client:
            while True:
                worst = 0.0
                buckets: dict[float, float] = {}
                for url in self.urls:
                    try:
                        text = (await client.get(url + "/metrics")).text
                    except httpx.HTTPError:
                        continue
                    for v in re.findall(r"^projection_lag_events\{[^}]*\}\s+(\S+)", text, re.M):
                        worst = max(worst, float(v))
                    for le, v in re.findall(r'^projection_lag_seconds_bucket\{[^}]*le="([^"]+)"\}\s+(\S+)', text, re.M):
                        bound = float("inf") if le == "+Inf" else float(le)
                        buckets[bound] = buckets.get(bound, 0.0) + float(v)
                t = time.monotonic() - self.t0
                self.samples.append((t, worst))
                if previous is not None:
                    self.p99_ms.append((t, interval_p99_ms(previous, buckets)))
                previous = buckets
                await asyncio.sleep(self.every)

    def start(self) -> None:
        self.t0, self.wall_t0 = time.monotonic(), time.time()
        self._task = asyncio.create_task(self._run())

    def on_run_clock(self, result: dict) -> tuple[list[tuple[float, float]], list[tuple[float, float | None]]]:
        """The samples shifted onto the load generator's clock (its series: seconds since the
        measured window began, i.e. its start plus the warm-up)."""
        started = datetime.fromisoformat(result["started_at"].replace("Z", "+00:00")).timestamp()
        shift = started + float(result["config"].get("warmup") or 0.0) - self.wall_t0
        return ([(t - shift, v) for t, v in self.samples], [(t - shift, v) for t, v in self.p99_ms])

    def now(self) -> float:
        """Seconds since start(), on the samples' clock."""
        return time.monotonic() - self.t0

    async def stop(self) -> list[tuple[float, float]]:
        await _cancel(self._task)
        return self.samples


def interval_p99_ms(before: dict[float, float], after: dict[float, float]) -> float | None:
    """p99 (a bucket bound, ms) of the observations between two cumulative histogram scrapes."""
    diff = {le: after[le] - before.get(le, 0.0) for le in after}
    total = diff.get(float("inf"), 0.0)
    if total <= 0:
        return None
    for le in sorted(diff):
        if diff[le] >= 0.99 * total:
            return le * 1000
    return None


def settle_s(p99_ms: list[tuple[float, float | None]], load_end: float, bound_ms: float = 50.0) -> float | None:
    """Seconds from the end of the load until the projection lag is back under `bound_ms`: the
    end of the first interval after it whose lag p99 is under the bound (or that projected
    nothing: caught up). None if that never happened while sampling."""
    for t, p in p99_ms:
        if t > load_end and (p is None or p <= bound_ms):
            return t - load_end
    return None


def per_minute(series: list[dict]) -> list[dict]:
    """The load generator's per-second series as minutes: acked/s (mean) and p99 (the 99th
    percentile of the seconds' p99s, a conservative stand-in for the minute's p99)."""
    minutes: dict[int, list[dict]] = {}
    for point in series:
        minutes.setdefault(int(max(point["t"] - 1e-6, 0) // 60), []).append(point)  # t is a second's end
    out = []
    for m in sorted(minutes):
        pts = minutes[m]
        if m and m == max(minutes) and len(pts) < 55:
            continue  # a partial last minute (the run's end) would read as a drop
        p99s = sorted(p["p99_ms"] for p in pts if p.get("p99_ms") is not None)
        out.append({
            "minute": m + 1,
            "acked_per_s": sum(p["acked_per_s"] for p in pts) / len(pts),
            "p99_ms": p99s[min(len(p99s) - 1, int(0.99 * len(p99s)))] if p99s else None,
        })
    return out


def plot_run(result: dict, lag: list[tuple[float, float]], path: Path, title: str,
             lag_ms: list[tuple[float, float | None]] | None = None, load_end: float | None = None) -> None:
    """Throughput, latency and projection lag over the run, one panel each (lag in events and,
    when sampled, its p99 in ms per interval on the right axis; the end of the load marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = result["series"]
    t = [p["t"] for p in series]
    fig, axes = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    axes[0].plot(t, [p["acked_per_s"] for p in series], lw=0.8)
    axes[0].set_ylabel("acked orders/s")
    axes[1].plot(t, [p.get("p99_ms") for p in series], lw=0.8, label="p99")
    axes[1].plot(t, [p.get("p50_ms") for p in series], lw=0.8, label="p50")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("order latency, ms")
    axes[1].legend()
    axes[2].plot([s for s, _ in lag], [v for _, v in lag], lw=0.8, color="tab:red", label="events behind")
    axes[2].set_ylabel("projection lag, events")
    if lag_ms:
        right = axes[2].twinx()
        right.step([s for s, _ in lag_ms], [v if v is not None else float("nan") for _, v in lag_ms],
                   where="post", lw=0.8, color="tab:purple", label="lag p99 per interval, ms")
        right.axhline(50, color="tab:purple", lw=0.5, ls=":")
        right.set_ylabel("projection lag p99, ms")
        right.legend(loc="upper right")
    if load_end is not None:
        for ax in axes:
            ax.axvline(load_end, color="grey", lw=0.6, ls="--")
    axes[2].set_xlabel("seconds of the measured window (its end dashed)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


class CpuSampler:
    """CPU seconds of every named process tree (bench.cpu.tree_cpu), sampled every `every`
    seconds with the wall-clock time, so that a run's CPU can be cut per minute: a process whose
    cost per order grows with the book or with time shows itself as a rising row."""

    def __init__(self, roots: dict[str, int], every: float = 5.0, metrics_url: str | None = None):
        self.roots = {name: pid for name, pid in roots.items() if pid}
        self.every = every
        self.metrics_url = metrics_url  # the command service's /metrics: resting orders per sample
        self.samples: list[tuple[float, dict[str, float]]] = []  # (time.time(), CPU s per root)
        self.resting: list[tuple[float, int]] = []  # (time.time(), resting orders of every book)
        self._task: asyncio.Task | None = None

    def sample(self) -> None:
        now = time.time()
        self.samples.append((now, {n: tree_cpu(p) for n, p in self.roots.items()}))
        if self.metrics_url:
            try:
                text = httpx.get(self.metrics_url, timeout=2).text
            except httpx.HTTPError:
                return
            found = re.findall(r"^resting_orders\{[^}]*\}\s+(\S+)", text, re.M)
            if found:
                self.resting.append((now, int(sum(float(v) for v in found))))

    def resting_at(self, t: float) -> int | None:
        """Resting orders in the books at the last sample at or before wall time t."""
        before = [n for ts, n in self.resting if ts <= t]
        return before[-1] if before else (self.resting[0][1] if self.resting else None)

    async def _run(self) -> None:
        while True:
            await asyncio.to_thread(self.sample)
            await asyncio.sleep(self.every)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> list[tuple[float, dict[str, float]]]:
        await _cancel(self._task)
        self.sample()
        return self.samples

    def at(self, t: float) -> dict[str, float]:
        """CPU seconds per root at wall time t, linear between the two samples around it."""
        s = self.samples
        if t <= s[0][0]:
            return s[0][1]
        for (t0, a), (t1, b) in zip(s, s[1:]):
            if t0 <= t <= t1:
                f = (t - t0) / (t1 - t0) if t1 > t0 else 1.0
                return {n: a[n] + (b[n] - a[n]) * f for n in a}
        return s[-1][1]


def probe_work() -> int:
    """A fixed pure-Python workload (dict stores and integer arithmetic, ~9 ms on this VM idle)."""
    d: dict[int, int] = {}
    for i in range(60_000):
        d[i * 7 % 1009] = i
    s = 0
    for i in range(100_000):
        s += i * i % 13
    return s + len(d)


class SpeedProbe:
    """The machine's own speed during a run: the CPU time (not wall time) that `probe_work` takes,
    best of 3, every `every` seconds. On a VM whose neighbours or memory traffic slow every process
    alike, this rises with every process's CPU per order; a cost that grows in our code does not
    move it."""

    def __init__(self, every: float = 10.0):
        self.every = every
        self.samples: list[tuple[float, float]] = []  # (time.time(), CPU ms of probe_work)
        self._task: asyncio.Task | None = None

    @staticmethod
    def measure() -> float:
        best = float("inf")
        for _ in range(3):
            c0 = time.thread_time()
            probe_work()
            best = min(best, time.thread_time() - c0)
        return best * 1000

    async def _run(self) -> None:
        while True:
            ms = await asyncio.to_thread(self.measure)
            self.samples.append((time.time(), ms))
            await asyncio.sleep(self.every)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        await _cancel(self._task)

    def between(self, lo: float, hi: float) -> float | None:
        """Median probe CPU ms of the samples taken in [lo, hi) (wall time)."""
        inside = sorted(ms for t, ms in self.samples if lo <= t < hi)
        return inside[len(inside) // 2] if inside else None


def cpu_per_minute(result: dict, sampler: CpuSampler, minutes: list[dict],
                   probe: SpeedProbe | None = None) -> list[dict[str, float]]:
    """CPU us per acked order of every process for each minute of `minutes` (per_minute's output),
    the load generator's own from its per-second CPU share. The measured window starts `warmup`
    seconds after the generator's start (`started_at`). Each minute also gets `resting` (orders in
    the books at its end) and, with a probe, `probe_ms` (the machine's speed in that minute)."""
    t0 = datetime.strptime(result["started_at"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=timezone.utc).timestamp() + result["config"]["warmup"]
    out = []
    for m in minutes:
        lo, hi = (m["minute"] - 1) * 60, m["minute"] * 60
        pts = [p for p in result["series"] if lo < p["t"] <= hi]
        acked = sum(p["acked"] for p in pts)
        a, b = sampler.at(t0 + lo), sampler.at(t0 + hi)
        row = {n: (b[n] - a[n]) * 1e6 / acked if acked else float("nan") for n in a}
        row["load generator"] = sum(p.get("client_cpu_pct") or 0.0 for p in pts) / 100 * 1e6 / acked if acked else 0.0
        out.append(row)
        m["resting"] = sampler.resting_at(t0 + hi)
        if probe is not None:
            m["probe_ms"] = probe.between(t0 + lo, t0 + hi)
    return out
