"""RecentlyClosed (command_service/closed_orders.py): the command service's memory of closed
orders stays bounded over a long run and always holds the newest ones (pure, no I/O)."""

from __future__ import annotations

import pytest

from command_service.closed_orders import RecentlyClosed


def test_a_long_run_stays_between_keep_and_twice_keep_and_keeps_the_newest():
    rc = RecentlyClosed(keep=100)
    sizes = []
    for i in range(10_000):
        rc.add(f"o-{i}", f"c-{i % 7}", "filled" if i % 2 else "cancelled")
        sizes.append(len(rc))
    assert max(sizes) < 200  # never reaches 2 * keep: trimmed on the insert that would
    assert min(sizes[100:]) >= 100  # once full, never fewer than keep
    # the newest `keep` are always there with their owner and status
    for i in range(9_900, 10_000):
        assert rc.get(f"o-{i}") == (f"c-{i % 7}", "filled" if i % 2 else "cancelled")
        assert f"o-{i}" in rc
    # the oldest are gone: the caller reads their orders row instead
    assert rc.get("o-0") is None
    assert rc.get("o-9000") is None
    assert rc.get("never-seen") is None


def test_the_trim_is_amortised():
    # one O(keep) copy per keep inserts: 1M inserts with keep 8192 copy ~1M entries in total
    rc = RecentlyClosed()
    copies = 0
    prev = 0
    for i in range(1_000_000):
        rc.add(str(i), "c", "filled")
        if len(rc) < prev:
            copies += len(rc)
        prev = len(rc)
    assert copies <= 1_000_000
    assert len(rc) <= 2 * RecentlyClosed.DEFAULT_KEEP


def test_clear_and_a_bad_bound():
    rc = RecentlyClosed(keep=4)
    rc.add("a", "c", "filled")
    rc.clear()
    assert len(rc) == 0 and rc.get("a") is None
    with pytest.raises(ValueError):
        RecentlyClosed(keep=0)
