"""`make bench`: the exchange's benchmarks on this machine, written to docs/BENCHMARKS.md.

Runs inside `python -m ops.stack with-servers --profile test --fresh` (PostgreSQL with fsync and
synchronous_commit on, Redis, NATS, Tansu), starts the services itself with benchmark
settings (EXCHANGE_AUTH=disabled, rate limits off: EXCHANGE_RATE_LIMIT_PER_SECOND=0 and
EXCHANGE_READ_RATE_LIMIT_PER_SECOND=0), and
drives them with bench.loadgen, all on the same 2 cores. Scenarios (all by default):

  command   command service alone: HTTP closed loop (64 connections), WebSocket, and an
            open-loop HTTP run at 2,000 orders/s offered (p99)
  pipeline  the whole system (command, relay, two query replicas): HTTP closed loop and
            2,000/s open loop with order-to-visible probes (REST book and /stream trade),
            projection lag from the query service's histogram
  query     GET /market/orderbook throughput on one query replica (wrk)
  fanout    WebSocket fan-out to 1,000 /stream subscribers while orders flow
  recovery  command service start-up with 1,000,000 resting orders: journal replay, then
            snapshot + replay; time to ready and RSS
  cpu       the whole pipeline at a fixed offered rate over HTTP and over WebSocket: CPU microseconds
            per acknowledged order for every process (the map of where an order's cost goes)
  users     what users see, through the gateway with the whole pipeline: one hot instrument (BTC-USD)
            with idempotency keys on half the orders (64 connections), and 256 WebSocket clients with
            one request in flight each; projection lag over each run, plotted
  sustained a long closed-loop run (--sustained-minutes, 10) through the gateway on a book that
            already holds --sustained-resting (200,000) orders: throughput and p99 per minute
  nodes     one vs two command nodes through the gateway (issue 14): HTTP and WS at a fixed offered rate,
            throughput, p99 and CPU microseconds per acknowledged and per forwarded order
  takeover  kill -9 of the command node that owns every instrument (each with --takeover-resting resting
            orders) under --takeover-rate orders/s through the gateway: per instrument the time until it
            accepts orders again (target p99 <= 3 s), latency over time, 0 acknowledged orders lost
            (bench/takeover.py)
  engine    `python -m bench.engine` (its own section)
  relay     `python -m bench.relay` (its own section)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx

from bench.cpu import CpuMeter, per_order_table
from bench.doc import machine_line, today, write_section
from bench.sustained import (
    CpuSampler,
    LagSampler,
    SpeedProbe,
    cpu_per_minute,
    per_minute,
    plot_run,
    seed_resting,
    settle_s,
)
from ops import stack

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "bench"
# EXCHANGE_MAX_OPEN_ORDERS=0: the load generator's clients keep resting orders without a bound (the
# per-order check itself runs either way: one dict lookup); notional/position limits stay as configured.
BENCH_ENV = {"EXCHANGE_AUTH": "disabled", "EXCHANGE_RATE_LIMIT_PER_SECOND": "0",
             "EXCHANGE_READ_RATE_LIMIT_PER_SECOND": "0", "EXCHANGE_MAX_OPEN_ORDERS": "0"}
SCENARIOS = ("command", "pipeline", "cpu", "users", "sustained", "query", "fanout", "recovery", "nodes", "takeover",
             "engine", "relay")


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Services:
    """Services of the test profile started for one scenario, stopped afterwards."""

    def __init__(self, topic: str):
        self.cfg = stack.config("test")
        self.topic = topic
        self.procs: dict[str, subprocess.Popen] = {}
        self.gateway = False

    async def start(self, *names: str, **overrides: str) -> None:
        # A topic and a consumer group of its own per scenario: the scenarios must not
        # inherit each other's group state on the broker (Tansu can stop completing
        # rebalances of a group whose members were restarted several times).
        env = stack.service_env(self.cfg, EXCHANGE_KAFKA_TOPIC=self.topic, EXCHANGE_QUERY_GROUP=f"group.{self.topic}",
                                **{**BENCH_ENV, **overrides})
        for name in names:
            if name != "gateway":
                self.procs[name] = stack.spawn(name, env, profile=self.cfg, new_session=True)
        urls = []
        if "command" in names:
            urls.append(self.cfg.command_url)
        for i, url in enumerate(self.cfg.query_urls, 1):
            if f"query-{i}" in names:
                urls.append(url)
        for url in urls:
            await wait_ok(url + "/healthz", 300)  # a seeded journal of 600,000 events replays in > 60 s
        if "gateway" in names:
            stack.start_gateway(self.cfg)
            self.gateway = True

    def stop(self) -> None:
        for proc in self.procs.values():
            stack.stop_process(proc)
        self.procs.clear()
        if self.gateway:
            stack.stop_gateway(self.cfg)
            self.gateway = False


async def wait_ok(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(url, timeout=2)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} not healthy after {timeout}s")


async def reset_state() -> None:
    conn = await asyncpg.connect(os.environ["EXCHANGE_PG_DSN"])
    try:
        await conn.execute("TRUNCATE events, orders, idempotency, snapshots, relay_cursors, fills")
    finally:
        await conn.close()
    import redis.asyncio as aioredis

    r = aioredis.from_url(os.environ["EXCHANGE_REDIS_URL"])
    await r.flushall()
    await r.aclose()


def loadgen(name: str, *args: str) -> dict:
    """Run the load generator as its own process (its CPU is then its own) and load its JSON."""
    OUT.mkdir(parents=True, exist_ok=True)
    out, plot = OUT / f"{name}.json", OUT / f"{name}.png"
    # paths relative to the repository (cwd): the command is recorded in docs/BENCHMARKS.md
    cmd = [sys.executable, "-m", "bench.loadgen", *args, "--out", str(out.relative_to(ROOT)),
           "--plot", str(plot.relative_to(ROOT)), "--label", name]
    say("$ " + " ".join(cmd[1:]))
    out.unlink(missing_ok=True)
    rc = subprocess.run(cmd, cwd=ROOT, check=False).returncode
    if not out.exists():
        raise RuntimeError(f"load generator run {name!r} could not start (exit {rc}); see its output above")
    result = json.loads(out.read_text())
    if rc != 0:
        say(f"WARNING: {name} did not pass (exit {rc}): {result.get('fail_reasons')}")
    result["_command"] = "python " + " ".join(cmd[1:])
    result["_plot"] = str(plot.relative_to(ROOT))
    return result


def lat(r: dict, key: str = "latency_ms") -> dict:
    return r["summary"][key]


def row(name: str, r: dict, offered: str = "closed loop") -> str:
    s = r["summary"]
    l = s["latency_ms"]
    if l.get("p50") is None:
        return f"| {name} | {offered} | {s['acked_per_s']:,.0f} | - | - | - | {s['error_rate'] * 100:.2f}% | - |"
    return (f"| {name} | {offered} | {s['acked_per_s']:,.0f} | {l['p50']:.1f} | {l['p95']:.1f} | {l['p99']:.1f} | "
            f"{s['error_rate'] * 100:.2f}% | {r['client']['cpu_us_per_request']:.0f} us |")


TABLE_HEAD = ("| run | offered load | acked orders/s | p50 ms | p95 ms | p99 ms | errors | load-generator CPU/req |\n"
              "|---|---|---|---|---|---|---|---|")


def histogram_p(text: str, name: str, before: dict | None, q: float) -> tuple[float | None, dict]:
    """Quantile of a Prometheus histogram (summed over labels) between two scrapes."""
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            m = re.search(r'le="([^"]+)"\}\s+([0-9.e+]+)', line)
            if m:
                le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
                buckets[le] = buckets.get(le, 0.0) + float(m.group(2))
    if before:
        buckets = {le: c - before.get(le, 0.0) for le, c in buckets.items()}
    total = buckets.get(float("inf"), 0.0)
    if total <= 0:
        return None, buckets
    for le in sorted(buckets):
        if buckets[le] >= q * total:
            return le, buckets
    return None, buckets


# --------------------------------------------------------------------------- scenarios


async def bench_command(args) -> None:
    await reset_state()
    svc = Services("bench.command")
    await svc.start("command")
    url = svc.cfg.command_url
    ws = url.replace("http", "ws") + "/ws"
    d = str(args.duration)
    try:
        http = loadgen("command-http-64", "--mode", "http", "--url", url, "-c", "64", "-d", d, "--warmup", "3",
                       "--quiet")
        wsr = loadgen("command-ws", "--mode", "ws", "--ws-url", ws, "-c", "4", "--inflight", "64", "-d", d,
                      "--warmup", "3", "--quiet")
        openr = loadgen("command-http-open-2000", "--mode", "http", "--url", url, "-c", "64", "--rate", "2000",
                        "-d", d, "--warmup", "2", "--quiet")
    finally:
        svc.stop()
    body = f"""Measured {today()} on {machine_line()}.
Command: `make bench` (`python -m bench --only command --duration {d}`). Settings: EXCHANGE_AUTH=disabled,
EXCHANGE_RATE_LIMIT_PER_SECOND=0 and EXCHANGE_READ_RATE_LIMIT_PER_SECOND=0 (rate limits off), PostgreSQL 15 with fsync and synchronous_commit on; every
acknowledged order is committed. The command service runs alone (no relay, no query service); the load
generator shares the 2 cores. Mix: 60% limit, 25% cancel, 10% market, 5% IOC over BTC/ETH/SOL, 100 clients.

{TABLE_HEAD}
{row("HTTP, 64 connections", http)}
{row("WebSocket, 4 connections x 64 in flight", wsr)}
{row("HTTP, 64 connections", openr, "2,000/s open loop")}

Targets: >= 4,000/s HTTP, >= 15,000/s WebSocket, p99 < 50 ms at 2,000/s offered. The system we replace:
~450 acked orders/s at 64 connections, p99 ~190 ms. Plots: `{http['_plot']}`, `{wsr['_plot']}`, `{openr['_plot']}`.
Exact load-generator commands:
```
{http['_command']}
{wsr['_command']}
{openr['_command']}
```"""
    write_section("Command service", body)


async def bench_pipeline(args) -> None:
    d = str(args.duration)
    await reset_state()
    svc = Services(f"bench.pipeline.{int(time.time())}")
    await svc.start("command", "relay", "query-1", "query-2")
    url = svc.cfg.command_url
    q = svc.cfg.query_urls[0]
    qws = q.replace("http", "ws") + "/stream"
    try:
        await projectors_ready(svc.cfg.query_urls)
        # The open-loop run (the target's rate) goes first, on idle views: a closed-loop
        # run before it would leave a backlog that the open-loop window then measures. Each run's
        # lag counts until the views caught up, so the events still queued when the load stopped
        # (the most delayed ones) are counted too.
        openr, _, lag_open = await _lag_sampled_run(
            svc, "pipeline-http-open-2000", "--mode", "http", "--url", url, "-c", "64", "--rate", "2000",
            "-d", d, "--warmup", "2", "--visibility", "--query-url", q, "--query-ws", qws, "--quiet")
        closed, _, lag_closed = await _lag_sampled_run(
            svc, "pipeline-http-64", "--mode", "http", "--url", url, "-c", "64", "-d", d, "--warmup", "3",
            "--visibility", "--query-url", q, "--query-ws", qws, "--quiet")
    finally:
        svc.stop()
    # WebSocket on a stack of its own, as the CPU scenario: after the HTTP runs the topic holds
    # their records, and the in-memory broker's cost grows with what it holds (rolling topic
    # generations keep that bounded in a deployment).
    await reset_state()
    svc = Services(f"bench.pipeline.ws.{int(time.time())}")
    await svc.start("command", "relay", "query-1", "query-2")
    try:
        await projectors_ready(svc.cfg.query_urls)
        wsr, _, lag_ws = await _lag_sampled_run(
            svc, "pipeline-ws", "--mode", "ws", "--ws-url", svc.cfg.command_url.replace("http", "ws") + "/ws", "-c",
            "4", "--inflight", "64", "-d", d, "--warmup", "2", "--quiet")
    finally:
        svc.stop()

    def vis(r):
        v = r.get("visibility") or {}
        parts = []
        for key, label in (("orderbook", "in /market/orderbook"), ("stream", "trade on /stream")):
            x = v.get(key) or {}
            if x.get("p50") is not None:
                parts.append(f"{label}: p50 {x['p50']:.0f} ms, p99 {x['p99']:.0f} ms (n={x.get('count', '?')})")
        return "; ".join(parts) or "no probe result"

    def fmt(x):
        return "n/a" if x is None else (f"<= {x * 1000:.0f} ms" if x != float("inf") else "> largest bucket")

    body = f"""Measured {today()} on {machine_line()}.
Command: `make bench` (`python -m bench --only pipeline --duration {d}`). Everything runs at once on the
2 cores: command service, PostgreSQL, relay, Tansu, two query replicas (projector in a consumer group), Redis,
NATS and the load generator. Settings as in "Command service". The two HTTP runs share a stack; the WebSocket
run starts on a fresh one.

{TABLE_HEAD}
{row("HTTP, whole pipeline", closed)}
{row("HTTP, whole pipeline", openr, "2,000/s open loop")}
{row("WebSocket, whole pipeline", wsr)}

Order-to-visible latency (submit -> visible on the read side), closed loop: {vis(closed)}.
At 2,000/s offered: {vis(openr)}.
Projection lag p99 (query service histogram `projection_lag_seconds` of both replicas, bucket bound, from the
run's start until the views caught up; each run starts once the views have caught up with the previous one):
2,000/s open loop {fmt(lag_open)}, HTTP closed loop {fmt(lag_closed)}, WebSocket closed loop {fmt(lag_ws)}.
Back under 50 ms (lag p99 of a 0.5 s sampling interval) after the load ended: open loop {_settle_text(openr)},
HTTP closed loop {_settle_text(closed)}, WebSocket {_settle_text(wsr)}.
Plots: `{closed['_plot']}`, `{openr['_plot']}`, `{wsr['_plot']}`; with the lag over time (events behind and p99 ms
per interval): `docs/bench/pipeline-http-64-lag.png`, `docs/bench/pipeline-http-open-2000-lag.png`,
`docs/bench/pipeline-ws-lag.png`.
```
{closed['_command']}
{openr['_command']}
{wsr['_command']}
```"""
    write_section("Full pipeline", body)


async def bench_cpu(args) -> None:
    """CPU per acknowledged order, per process, for HTTP and for WS at one offered rate."""
    rate, d = str(args.cpu_rate), str(args.duration)
    results = {}
    for mode in ("http", "ws"):
        # Each mode on a stack of its own (empty journal, views and topic): run after the HTTP run on
        # the same topic, the WS run measured the broker holding the HTTP run's records as well, about
        # twice its CPU per order (2026-12-07: 149 vs 79 us), a cost that rolling topic generations
        # (make run, compose) keep from growing in a deployment.
        await reset_state()
        svc = Services(f"bench.cpu.{mode}.{int(time.time())}")
        await svc.start("command", "relay", "query-1", "query-2")
        cfg = svc.cfg
        roots = {name: proc.pid for name, proc in svc.procs.items()}
        for server in stack.SERVERS:
            roots[{"postgres": "PostgreSQL", "kafka": "broker (Tansu)"}.get(server, server)] = stack.server_pid(cfg, server)
        try:
            await projectors_ready(cfg.query_urls)
            target = (["--url", cfg.command_url, "-c", "64"] if mode == "http"
                      else ["--ws-url", cfg.command_url.replace("http", "ws") + "/ws", "-c", "4", "--inflight", "64"])
            # This VM's speed drifts by +-30 % within an hour: the probe says which phase a table is from.
            probe_ms = min(SpeedProbe.measure() for _ in range(3))
            counts0 = await _work_counts(cfg)
            meter = CpuMeter(roots)
            meter.start()
            # no warm-up: the generator's counts then cover the same window as the meter
            r = loadgen(f"cpu-{mode}-{rate}", "--mode", mode, *target, "--rate", rate, "-d", d, "--warmup", "0",
                        "--quiet")
            await drained(cfg.query_urls[0])  # the projection of every order is in the window
            cpu = meter.stop()
            await asyncio.sleep(1.0)  # PostgreSQL's backends report their counts at most once a second
            counts = {k: v - counts0[k] for k, v in (await _work_counts(cfg)).items()}
            cpu["load generator"] = r["client"]["cpu_s"]
            results[mode] = (r, cpu, probe_ms, counts)
        finally:
            svc.stop()
    parts = []
    for mode, (r, cpu, probe_ms, counts) in results.items():
        acked = r["summary"]["acked"]
        rows, total = per_order_table(cpu, acked)
        per = {k: v / acked for k, v in counts.items()} if acked else {}
        parts.append(f"""**{mode.upper()}**, {rate}/s offered, {r['summary']['acked_per_s']:,.0f} acked/s achieved,
{acked:,} acked orders in {d} s (p99 {lat(r)['p99']:.1f} ms); machine probe just before the load {probe_ms:.2f} ms:

| process | CPU s | CPU us per acked order |
| --- | ---: | ---: |
{chr(10).join(rows)}
| **all processes** | | **{total:,.0f}** |

Work per acked order: {per.get('pg_xacts', 0):.2f} PostgreSQL transactions, {per.get('relay_rounds', 0):.3f} relay
rounds ({counts.get('relay_rounds', 0):,.0f} in all), {per.get('projector_batches', 0):.3f} projector batches.

`{r['_command']}`""")
    body = f"""Measured {today()} on {machine_line()}.
Command: `make bench` (`python -m bench --only cpu --cpu-rate {rate} --duration {d}`). The whole pipeline (command
service, PostgreSQL, relay, broker, two query replicas, Redis, NATS) at a fixed offered rate; CPU seconds of each
process tree from /proc (user + system, reaped children included) from before the load until the views caught up,
divided by the acknowledged orders. The load generator's figure is its own measured CPU. Each mode runs on a
freshly started stack with an empty journal, views and topic. Machine probe: the CPU time of a fixed pure-Python
workload (as in "Sustained run"; about 9-10 ms on this VM at its fastest): every process's figure grows with it.

""" + "\n\n".join(parts)
    write_section("CPU per order", body)


async def _work_counts(cfg) -> dict[str, float]:
    """Counters of the fixed-cost units of work: PostgreSQL transactions (commits of the lock session,
    relay rounds' reads and cursor writes, everything else), relay rounds (one produce and one
    fetch per replica each: "Issue 19, sixth round"), projector batches (one per instrument and poll)."""
    conn = await asyncpg.connect(os.environ["EXCHANGE_PG_DSN"])
    try:
        xacts = await conn.fetchval("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                                    "WHERE datname = current_database()")
    finally:
        await conn.close()
    relay = await scrape([f"http://{cfg.host}:{cfg.relay_metrics_port}"])
    query = await scrape(cfg.query_urls)
    return {
        "pg_xacts": float(xacts),
        "relay_rounds": sum(float(v) for v in re.findall(r"^relay_batch_size_count(?:\{[^}]*\})? (\S+)", relay, re.M)),
        "projector_batches": sum(float(v) for v in re.findall(r"^projector_batches_total\{[^}]*\} (\S+)", query, re.M)),
    }


async def _lag_sampled_run(svc: "Services", name: str, *args: str) -> tuple[dict, list, float | None]:
    """One load generator run with the projection lag sampled alongside;
    returns the result, the lag samples and the lag p99 (histogram of both replicas). The
    result gets "lag_settle_s": seconds from the end of the load until the lag p99 of a sampling
    interval is back under 50 ms."""
    before = await scrape(svc.cfg.query_urls)
    _, b0 = histogram_p(before, "projection_lag_seconds", None, 0.99)
    sampler = LagSampler(svc.cfg.query_urls)
    sampler.start()
    r = await asyncio.to_thread(loadgen, name, *args)
    returned = sampler.now()
    await drained(svc.cfg.query_urls[0])
    await asyncio.sleep(max(0.0, returned + 1.0 - sampler.now()))  # samples after the load, to see it settle
    await sampler.stop()
    after = await scrape(svc.cfg.query_urls)
    p99, _ = histogram_p(after, "projection_lag_seconds", b0, 0.99)
    lag, lag_ms = sampler.on_run_clock(r)
    load_end = float(r["summary"]["duration_s"])  # the end of the measured window, on the run's clock
    r["lag_settle_s"] = settle_s(lag_ms, load_end)
    plot_run(r, lag, OUT / f"{name}-lag.png", f"{name}: throughput, latency and projection lag",
             lag_ms=lag_ms, load_end=load_end)
    return r, lag, p99


def _settle_text(r: dict) -> str:
    s = r.get("lag_settle_s")
    return "not within the sampling" if s is None else f"{s:.1f} s"


def _lag_text(p99: float | None) -> str:
    return "n/a" if p99 is None else (f"<= {p99 * 1000:.0f} ms" if p99 != float("inf") else "> largest bucket")


async def bench_users(args) -> None:
    await reset_state()
    svc = Services(f"bench.users.{int(time.time())}")
    await svc.start("command", "relay", "query-1", "query-2", "gateway")
    gw = svc.cfg.gateway_url
    d = str(args.duration)
    try:
        await projectors_ready(svc.cfg.query_urls)
        hot, _, hot_lag = await _lag_sampled_run(
            svc, "users-hot-btc", "--mode", "http", "--url", gw, "-c", "64", "--instruments", "BTC-USD",
            "--idempotency-keys", "--idempotency-share", "0.5", "-d", d, "--warmup", "2", "--quiet")
        many, _, many_lag = await _lag_sampled_run(
            svc, "users-ws-256x1", "--mode", "ws", "--ws-url", gw.replace("http", "ws") + "/ws", "-c", "256",
            "--inflight", "1", "-d", d, "--warmup", "2", "--quiet")
    finally:
        svc.stop()
    body = f"""Measured {today()} on {machine_line()}.
Command: `make bench` (`python -m bench --only users --duration {d}`). The whole pipeline behind the nginx gateway
(command service, relay, two query replicas, PostgreSQL, broker, Redis, NATS, nginx and the load generator on the
same 2 cores), clients as users behave: one hot instrument with an idempotency key on half the orders; many
WebSocket clients with one request in flight each.

{TABLE_HEAD}
{row("hot BTC-USD, half with idempotency keys, 64 HTTP connections, gateway", hot)}
{row("256 WebSocket clients x 1 in flight, gateway", many)}

Projection lag p99 (histogram of both replicas, until the views caught up): hot instrument {_lag_text(hot_lag)},
256 WebSocket clients {_lag_text(many_lag)}; back under 50 ms (lag p99 of a 0.5 s sampling interval) after the
load ended: hot instrument {_settle_text(hot)}, 256 WebSocket clients {_settle_text(many)}. Plots (throughput,
latency, lag over time, in events and as p99 ms per interval):
`docs/bench/users-hot-btc-lag.png`, `docs/bench/users-ws-256x1-lag.png`.
```
{hot['_command']}
{many['_command']}
```"""
    write_section("What users see", body)


async def bench_sustained(args) -> None:
    await reset_state()
    await seed_resting(os.environ["EXCHANGE_PG_DSN"], args.sustained_resting, say)
    svc = Services(f"bench.sustained.{int(time.time())}")
    # Topic generations roll as in `make run` and compose (every 30 s): the test profile turns rolling
    # off, and 10 minutes on one ever-growing in-memory topic measure the embedded broker's growth, which
    # a deployment never sees (2026-12-07, same run otherwise: without rolling the projection lag grew
    # to 3,000-4,000 events and p99 <= 2.5 s by minute 10; rolling: bounded, p99 <= 500 ms).
    await svc.start("command", "relay", "query-1", "query-2", "gateway", EXCHANGE_TOPIC_ROLL_S="30")
    seconds = str(args.sustained_minutes * 60)
    roots = {name: proc.pid for name, proc in svc.procs.items()}
    roots["nginx"] = stack.gateway_pid(svc.cfg)
    for server in stack.SERVERS:
        roots[{"postgres": "PostgreSQL", "kafka": "broker"}.get(server, server)] = stack.server_pid(svc.cfg, server)
    cpu = CpuSampler(roots, metrics_url=svc.cfg.command_url + "/metrics")
    try:
        await projectors_ready(svc.cfg.query_urls)
        await drained(svc.cfg.query_urls[0], timeout=600)  # the seeded book is in the views
        probe = SpeedProbe()
        idle_probe_ms = min(SpeedProbe.measure() for _ in range(3))  # before the load: the machine at rest
        cpu.start()
        probe.start()
        r, lag, lag_p99 = await _lag_sampled_run(
            svc, "sustained", "--mode", "http", "--url", svc.cfg.gateway_url, "-c", "64", "--mid", "BTC-USD=60000",
            "--mix", args.sustained_mix, "-d", seconds, "--warmup", "5", "--quiet")
        await cpu.stop()
        await probe.stop()
    finally:
        svc.stop()
    minutes = per_minute(r["series"])
    per_proc = cpu_per_minute(r, cpu, minutes, probe)  # also sets each minute's "resting" and "probe_ms"
    book0 = cpu.resting[0][1] if cpu.resting else None
    rows = "\n".join(f"| {m['minute']} | {m['acked_per_s']:,.0f} | {m['p99_ms']:.1f} | {_count(m.get('resting'))} | "
                      f"{_ms(m.get('probe_ms'))} |" for m in minutes if m["p99_ms"] is not None)
    names = sorted(per_proc[0], key=lambda n: -sum(row[n] for row in per_proc)) if per_proc else []
    cpu_rows = "\n".join(
        f"| {m['minute']} | " + " | ".join(f"{row[n]:,.0f}" for n in names) + f" | {sum(row.values()):,.0f} |"
        for m, row in zip(minutes, per_proc))
    say("CPU us per acked order, per minute:\n| minute | " + " | ".join(names) + " | total |\n" + cpu_rows)
    say("acked/s (resting orders, probe ms) per minute: " + ", ".join(
        f"{m['acked_per_s']:,.0f} ({_count(m.get('resting'))}, {_ms(m.get('probe_ms'))})" for m in minutes)
        + f"; probe at rest {idle_probe_ms:.2f} ms")
    first, last = minutes[0]["acked_per_s"], minutes[-1]["acked_per_s"]
    body = f"""Measured {today()} on {machine_line()}.
Command: `make bench` (`python -m bench --only sustained --sustained-minutes {args.sustained_minutes}
--sustained-resting {args.sustained_resting} --sustained-mix {args.sustained_mix}`). The whole pipeline behind the gateway, on a BTC-USD book that
already holds {args.sustained_resting:,} resting orders (5,000 levels a side, seeded in the journal and projected
before the run), HTTP closed loop with 64 connections for {args.sustained_minutes} minutes, topic generations rolling
every 30 s as in `make run`. A cost that grows with time or state shows as a falling throughput or a rising p99.

| minute | acked orders/s | p99 ms (per-second p99s, 99th percentile) | resting orders at the minute's end | machine probe, CPU ms |
| ---: | ---: | ---: | ---: | ---: |
{rows}

Resting orders in the books when the load started: {_count(book0)}. Machine probe: the CPU time (not wall time) of
a fixed pure-Python workload, median per minute of samples every 10 s (best of 3 each); {idle_probe_ms:.2f} ms just
before the load (the stack idle after the seed, though PostgreSQL may still be vacuuming it). It does not depend on our code: when it rises with the CPU per order of
every process at once, the machine got slower (this VM's neighbours, memory traffic), not the exchange.

Last minute / first minute throughput: {last / first * 100 if first else float('nan'):.0f} %. Projection lag p99 over
the run {_lag_text(lag_p99)}. Plot: `docs/bench/sustained-lag.png` (throughput, latency and lag over time).

CPU µs per acknowledged order, per process and minute (/proc, each process with its children; the load
generator from its own per-second share). A process whose cost grows with the book or with time shows as a
rising column.

| minute | {" | ".join(names)} | total |
| ---: | {" | ".join("---:" for _ in names)} | ---: |
{cpu_rows}
```
{r['_command']}
```"""
    write_section("Sustained run", body)


def _count(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


async def scrape(urls) -> str:
    """/metrics of every replica, concatenated: histogram_p sums a histogram over them
    (each replica projects the partitions the consumer group gave it)."""
    async with httpx.AsyncClient() as client:
        return "\n".join([(await client.get(u + "/metrics")).text for u in urls])


async def projectors_ready(urls, partitions: int = 6, timeout: float = 60) -> None:
    """Wait until the replicas' consumer group holds every partition of the topic: until then
    only the journal watchdog moves the views (once a second), which is not what we measure."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = await scrape(urls)
        held = sum(float(v) for v in re.findall(r"^projector_assigned_partitions\s+(\S+)", text, re.M))
        if held >= partitions:
            return
        await asyncio.sleep(0.25)
    say(f"the projectors' group did not take all {partitions} partitions within {timeout:.0f}s")


async def drained(query_url: str, timeout: float = 60) -> None:
    """Wait until the views hold every journal event (projection_lag_events 0 everywhere)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            text = (await client.get(query_url + "/metrics")).text
            lags = [float(v) for v in re.findall(r"^projection_lag_events\{[^}]*\}\s+(\S+)", text, re.M)]
            if lags and max(lags) == 0:
                return
            await asyncio.sleep(0.5)
    say(f"views still behind after {timeout:.0f}s")


async def _forwarded(urls: list[str]) -> float:
    total = 0.0
    async with httpx.AsyncClient(timeout=5) as http:
        for url in urls:
            for line in (await http.get(url + "/metrics")).text.splitlines():
                if line.startswith("forwarded_commands_total{"):
                    total += float(line.rsplit(" ", 1)[1])
    return total


async def bench_nodes(args) -> None:
    """One vs two command nodes behind the gateway, same run, same offered rate (issue 14). On 2 cores
    no gain is expected: the figure is what forwarding costs."""
    import dataclasses

    rate, d = str(args.cpu_rate), str(args.duration)
    results: dict[int, dict] = {}
    for n in (1, 2):
        await reset_state()
        svc = Services(f"bench.nodes.{n}.{int(time.time())}")
        svc.cfg = dataclasses.replace(svc.cfg, command_nodes=n)
        names = ("command", "command-2")[:n]
        await svc.start(*names, "gateway")
        urls = [f"http://{svc.cfg.host}:{p}" for p in svc.cfg.command_ports]
        try:
            for url in urls[1:]:
                await wait_ok(url + "/healthz", 60)
            if n == 2:  # the instruments spread over both nodes before the load
                deadline = time.monotonic() + 30
                async with httpx.AsyncClient(timeout=5) as http:
                    while len(set((await http.get(urls[0] + "/healthz")).json()["owners"].values())) < 2:
                        if time.monotonic() > deadline:
                            break
                        await asyncio.sleep(0.2)
            roots = {f"command-{k + 1}": svc.procs[name].pid for k, name in enumerate(names)}
            roots["gateway (nginx)"] = stack.gateway_pid(svc.cfg)
            for server in ("postgres", "nats"):
                roots[{"postgres": "PostgreSQL"}.get(server, server)] = stack.server_pid(svc.cfg, server)
            gw = svc.cfg.gateway_url
            for mode in ("http", "ws"):
                target = (["--url", gw, "-c", "64"] if mode == "http"
                          else ["--ws-url", gw.replace("http", "ws") + "/ws", "-c", "8", "--inflight", "32"])
                before = await _forwarded(urls)
                meter = CpuMeter(roots)
                meter.start()
                r = loadgen(f"nodes-{n}-{mode}-{rate}", "--mode", mode, *target, "--rate", rate, "-d", d,
                            "--warmup", "0", "--quiet")
                cpu = meter.stop()
                results.setdefault(n, {})[mode] = (r, cpu, await _forwarded(urls) - before)
        finally:
            svc.stop()
    lines = ["| nodes | mode | acked/s | p99 ms | errors | forwarded | CPU us per acked order (all processes) "
             "| command nodes CPU us/order |", "|---|---|---|---|---|---|---|---|"]
    for n, modes in results.items():
        for mode, (r, cpu, fwd) in modes.items():
            acked = r["summary"]["acked"]
            _, total = per_order_table(cpu, acked)
            nodes_us = sum(v for k, v in cpu.items() if k.startswith("command-")) * 1e6 / max(1, acked)
            p99 = lat(r).get("p99")
            lines.append(f"| {n} | {mode.upper()} | {r['summary']['acked_per_s']:,.0f} | "
                         f"{p99 if p99 is None else f'{p99:.1f}'} | {r['summary']['error_rate'] * 100:.2f}% | "
                         f"{fwd:,.0f} | {total:,.0f} | {nodes_us:,.0f} |")
    cost = []
    for mode in ("http", "ws"):
        if 1 in results and 2 in results:
            r1, c1, _ = results[1][mode]
            r2, c2, f2 = results[2][mode]
            extra = sum(c2.values()) - sum(c1.values()) * (r2["summary"]["acked"] / max(1, r1["summary"]["acked"]))
            if f2:
                cost.append(f"{mode.upper()}: {extra * 1e6 / f2:,.0f} us of CPU per forwarded order")
    body = f"""Measured {today()} on {machine_line()}.
Command: `make bench` (`python -m bench --only nodes --cpu-rate {rate} --duration {d}`). Command node(s), PostgreSQL,
NATS and the gateway only (no relay, no query service); the load goes through the gateway, which spreads it
round robin over the nodes, so with two nodes about half of the orders reach a node that does not own the
instrument and are forwarded over NATS to the owner. Same offered rate ({rate}/s) for both.

{chr(10).join(lines)}

Forwarding cost (CPU of all processes with two nodes minus one node's, scaled to the same acknowledged
orders, over the forwarded orders): {"; ".join(cost) or "n/a"}. On 2 cores no gain from a second node is
expected; the second node pays for forwarding and a second Python process. Load average at the end:
{", ".join(f"{x:.1f}" for x in os.getloadavg())}.
"""
    write_section("Several command nodes", body)


async def bench_takeover(args) -> None:
    from bench.takeover import bench_takeover as run

    await run(args, reset_state=reset_state, say=say,
              topic_env={"EXCHANGE_KAFKA_TOPIC": f"bench.takeover.{int(time.time())}", **BENCH_ENV})


async def bench_query(args) -> None:
    if shutil.which("wrk") is None:
        say("installing wrk (Debian package) for the read benchmark")
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False, capture_output=True)
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not available (apt-get install wrk failed)")
    await reset_state()
    svc = Services(f"bench.query.{int(time.time())}")
    await svc.start("command", "relay", "query-1")
    q = svc.cfg.query_urls[0]
    try:
        # a realistic book first: 20 s of orders, then wait for the projection
        loadgen("query-seed", "--mode", "http", "--url", svc.cfg.command_url, "-c", "16", "-d", "5", "--quiet",
                "--mix", "limit=100")
        await asyncio.sleep(2)
        results = {}
        for levels in (20, 100):
            target = f"{q}/market/orderbook?instrument=BTC-USD&levels={levels}"
            cmd = ["wrk", "-t1", "-c64", f"-d{args.duration}s", "--latency", target]
            say("$ " + " ".join(cmd))
            out = subprocess.run(cmd, capture_output=True, text=True).stdout
            rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))
            p = dict(re.findall(r"\s+(50|99)%\s+([0-9.]+\w+)", out))
            non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
            results[levels] = (rps, p, non2xx.group(1) if non2xx else "0", " ".join(cmd))
    finally:
        svc.stop()
    rows = "\n".join(f"| levels={lv} | {rps:,.0f} | {p.get('50', '?')} | {p.get('99', '?')} | {bad} |"
                     for lv, (rps, p, bad, _) in results.items())
    cmds = "\n".join(c for *_, c in results.values())
    body = f"""Measured {today()} on {machine_line()}.
Command: `make bench` (`python -m bench --only query`). One query replica process (uvicorn, one worker)
serving from Redis; wrk with 1 thread and 64 connections on the same 2 cores; the book seeded by 5 s of limit
orders through the command service. Target: >= 8,000 requests/s per replica.

| request | requests/s | p50 | p99 | non-2xx |
|---|---|---|---|---|
{rows}
```
{cmds}
```"""
    write_section("Query service read API", body)


async def bench_fanout(args) -> None:
    import websockets

    await reset_state()
    svc = Services(f"bench.fanout.{int(time.time())}")
    await svc.start("command", "relay", "query-1")
    q = svc.cfg.query_urls[0]
    ws_url = q.replace("http", "ws") + "/stream"
    n_subs = args.subscribers
    counts = [0] * n_subs
    closed = [None] * n_subs
    stop = asyncio.Event()

    async def subscriber(i: int):
        try:
            async with websockets.connect(ws_url, max_queue=None) as ws:
                await ws.send(json.dumps({"type": "subscribe", "channels": ["trades", "orderbook"],
                                          "instrument": "BTC-USD"}))
                while not stop.is_set():
                    try:
                        await asyncio.wait_for(ws.recv(), 1)
                        counts[i] += 1
                    except asyncio.TimeoutError:
                        continue
        except Exception as exc:  # a dropped slow consumer is counted, not fatal
            closed[i] = repr(exc)[:120]

    try:
        tasks = []
        for i in range(n_subs):
            tasks.append(asyncio.create_task(subscriber(i)))
            if i % 100 == 99:
                await asyncio.sleep(0.2)
        await asyncio.sleep(2)
        base = sum(counts)
        t0 = time.monotonic()
        gen = subprocess.Popen([sys.executable, "-m", "bench.loadgen", "--mode", "http", "--url", svc.cfg.command_url,
                                "-c", "16", "--rate", str(args.fanout_rate), "-d", str(args.duration), "--quiet",
                                "--instruments", "BTC-USD"], cwd=ROOT, stdout=subprocess.DEVNULL)
        await asyncio.to_thread(gen.wait)
        elapsed = time.monotonic() - t0
        delivered = sum(counts) - base
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(q + "/metrics")).text
    finally:
        svc.stop()
    dropped = sum(1 for c in closed if c)
    m = re.search(r"^ws_messages_dropped_total(?:\{[^}]*\})?\s+([0-9.e+]+)", metrics, re.M)
    body = f"""Measured {today()} on {machine_line()}.
Command: `make bench` (`python -m bench --only fanout --subscribers {n_subs} --fanout-rate {args.fanout_rate}`).
{n_subs} WebSocket subscribers (one process, `websockets` client) on one query replica, channels trades +
orderbook for BTC-USD, while the load generator offers {args.fanout_rate} orders/s on BTC-USD for
{args.duration} s (everything on the same 2 cores).

| subscribers | messages delivered | messages/s delivered (all subscribers) | per subscriber/s | subscribers dropped | server-side dropped messages |
|---|---|---|---|---|---|
| {n_subs} | {delivered:,} | {delivered / elapsed:,.0f} | {delivered / elapsed / n_subs:.1f} | {dropped} | {m.group(1) if m else '?'} |"""
    write_section("WebSocket fan-out", body)


async def bench_recovery(args) -> None:
    from contracts.enums import OrderType, Side, StpMode, TimeInForce
    from contracts.messages import OrderAccepted, encode_event

    await reset_state()
    n = args.resting
    dsn = os.environ["EXCHANGE_PG_DSN"]
    say(f"writing a journal of {n:,} resting BTC-USD orders (COPY)")
    conn = await asyncpg.connect(dsn)
    try:
        ts0 = time.time_ns()

        def rows(start, stop):
            for i in range(start, stop):
                buy = i % 2 == 0
                price = 6_000_000 - (i % 5000) if buy else 6_000_001 + (i % 5000)
                e = OrderAccepted(instrument="BTC-USD", seq=i + 1, ts=ts0 + i, order_id=f"r-{i}",
                                  client_id=f"c{i % 1000}", side=Side.BUY if buy else Side.SELL,
                                  order_type=OrderType.LIMIT, price=price, quantity=1_000_000 + i % 997,
                                  tif=TimeInForce.GTC, post_only=False, stp=StpMode.CANCEL_NEWEST)
                yield ("BTC-USD", i + 1, "order_accepted", e.ts, encode_event(e))

        for start in range(0, n, 100_000):
            await conn.copy_records_to_table("events", records=rows(start, min(n, start + 100_000)),
                                             columns=["instrument", "seq", "type", "ts", "payload"])
            say(f"  {min(n, start + 100_000):,} / {n:,}")
    finally:
        await conn.close()

    async def start_and_measure(label: str) -> tuple[float, float]:
        t0 = time.monotonic()
        svc = Services("bench.recovery")
        await svc.start("command")
        ready = time.monotonic() - t0
        pid = svc.procs["command"].pid
        rss = int(next(l for l in Path(f"/proc/{pid}/status").read_text().splitlines()
                       if l.startswith("VmRSS")).split()[1]) / 1024 / 1024
        say(f"{label}: ready in {ready:.1f} s, RSS {rss:.2f} GiB")
        return ready, rss, svc

    replay_s, rss1, svc = await start_and_measure("journal replay")
    try:
        async with httpx.AsyncClient(timeout=600) as client:
            r = await client.post(svc.cfg.command_url + "/admin/snapshot", params={"instrument": "BTC-USD"})
            r.raise_for_status()
            snap = r.json()["snapshots"][0]
    finally:
        svc.stop()
    snap_s, rss2, svc = await start_and_measure("snapshot + replay")
    svc.stop()
    body = f"""Measured {today()} on {machine_line()}.
Command: `make bench` (`python -m bench --only recovery --resting {n}`). A journal of {n:,} accepted,
non-crossing BTC-USD limit orders (10,000 price levels, 1,000 clients) is written with COPY; then the command
service is started and timed until `/healthz` answers 200 (all sequencers recovered and accepting).

| start-up | time to ready | command service RSS |
|---|---|---|
| replay of the whole journal ({n:,} events) | {replay_s:.1f} s | {rss1:.2f} GiB |
| latest snapshot (seq {snap['seq']:,}, {snap['bytes'] / 1e6:.0f} MB) + replay of later events | {snap_s:.1f} s | {rss2:.2f} GiB |

Targets (DESIGN section 6): recovery < 30 s (goal 10 s), RSS < 1.5 GiB (goal 1 GiB) with 1,000,000 resting orders."""
    write_section("Recovery and memory", body)


def run_module(module: str, *args: str) -> None:
    cmd = [sys.executable, "-m", module, *args]
    say("$ " + " ".join(cmd[1:]))
    subprocess.run(cmd, cwd=ROOT, check=True)


async def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(SCENARIOS), help=f"comma list of {SCENARIOS}")
    ap.add_argument("--duration", type=int, default=15)
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--fanout-rate", type=int, default=500)
    ap.add_argument("--resting", type=int, default=1_000_000)
    ap.add_argument("--cpu-rate", type=int, default=1500, help="offered orders/s of the cpu scenario")
    ap.add_argument("--sustained-minutes", type=int, default=10)
    ap.add_argument("--sustained-resting", type=int, default=200_000)
    ap.add_argument("--sustained-mix", default="limit=60,cancel=25,market=10,ioc=5",
                    help="the sustained run's order mix (bench.loadgen --mix)")
    ap.add_argument("--takeover-resting", type=int, default=100_000, help="resting orders per instrument")
    ap.add_argument("--takeover-rate", type=int, default=1000, help="offered orders/s during the takeover")
    ap.add_argument("--takeover-before", type=int, default=10, help="seconds of load before the kill")
    ap.add_argument("--takeover-after", type=int, default=20, help="seconds of load after the kill")
    args = ap.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    for s in chosen:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s!r}")
    for s in chosen:
        say(f"== {s}")
        if s == "engine":
            run_module("bench.engine")
        elif s == "relay":
            run_module("bench.relay")
        else:
            await globals()[f"bench_{s}"](args)
    say(f"done: results in {os.path.relpath(ROOT / 'docs' / 'BENCHMARKS.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
