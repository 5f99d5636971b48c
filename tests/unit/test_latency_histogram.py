"""The sequencer's lock-free latency histogram exposes the same text as prometheus_client's."""

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from command_service.metrics import LatencyHistogram

BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 1)


def test_matches_prometheus_client_histogram():
    ours_reg, ref_reg = CollectorRegistry(), CollectorRegistry()
    ours = LatencyHistogram("lat_seconds", "latency", BUCKETS, ours_reg)
    ref = Histogram("lat_seconds", "latency", buckets=BUCKETS, registry=ref_reg)
    for ns in (0, 1, 500_000, 500_001, 999_999, 1_000_000, 7_000_000, 1_000_000_000, 3_000_000_000):
        ours.observe_ns(ns)
        ref.observe(ns / 1e9)
    lines = [ln for ln in generate_latest(ours_reg).decode().splitlines() if "_created" not in ln]
    ref_lines = [ln for ln in generate_latest(ref_reg).decode().splitlines() if "_created" not in ln]
    assert lines == ref_lines
    assert 'lat_seconds_bucket{le="0.0005"} 3.0' in lines  # 0, 1 ns and exactly 0.5 ms
    assert 'lat_seconds_count 9.0' in lines
