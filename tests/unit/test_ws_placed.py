"""cancel_on_disconnect bookkeeping of a /ws connection: ids are forgotten only a generation
after they were placed, and only once their orders no longer rest."""

from types import SimpleNamespace

from command_service import ws


class Books:
    """Stands in for OrderEntry.is_resting / owned_elsewhere: the ids resting in this node's books, and
    the instruments another node serves now."""

    def __init__(self):
        self.resting: set[str] = set()
        self.elsewhere: set[str] = set()

    def is_resting(self, oid: str) -> bool:
        return oid in self.resting

    def owned_elsewhere(self, sym: str) -> bool:
        return sym in self.elsewhere


def test_placed_ids_are_pruned_a_generation_later_and_only_when_closed(monkeypatch):
    monkeypatch.setattr(ws, "PRUNE_PLACED", 4)
    books = Books()
    sock = ws.OrderSocket(SimpleNamespace(entry=books), principal=None, rate_key="k")
    tracked = sock.placed
    for oid in ("a", "b", "c", "d"):
        tracked[oid] = "X"
    books.resting = {"a"}
    sock._prune_placed()
    assert set(sock.earlier) == {"a", "b", "c", "d"} and sock.placed == {}  # a fresh generation is kept whole
    assert sock.placed is tracked  # places still in flight keep adding to the same dict
    for oid in ("e", "f", "g", "h"):
        tracked[oid] = "X"
    books.resting = {"a", "e"}
    sock._prune_placed()
    assert set(sock.earlier) == {"a", "e", "f", "g", "h"}  # b, c, d closed and are a generation old


def test_orders_whose_instrument_moved_to_another_node_are_kept_for_that_node(monkeypatch):
    monkeypatch.setattr(ws, "PRUNE_PLACED", 2)
    books = Books()
    sock = ws.OrderSocket(SimpleNamespace(entry=books), principal=None, rate_key="k")
    sock.placed.update({"a": "X", "b": "Y"})
    sock._prune_placed()
    books.elsewhere = {"Y"}  # Y was handed over: b rests in another node's book, not here
    sock._prune_placed()
    assert sock.earlier == {} and sock.remote == {"b": "Y"}
