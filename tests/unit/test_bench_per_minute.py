"""The sustained benchmark's per-minute tables: a partial last minute (the run's end) is left out, since
its few seconds would read as a drop in throughput; full minutes keep their mean and p99."""

from datetime import datetime, timezone

from bench.sustained import CpuSampler, cpu_per_minute, per_minute


def _series(seconds: int, acked=lambda t: 100.0):
    return [{"t": t, "acked_per_s": acked(t), "p99_ms": float(t % 60)} for t in range(1, seconds + 1)]


def test_full_minutes_only():
    minutes = per_minute(_series(125))
    assert [m["minute"] for m in minutes] == [1, 2]


def test_a_short_run_keeps_its_only_minute():
    assert [m["minute"] for m in per_minute(_series(20))] == [1]


def test_minute_mean_and_p99():
    minutes = per_minute(_series(120, acked=lambda t: 100.0 if t <= 60 else 50.0))
    assert [m["acked_per_s"] for m in minutes] == [100.0, 50.0]
    assert minutes[0]["p99_ms"] == 59.0


def test_cpu_per_order_per_process_and_minute():
    # a process whose CPU per second doubles in the second minute at the same order rate shows a
    # doubled column there; the load generator's own share comes from its per-second CPU %
    t0 = 1_800_000_000.0
    sampler = CpuSampler({"command": 1})
    cpu = 0.0
    for s in range(0, 126, 5):  # the window starts at t0 + warmup (5 s)
        sampler.samples.append((t0 + s, {"command": cpu}))
        cpu += 5 * (0.1 if s < 65 else 0.2)
    series = [{"t": t, "acked": 100, "acked_per_s": 100.0, "p99_ms": 1.0, "client_cpu_pct": 2.0}
              for t in range(1, 121)]
    started = datetime.fromtimestamp(t0, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    result = {"started_at": started, "config": {"warmup": 5}, "series": series}
    rows = cpu_per_minute(result, sampler, per_minute(series))
    assert [round(r["command"]) for r in rows] == [1000, 2000]  # 0.1 s / 100 orders, then 0.2 s
    assert [round(r["load generator"]) for r in rows] == [200, 200]  # 2 % of a second / 100 orders


def test_interval_lag_p99_and_the_time_to_settle_after_the_load():
    from bench.sustained import interval_p99_ms, settle_s

    inf = float("inf")
    before = {0.01: 10, 0.05: 10, 0.25: 10, inf: 10}
    # 100 projected in the interval: 90 within 10 ms, 9 more within 50 ms, 1 within 250 ms
    after = {0.01: 100, 0.05: 109, 0.25: 110, inf: 110}
    assert interval_p99_ms(before, after) == 50.0
    assert interval_p99_ms(after, after) is None  # nothing projected: no lag to speak of
    series = [(1.0, 250.0), (2.0, 250.0), (3.0, 100.0), (3.5, 25.0), (4.0, None)]
    assert settle_s(series, load_end=2.5) == 1.0  # the interval ending at 3.5 s is back under 50 ms
    assert settle_s(series[:3], load_end=2.5) is None  # never back under 50 ms while sampled
    assert settle_s([(3.0, 50.0)], load_end=2.5) == 0.5  # a bucket bound of 50 ms: all within 50 ms


def test_each_minute_carries_the_book_size_at_its_end():
    # the sustained run reports how many orders rest at each minute's end, so that a cost growing
    # with the book is told apart from one growing with time
    t0 = 1_800_000_000.0
    sampler = CpuSampler({"command": 1})
    for s in range(0, 131, 5):
        sampler.samples.append((t0 + s, {"command": s * 0.1}))
        sampler.resting.append((t0 + s, 200_000 + 1_000 * s))
    series = [{"t": t, "acked": 100, "acked_per_s": 100.0, "p99_ms": 1.0} for t in range(1, 121)]
    started = datetime.fromtimestamp(t0, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    minutes = per_minute(series)
    cpu_per_minute({"started_at": started, "config": {"warmup": 5}, "series": series}, sampler, minutes)
    assert [m["resting"] for m in minutes] == [265_000, 325_000]  # samples at t0 + 65 s and t0 + 125 s
    assert sampler.resting_at(t0 - 1) == 200_000  # before the first sample: the first one
