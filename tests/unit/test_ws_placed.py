"""cancel_on_disconnect bookkeeping of a /ws connection: ids are forgotten only a generation
after they were placed, and only once their orders no longer rest."""

from types import SimpleNamespace

from command_service import ws


class Books:
    """Stands in for OrderEntry.is_resting: the set of ids resting in the books."""

    def __init__(self):
        self.resting: set[str] = set()

    def is_resting(self, oid: str) -> bool:
        return oid in self.resting


def test_placed_ids_are_pruned_a_generation_later_and_only_when_closed(monkeypatch):
    monkeypatch.setattr(ws, "PRUNE_PLACED", 4)
    books = Books()
    sock = ws.OrderSocket(SimpleNamespace(entry=books), principal=None, rate_key="k")
    tracked = sock.placed
    for oid in ("a", "b", "c", "d"):
        tracked.add(oid)
    books.resting = {"a"}
    sock._prune_placed()
    assert sock.earlier == {"a", "b", "c", "d"} and sock.placed == set()  # a fresh generation is kept whole
    assert sock.placed is tracked  # places still in flight keep adding to the same set
    for oid in ("e", "f", "g", "h"):
        tracked.add(oid)
    books.resting = {"a", "e"}
    sock._prune_placed()
    assert sock.earlier == {"a", "e", "f", "g", "h"}  # b, c, d closed and are a generation old
