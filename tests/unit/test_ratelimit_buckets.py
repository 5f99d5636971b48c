"""TokenBuckets (contracts/ratelimit.py) over a long run: the table holds the keys active within
one refill time, not every key ever seen (a key per WebSocket connection or client address
would pile up), and dropping refilled buckets never forgives a key that is being limited."""

from __future__ import annotations

from contracts.ratelimit import TokenBuckets


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_keys_seen_once_long_ago_do_not_accumulate():
    clock = Clock()
    tb = TokenBuckets(rate=10, burst=5, clock=clock)  # a used token is back after 0.1 s
    sizes = []
    for i in range(200_000):  # 200k distinct keys, 100 per second: a connection's key each
        assert tb.take(f"ws:{i}")[0]
        clock.now += 0.01
        sizes.append(len(tb))
    assert max(sizes) <= 2 * TokenBuckets.SWEEP_MIN  # not 100,000 as before
    assert len(tb) <= 2 * TokenBuckets.SWEEP_MIN


def test_a_limited_key_stays_limited_across_sweeps():
    clock = Clock()
    tb = TokenBuckets(rate=1, burst=3, clock=clock)
    for _ in range(3):
        assert tb.take("busy")[0]
    allowed, headers, retry = tb.take("busy")
    assert not allowed and retry == 1 and headers is not None
    for i in range(5 * TokenBuckets.SWEEP_MIN):  # several sweeps at the same instant
        tb.take(f"other-{i}")
    assert not tb.take("busy")[0]  # still empty: its bucket was kept
    clock.now += 1.0
    assert tb.take("busy")[0]  # and refills as before


def test_a_flood_of_distinct_keys_mid_refill_is_bounded_by_max_keys():
    clock = Clock()
    tb = TokenBuckets(rate=0.001, burst=2, max_keys=10_000, clock=clock)  # nothing refills during the flood
    for i in range(100_000):
        tb.take(f"k{i}")
        assert len(tb) <= 10_000
    assert tb.take("k99999")[0]  # the newest keys keep their buckets (1 token left)
    assert not tb.take("k99999")[0]


def test_off_keeps_no_state():
    tb = TokenBuckets(rate=0, burst=5)
    for i in range(10_000):
        assert tb.take(f"k{i}") == (True, None, 0)
    assert len(tb) == 0
