"""When the command service stores an engine snapshot (command_service/sequencer.py snapshot_due):
every EXCHANGE_SNAPSHOT_EVERY_EVENTS events on a small book, and at an interval that grows with the
book on a large one, so that the snapshot work per event (a snapshot costs in proportion to the
resting orders) stays flat while the book grows, and the events recovery replays stay bounded."""

from __future__ import annotations

from command_service.sequencer import SNAPSHOT_BOOK_FACTOR, snapshot_due


def test_zero_turns_snapshots_off_whatever_the_book():
    assert not snapshot_due(10_000_000, 0, 0)
    assert not snapshot_due(10_000_000, 5_000_000, 0)


def test_a_small_book_snapshots_every_setting_events():
    assert not snapshot_due(99_999, 1_000, 100_000)
    assert snapshot_due(100_000, 1_000, 100_000)
    assert snapshot_due(100_000, 200_000, 100_000)  # 0.5 x 200,000 = the setting: no change up to here


def test_a_large_book_waits_for_half_its_size_in_events():
    assert SNAPSHOT_BOOK_FACTOR == 0.5
    assert not snapshot_due(100_000, 800_000, 100_000)
    assert not snapshot_due(399_999, 800_000, 100_000)
    assert snapshot_due(400_000, 800_000, 100_000)


def _run(book_from: int, book_to: int, events: int, every: int, fixed: bool) -> tuple[float, int]:
    """A run whose book grows linearly: (snapshot work per event in resting orders serialised,
    the most events after a snapshot, i.e. what a recovery at the worst moment replays)."""
    since = work = worst = 0
    step = 1_000
    for done in range(0, events, step):
        resting = book_from + (book_to - book_from) * done // events
        since += step
        worst = max(worst, since)
        if (since >= every) if fixed else snapshot_due(since, resting, every):
            work += resting
            since = 0
    return work / events, worst


def test_the_snapshot_work_per_event_stays_flat_while_the_book_grows():
    # the sustained benchmark: a book of 200,000 growing to 800,000 over ~1.3M events
    small, _ = _run(200_000, 210_000, 1_300_000, 100_000, fixed=False)
    growing, worst = _run(200_000, 800_000, 1_300_000, 100_000, fixed=False)
    fixed, _ = _run(200_000, 800_000, 1_300_000, 100_000, fixed=True)
    assert growing <= 1.1 * small  # flat (measured: 1.81 resting orders serialised per event against 1.89)
    assert fixed > 2.5 * small  # the fixed interval: the work per event grew with the book (5.23)
    assert worst <= SNAPSHOT_BOOK_FACTOR * 800_000 + 1_000  # recovery replays at most half the book
