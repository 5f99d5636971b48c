"""The newest closed orders of one instrument, bounded: a cancel or amend that races a fill
is answered from here without a database round trip; an older closed order is answered
from the PostgreSQL orders row (command_service.order_entry), with the same status and body.

Bounded because a long run closes orders without end: the previous dict was trimmed only at
200,000 entries per instrument (~238 B each, ~143 MB over three instruments), which was most
of the command service's growth from 65 to 242 MB RSS in the 30-minute soak (docs/BENCHMARKS.md,
"Long runs"). The race it serves is a few batches wide (milliseconds), so the newest `keep`
orders are plenty; everything older costs one indexed row read, as it always did after a restart.
"""

from __future__ import annotations

import itertools


class RecentlyClosed:
    """order_id -> (client_id, status) of the newest closed orders, at least the newest `keep`
    and at most 2 * keep. Trimmed when 2 * keep is reached, by copying the newest `keep` into a
    fresh dict: one O(keep) copy per `keep` inserts (amortised O(1) per order), and the fresh
    dict gives back the old one's table (deleting keys never shrinks a dict). Lookups are
    one dict get. Not thread-safe: owned by one sequencer on the event loop."""

    __slots__ = ("keep", "_items")

    DEFAULT_KEEP = 8192  # at most 16,384 per instrument, ~4 MB at ~238 B per entry

    def __init__(self, keep: int = DEFAULT_KEEP):
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.keep = keep
        self._items: dict[str, tuple[str, str]] = {}

    def add(self, order_id: str, client_id: str, status: str) -> None:
        items = self._items
        items[order_id] = (client_id, status)
        if len(items) >= 2 * self.keep:
            # dicts keep insertion order: the first len - keep entries are the oldest
            self._items = dict(itertools.islice(items.items(), len(items) - self.keep, None))

    def get(self, order_id: str) -> tuple[str, str] | None:
        """(client_id, status) of a recently closed order, or None: not closed, or closed
        long ago (then the caller reads the orders row)."""
        return self._items.get(order_id)

    def clear(self) -> None:
        self._items = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, order_id: object) -> bool:
        return order_id in self._items
