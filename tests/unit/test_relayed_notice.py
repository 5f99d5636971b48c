"""The relay's notice of where the topic's partitions end (contracts.topics), read by the projectors."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.topics import parse_relayed_notice, relayed_notice

topics = st.from_regex(r"[a-z][a-z0-9._-]{0,40}", fullmatch=True)
ends = st.dictionaries(st.integers(0, 1023), st.integers(0, 2**62), max_size=64)


@given(topics, ends)
def test_a_notice_reads_back_as_written(topic, partition_ends):
    payload = relayed_notice(topic, partition_ends)
    assert parse_relayed_notice(payload) == (topic, partition_ends)
    assert len(payload.encode()) < 8000  # PostgreSQL's NOTIFY payload limit, even with 64 partitions


def test_a_notice_names_partitions_in_order():
    assert relayed_notice("exchange.events.g7", {3: 120, 0: 5}) == "exchange.events.g7 0:5 3:120"


@pytest.mark.parametrize("bad", ["", " 1:2", "t 1", "t x:2", "t 1:y"])
def test_an_unreadable_notice_is_refused(bad):
    with pytest.raises(ValueError):
        parse_relayed_notice(bad)
