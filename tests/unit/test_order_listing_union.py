"""A client's order listing without a status merges, per instrument, the open and the closed index
(query_service.views.union_newest): newest first, each order once, at most n per instrument."""

from query_service.views import union_newest


def m(ts: int, oid: str) -> bytes:
    return b"%019d|%s" % (ts, oid.encode())


def newest_first(rows):
    return sorted(rows, key=lambda e: e[0], reverse=True)


def test_open_and_closed_interleave_newest_first_per_instrument():
    # keys: 0 = open of instrument 0, 1 = closed of instrument 0, 2 = open of 1, 3 = closed of 1
    rows = newest_first([(m(5, "a"), 0), (m(4, "b"), 1), (m(3, "c"), 0), (m(6, "x"), 3), (m(1, "y"), 2)])
    assert union_newest(rows, 2, 10) == [(m(6, "x"), 1), (m(5, "a"), 0), (m(4, "b"), 0), (m(3, "c"), 0),
                                         (m(1, "y"), 1)]


def test_an_order_closed_between_the_two_reads_is_listed_once():
    # read from "open", then the projector's EXEC moved it to "closed", then "closed" was read
    rows = newest_first([(m(7, "moved"), 0), (m(7, "moved"), 1), (m(2, "old"), 1)])
    assert union_newest(rows, 2, 10) == [(m(7, "moved"), 0), (m(2, "old"), 0)]


def test_at_most_n_of_each_instrument_the_newest():
    rows = newest_first([(m(t, f"o{t}"), t % 2) for t in range(1, 9)]
                        + [(m(t, f"p{t}"), 2 + t % 2) for t in range(10, 13)])
    out = union_newest(rows, 2, 3)
    assert [e for e in out if e[1] == 0] == [(m(8, "o8"), 0), (m(7, "o7"), 0), (m(6, "o6"), 0)]
    assert [e for e in out if e[1] == 1] == [(m(12, "p12"), 1), (m(11, "p11"), 1), (m(10, "p10"), 1)]
    assert out == newest_first(out)
