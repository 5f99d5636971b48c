"""The sustained benchmark's per-minute table: a partial last minute (the run's end) is left out, since
its few seconds would read as a drop in throughput; full minutes keep their mean and p99."""

from bench.sustained import per_minute


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
