"""`make soak`: the whole pipeline at a steady rate for a long time, sampled every 10 s.

    python -m bench.soak --duration 1800 --rate 1000 --out docs/bench/soak.json --plot docs/bench/soak.png

Starts the run profile's stack (`python -m ops.stack up --profile run`, auth and rate limits off,
everything on 127.0.0.1), drives the command service with the load generator in open loop
(`python -m bench.loadgen --rate R`), and every --interval seconds samples:
- RSS (and PSS) and CPU seconds of every process: command, relay, query-1, query-2, the gateway,
  PostgreSQL (postmaster and all its backends), Redis, NATS, the Kafka-API broker;
- Redis used_memory, the PostgreSQL database size, open (resting) orders;
- p99 order latency (command service histogram, per interval) and p99 projection lag (query
  replicas' histograms, per interval), orders per second.
At the end: the targets (memory of every process and Redis within 10 % of minute 5, CPU per
order within 10 %, PostgreSQL bytes per order and its linearity, latency and lag trends), a JSON
result and a PNG plot. The stack is stopped again (only the processes this run started).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx
import redis.asyncio as aioredis

from ops.stack.config import REPO, SERVICES, config
from ops.stack.servers import server_pid

CLK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
SOAK_ENV = {"EXCHANGE_AUTH": "disabled", "EXCHANGE_RATE_LIMIT_PER_SECOND": "0", "EXCHANGE_MAX_OPEN_ORDERS": "0"}


# --------------------------------------------------------------------------- /proc


def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo and len(pids) < 1000:  # bounded
        p = todo.pop()
        pids.append(p)
        todo += _children(p)
    return pids


def _stat(pid: int) -> tuple[float, float] | None:
    """(own CPU seconds, reaped children's CPU seconds)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime) / CLK, (cutime + cstime) / CLK


def _mem(pid: int) -> tuple[int, int]:
    """(RSS bytes, PSS bytes); PSS shares PostgreSQL's shared buffers fairly among backends."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
    except OSError:
        try:
            with open(f"/proc/{pid}/statm") as f:
                rss = pss = int(f.read().split()[1]) * PAGE
        except OSError:
            pass
    return rss, pss


def process_sample(pid: int | None) -> dict | None:
    """Memory and CPU of a process with all its descendants (PostgreSQL's backends, nginx's
    workers). CPU includes the reaped children the root accounted for."""
    if pid is None:
        return None
    root = _stat(pid)
    if root is None:
        return None
    cpu = root[1]
    rss = pss = 0
    for p in _tree(pid):
        st = _stat(p)
        if st is None:
            continue
        cpu += st[0]
        r, s = _mem(p)
        rss += r
        pss += s
    return {"pid": pid, "rss": rss, "pss": pss, "cpu_s": cpu}


# --------------------------------------------------------------------------- metrics


_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$')


def parse_prom(text: str) -> list[tuple[str, dict, float]]:
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        try:
            out.append((m.group(1), labels, float(m.group(3))))
        except ValueError:
            pass
    return out


def buckets(samples, name: str) -> dict[float, float]:
    """Cumulative bucket counts of histogram `name` summed over all label sets."""
    out: dict[float, float] = {}
    for n, labels, v in samples:
        if n == name + "_bucket":
            le = float("inf") if labels["le"] == "+Inf" else float(labels["le"])
            out[le] = out.get(le, 0.0) + v
    return out


def total(samples, name: str) -> float:
    return sum(v for n, _l, v in samples if n == name)


def window_quantile(prev: dict[float, float], cur: dict[float, float], q: float) -> float | None:
    """q-quantile of the observations between two cumulative histograms (bucket upper bound)."""
    diff = sorted((le, cur.get(le, 0) - prev.get(le, 0)) for le in cur)
    count = diff[-1][1] if diff else 0
    if count <= 0:
        return None
    for le, c in diff:
        if c >= q * count:
            return le
    return diff[-1][0]


# --------------------------------------------------------------------------- run


class Soak:
    def __init__(self, args):
        self.a = args
        self.cfg = config("run")
        self.samples: list[dict] = []
        self.stack: subprocess.Popen | None = None
        self.loadgen: subprocess.Popen | None = None
        self._prev_hist: dict[str, dict] = {}

    def pids(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {}
        for name in SERVICES + ("gateway",):
            try:
                out[name] = int(self.cfg.pid_path(name).read_text().split()[0])
            except (OSError, ValueError, IndexError):
                out[name] = None
        for name in ("postgres", "redis", "nats", "kafka"):
            out[name] = server_pid(self.cfg, name)
        return out

    def start_stack(self) -> None:
        env = {**os.environ, **SOAK_ENV, "PYTHONUNBUFFERED": "1"}
        if self.a.topic_roll_s is not None:
            env["EXCHANGE_TOPIC_ROLL_S"] = str(self.a.topic_roll_s)
        if self.a.retention_s is not None:
            env["EXCHANGE_QUERY_RETENTION_S"] = str(self.a.retention_s)
        log = open(self.a.out.with_suffix(".stack.log"), "w")
        self.stack = subprocess.Popen([sys.executable, "-m", "ops.stack", "up", "--profile", "run", "--fresh"], cwd=REPO,
                                      env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    async def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        urls = [self.cfg.command_url + "/healthz"] + [u + "/healthz" for u in self.cfg.query_urls]
        async with httpx.AsyncClient() as client:
            while True:
                if self.stack.poll() is not None:
                    raise RuntimeError(f"the stack exited ({self.stack.returncode}); see {self.a.out.with_suffix('.stack.log')}")
                try:
                    codes = [(await client.get(u, timeout=2)).status_code for u in urls]
                    if all(c == 200 for c in codes):
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("stack not healthy")
                await asyncio.sleep(1)

    def start_loadgen(self) -> None:
        argv = [sys.executable, "-m", "bench.loadgen", "--mode", "http", "--url", self.cfg.command_url,
                "--rate", str(self.a.rate), "--duration", str(self.a.duration), "--warmup", "0",
                "--mix", self.a.mix, "--connections", "64", "--quiet", "--max-error-rate", "0.01",
                "--out", str(self.a.out.with_suffix(".loadgen.json")), "--label", "soak"]
        log = open(self.a.out.with_suffix(".loadgen.log"), "w")
        self.loadgen = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    async def scrape(self, client: httpx.AsyncClient, url: str):
        try:
            return parse_prom((await client.get(url + "/metrics", timeout=3)).text)
        except httpx.HTTPError:
            return []

    async def sample(self, t0: float, client, redis, pg) -> dict:
        t = time.monotonic() - t0
        procs = {name: process_sample(pid) for name, pid in self.pids().items()}
        cmd = await self.scrape(client, self.cfg.command_url)
        queries = [await self.scrape(client, u) for u in self.cfg.query_urls]
        lat = buckets(cmd, "order_latency_seconds")
        lag: dict[float, float] = {}
        for q in queries:
            for le, v in buckets(q, "projection_lag_seconds").items():
                lag[le] = lag.get(le, 0) + v
        s = {
            "t": round(t, 1),
            "procs": procs,
            # Commands (orders and cancels): every one passes the sequencer's latency histogram.
            "orders": total(cmd, "order_latency_seconds_count"),
            "open_orders": total(cmd, "resting_orders"),
            "p99_latency_ms": _ms(window_quantile(self._prev_hist.get("lat", {}), lat, 0.99)),
            "p99_lag_ms": _ms(window_quantile(self._prev_hist.get("lag", {}), lag, 0.99)),
        }
        self._prev_hist = {"lat": lat, "lag": lag}
        try:
            s["redis_used_memory"] = int((await redis.info("memory"))["used_memory"])
        except Exception:
            s["redis_used_memory"] = None
        try:
            s["pg_db_bytes"] = int(await pg.fetchval("SELECT pg_database_size(current_database())"))
        except Exception:
            s["pg_db_bytes"] = None
        if self.samples:
            prev = self.samples[-1]
            dt = s["t"] - prev["t"]
            s["orders_per_s"] = round((s["orders"] - prev["orders"]) / dt, 1) if dt > 0 else None
        return s

    async def run(self) -> dict:
        self.start_stack()
        try:
            await self.wait_ready()
            await asyncio.sleep(3)  # demo keys, first group joins
            pg = await asyncpg.connect(self.cfg.pg_dsn)
            redis = aioredis.Redis.from_url(self.cfg.redis_url)
            async with httpx.AsyncClient() as client:
                t0 = time.monotonic()
                self.start_loadgen()
                n = int(self.a.duration / self.a.interval) + 1
                for i in range(n + 1):  # bounded: one sample per interval, plus the first
                    self.samples.append(await self.sample(t0, client, redis, pg))
                    last = self.samples[-1]
                    p = last["procs"]
                    print(f"[soak] t={last['t']:6.0f}s orders={last['orders']:.0f} "
                          f"open={last['open_orders']:.0f} p99={last['p99_latency_ms']} lag99={last['p99_lag_ms']} "
                          f"kafka_rss={_mb(p.get('kafka'))} redis={_mb_v(last['redis_used_memory'])} "
                          f"pg={_mb_v(last['pg_db_bytes'])}", flush=True)
                    if self.loadgen.poll() is not None and i < n - 1:
                        print(f"[soak] load generator exited early ({self.loadgen.returncode})", flush=True)
                        break
                    await asyncio.sleep(max(0.0, t0 + (i + 1) * self.a.interval - time.monotonic()))
            await pg.close()
            await redis.aclose()
            try:
                self.loadgen.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.loadgen.terminate()
        finally:
            if self.loadgen is not None and self.loadgen.poll() is None:
                os.killpg(self.loadgen.pid, signal.SIGTERM)
            self.stop_stack()
        return self.result()

    def stop_stack(self) -> None:
        if self.stack is not None and self.stack.poll() is None:
            os.killpg(self.stack.pid, signal.SIGINT)  # the supervisor stops what it started
            try:
                self.stack.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(self.stack.pid, signal.SIGTERM)
                self.stack.wait(timeout=30)

    # ----------------------------------------------------------------- analysis

    def result(self) -> dict:
        a = self.a
        loadgen = {}
        try:
            loadgen = json.loads(a.out.with_suffix(".loadgen.json").read_text()).get("summary", {})
        except (OSError, ValueError):
            pass
        return {"config": {"rate": a.rate, "duration_s": a.duration, "interval_s": a.interval, "mix": a.mix,
                           "warmup_s": a.warmup, "topic_roll_s": a.topic_roll_s,
                           "retention_s": a.retention_s},
                "targets": targets(self.samples, a.warmup), "loadgen": loadgen, "samples": self.samples}


def _ms(v):
    return None if v is None else (round(v * 1000, 2) if v != float("inf") else "inf")


def _mb(p):
    return "-" if not p else f"{p['rss'] / 1e6:.0f}MB"


def _mb_v(v):
    return "-" if v is None else f"{v / 1e6:.1f}MB"


def _slope(xs, ys):
    n = len(xs)
    if n < 2:
        return 0.0, 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    syy = sum((y - my) ** 2 for y in ys)
    b = sxy / sxx if sxx else 0.0
    r2 = (sxy * sxy / (sxx * syy)) if sxx and syy else 1.0
    return b, r2


def _minutes(samples, start_s):
    """Samples grouped per whole minute from start_s on: {minute index: [samples]}. The last
    minute is left out when it is partial (the load generator stopping): fewer orders over the
    same fixed per-second costs would read as a rise in CPU per order."""
    out: dict[int, list] = {}
    for s in samples:
        if s["t"] >= start_s:
            out.setdefault(int(s["t"] // 60), []).append(s)
    if len(out) > 1:
        last = max(out)
        span = out[last][-1]["t"] - out[last][0]["t"]
        if span < 40:  # samples every 10 s: a whole minute spans 50 s
            del out[last]
    return out


def targets(samples: list[dict], warmup_s: float) -> dict:
    """The soak targets, evaluated per whole minute after warm-up against the minute that
    starts at warmup_s (minute 5 by default). Memory: the minute's mean (a rolling broker
    is a saw-tooth of one roll period, so a single sample says little), and the largest
    single sample too. CPU per order: CPU seconds over orders within the minute."""
    ref_min = int(warmup_s // 60)
    mins = _minutes(samples, ref_min * 60)
    if ref_min not in mins or len(mins) < 2:
        return {"error": "run too short for the targets"}
    names = sorted({n for s in samples for n, p in s["procs"].items() if p})
    out: dict = {"reference_minute": ref_min, "memory": {}, "cpu_per_order": {}}

    def mean(xs):
        xs = [x for x in xs if x is not None]
        return sum(xs) / len(xs) if xs else None

    def minute_mem(ss, name):
        # PSS: PostgreSQL's shared buffers count once, not once per backend (RSS would).
        return mean([s["procs"][name]["pss"] for s in ss if s["procs"].get(name)])

    def minute_cpu_per_order(ss_prev_last, ss, name):
        first = ss_prev_last
        last = ss[-1]
        if not first or not first["procs"].get(name) or not last["procs"].get(name):
            return None
        if first["procs"][name]["pid"] != last["procs"][name]["pid"]:
            return None  # restarted within the minute
        orders = last["orders"] - first["orders"]
        return (last["procs"][name]["cpu_s"] - first["procs"][name]["cpu_s"]) / orders * 1e6 if orders > 0 else None

    keys = sorted(mins)
    all_sorted = samples
    for name in names + ["redis_used_memory"]:
        per_min = {}
        for m in keys:
            if name == "redis_used_memory":
                per_min[m] = mean([s["redis_used_memory"] for s in mins[m]])
            else:
                per_min[m] = minute_mem(mins[m], name)
        ref = per_min.get(ref_min)
        if not ref:
            continue
        devs = {m: (v / ref - 1) * 100 for m, v in per_min.items() if v}
        if name == "redis_used_memory":
            peak = max(s["redis_used_memory"] or 0 for m in keys for s in mins[m])
        else:
            peak = max((s["procs"][name]["pss"] for m in keys for s in mins[m] if s["procs"].get(name)), default=0)
        out["memory"][name] = {
            "minute5_mb": round(ref / 1e6, 1),  # PSS (RSS for Redis' own figure)
            "last_minute_mb": round(per_min[keys[-1]] / 1e6, 1),
            "max_dev_pct": round(max(devs.values(), key=abs), 1),
            "peak_sample_mb": round(peak / 1e6, 1),
            "within_10pct": all(abs(d) <= 10 for d in devs.values()),
        }
    for name in names:
        per_min = {}
        for m in keys:
            ss = mins[m]
            idx = all_sorted.index(ss[0])
            prev_last = all_sorted[idx - 1] if idx > 0 else None
            per_min[m] = minute_cpu_per_order(prev_last, ss, name)
        ref = per_min.get(ref_min)
        if not ref:
            continue
        devs = {m: (v / ref - 1) * 100 for m, v in per_min.items() if v}
        out["cpu_per_order"][name] = {
            "minute5_us": round(ref, 1),
            "last_minute_us": round(per_min[keys[-1]], 1) if per_min[keys[-1]] else None,
            "max_dev_pct": round(max(devs.values(), key=abs), 1),
            "within_10pct": all(abs(d) <= 10 for d in devs.values()),
        }
    pg = [(s["orders"], s["pg_db_bytes"]) for s in samples if s["t"] >= warmup_s and s.get("pg_db_bytes")]
    if len(pg) > 2:
        b, r2 = _slope([o for o, _ in pg], [v for _, v in pg])
        out["pg"] = {"bytes_per_order": round(b, 1), "r2": round(r2, 4), "linear": r2 >= 0.98}
    for key in ("p99_latency_ms", "p99_lag_ms", "open_orders"):
        pts = [(s["t"], s[key]) for s in samples if s["t"] >= warmup_s and isinstance(s.get(key), (int, float))]
        if len(pts) > 2:
            b, _ = _slope([t for t, _ in pts], [v for _, v in pts])
            first5 = [v for t, v in pts if t < pts[0][0] + 300]
            last5 = [v for t, v in pts if t > pts[-1][0] - 300]
            out[key] = {
                "slope_per_10min": round(b * 600, 3),
                "mean_first_5min": round(mean(first5), 2),
                "mean_last_5min": round(mean(last5), 2),
                "max": max(v for _, v in pts),
            }
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    t = [s["t"] / 60 for s in samples]
    names = sorted({n for s in samples for n, p in s["procs"].items() if p})
    fig, axes = plt.subplots(4, 1, figsize=(11, 14), sharex=True)
    ax = axes[0]
    for n in names:
        ax.plot(t, [s["procs"][n]["pss"] / 1e6 if s["procs"].get(n) else None for s in samples], label=n)
    ax.plot(t, [(s["redis_used_memory"] or 0) / 1e6 for s in samples], "k--", label="redis used_memory")
    ax.set_ylabel("PSS MB (log)")
    ax.set_yscale("log")
    ax3 = ax.twinx()
    ax3.plot(t, [s.get("orders_per_s") for s in samples], color="0.6", linewidth=0.8, label="commands/s")
    ax3.set_ylabel("commands/s")
    ax3.legend(loc="lower right", fontsize=7)
    ax.legend(fontsize=7, ncol=3)
    ax.set_title(f"soak: {result['config']['rate']}/s offered for {result['config']['duration_s'] / 60:.0f} min")
    ax = axes[1]
    for n in names:
        ys = [None]
        for a, b in zip(samples, samples[1:]):
            pa, pb = a["procs"].get(n), b["procs"].get(n)
            d = b["orders"] - a["orders"]
            ys.append((pb["cpu_s"] - pa["cpu_s"]) / d * 1e6 if pa and pb and d > 0 and pa["pid"] == pb["pid"] else None)
        ax.plot(t, ys, label=n)
    ax.set_ylabel("CPU us per order")
    ax.set_yscale("log")
    ax.legend(fontsize=7, ncol=3)
    ax = axes[2]
    ax.plot(t, [s.get("p99_latency_ms") if isinstance(s.get("p99_latency_ms"), (int, float)) else None for s in samples], label="p99 order latency (command)")
    ax.plot(t, [s.get("p99_lag_ms") if isinstance(s.get("p99_lag_ms"), (int, float)) else None for s in samples], label="p99 projection lag")
    ax.set_ylabel("ms (per 10 s)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax = axes[3]
    ax.plot(t, [(s["pg_db_bytes"] or 0) / 1e6 for s in samples], label="PostgreSQL database MB")
    ax.set_ylabel("PostgreSQL MB")
    ax2 = ax.twinx()
    ax2.plot(t, [s["open_orders"] for s in samples], "g:", label="open orders")
    ax2.set_ylabel("open orders")
    ax.legend(loc="upper left", fontsize=7)
    ax2.legend(loc="lower right", fontsize=7)
    ax.set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=float(os.environ.get("SOAK_DURATION", 1800)))
    ap.add_argument("--rate", type=float, default=float(os.environ.get("SOAK_RATE", 1000)))
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=300.0, help="the reference minute starts here (minute 5)")
    ap.add_argument("--retention-s", type=float, default=180.0,
                    help="EXCHANGE_QUERY_RETENTION_S for the run: short, so Redis reaches its steady state within "
                         "the warm-up (the default 24 h would take a day)")
    ap.add_argument("--mix", default="limit=40,cancel=47,market=8,ioc=5",
                    help="load generator mix; cancels balance resting limits so open orders stay level")
    ap.add_argument("--topic-roll-s", type=float, default=None, help="EXCHANGE_TOPIC_ROLL_S (0 = no rolling)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "bench" / "soak.json")
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--replot", type=Path, default=None, help="recompute targets and plot of an earlier result")
    a = ap.parse_args()
    if a.replot:
        result = json.loads(a.replot.read_text())
        result["targets"] = targets(result["samples"], result["config"]["warmup_s"])
        a.replot.write_text(json.dumps(result, indent=1))
        plot(result, a.replot.with_suffix(".png"))
        print(json.dumps(result["targets"], indent=1))
        return
    a.out.parent.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(Soak(a).run())
    a.out.write_text(json.dumps(result, indent=1))
    plot(result, a.plot or a.out.with_suffix(".png"))
    print(json.dumps(result["targets"], indent=1))
    print(f"[soak] result {a.out}, plot {a.plot or a.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
