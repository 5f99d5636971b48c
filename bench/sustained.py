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


class LagSampler:
    """Samples the projection lag (max of projection_lag_events over the replicas and instruments,
    and the age of the newest applied event) every `every` seconds while a run goes on."""

    def __init__(self, query_urls: list[str], every: float = 1.0):
        self.urls = query_urls
        self.every = every
        self.samples: list[tuple[float, float]] = []  # (seconds since start, lag in events)
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        t0 = time.monotonic()
        async with httpx.AsyncClient(timeout=2) as client:
            while True:
                worst = 0.0
                for url in self.urls:
                    try:
                        text = (await client.get(url + "/metrics")).text
                    except httpx.HTTPError:
                        continue
                    for v in re.findall(r"^projection_lag_events\{[^}]*\}\s+(\S+)", text, re.M):
                        worst = max(worst, float(v))
                self.samples.append((time.monotonic() - t0, worst))
                await asyncio.sleep(self.every)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> list[tuple[float, float]]:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        return self.samples


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


def plot_run(result: dict, lag: list[tuple[float, float]], path: Path, title: str) -> None:
    """Throughput, latency p99 and projection lag over the run, one panel each."""
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
    axes[2].plot([s for s, _ in lag], [v for _, v in lag], lw=0.8, color="tab:red")
    axes[2].set_ylabel("projection lag, events")
    axes[2].set_xlabel("seconds")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


class CpuSampler:
    """CPU seconds of every named process tree (bench.cpu.tree_cpu), sampled every `every`
    seconds with the wall-clock time, so that a run's CPU can be cut per minute: a process whose
    cost per order grows with the book or with time shows itself as a rising row."""

    def __init__(self, roots: dict[str, int], every: float = 5.0):
        self.roots = {name: pid for name, pid in roots.items() if pid}
        self.every = every
        self.samples: list[tuple[float, dict[str, float]]] = []  # (time.time(), CPU s per root)
        self._task: asyncio.Task | None = None

    def sample(self) -> None:
        self.samples.append((time.time(), {n: tree_cpu(p) for n, p in self.roots.items()}))

    async def _run(self) -> None:
        while True:
            await asyncio.to_thread(self.sample)
            await asyncio.sleep(self.every)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> list[tuple[float, dict[str, float]]]:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
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


def cpu_per_minute(result: dict, sampler: CpuSampler, minutes: list[dict]) -> list[dict[str, float]]:
    """CPU us per acked order of every process for each minute of `minutes` (per_minute's output),
    the load generator's own from its per-second CPU share. The measured window starts `warmup`
    seconds after the generator's start (`started_at`)."""
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
    return out
