"""The relay's notice (contracts.topics): where the topic's partitions end, with the round's records."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.topics import RelayedNotice, RelayedRecords, parse_relayed_notice, relayed_notice

topics = st.from_regex(r"[a-z][a-z0-9._-]{0,40}", fullmatch=True)
ends = st.dictionaries(st.integers(0, 1023), st.integers(0, 2**62), max_size=64)
records = st.lists(st.builds(RelayedRecords, st.integers(0, 1023), st.integers(0, 2**62),
                             st.lists(st.binary(max_size=300), max_size=20)), max_size=8)


@given(topics, ends, records)
def test_a_notice_reads_back_as_written(topic, partition_ends, carried):
    payload = relayed_notice(topic, partition_ends, carried)
    assert parse_relayed_notice(payload) == RelayedNotice(topic, partition_ends, carried)


def test_the_text_notice_of_a_relay_before_records_reads_as_ends_only():
    # A relay of the previous version during a rolling upgrade: the projectors fetch on it.
    assert parse_relayed_notice(b"exchange.events.g7 0:5 3:120") == RelayedNotice("exchange.events.g7", {0: 5, 3: 120})


@pytest.mark.parametrize("bad", [b"", b" 1:2", b"t 1", b"t x:2", b"t 1:y", b"\x93\xa0\x80\x90", b"\x93\x01", b"\xff\xfe"])
def test_an_unreadable_notice_is_refused(bad):
    with pytest.raises(ValueError):
        parse_relayed_notice(bad)
