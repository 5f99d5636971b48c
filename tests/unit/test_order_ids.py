"""Server order ids: unguessable (74 random bits, issue 14) and ordered by creation time, so
that new orders land at the right edge of the orders table's primary key."""

import uuid

from command_service.order_entry import _order_ids


def test_ids_are_uuid_v7_carrying_the_creation_millisecond():
    now = [1_796_000_000_123]
    ids = _order_ids(lambda: now[0])
    first = next(ids)
    parsed = uuid.UUID(first)
    assert str(parsed) == first
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert parsed.int >> 80 == 1_796_000_000_123


def test_ids_sort_by_creation_time_and_never_repeat():
    now = [1_796_000_000_000]
    ids = _order_ids(lambda: now[0])
    made = []
    for _ in range(2_000):
        made.append(next(ids))
        now[0] += 1
    assert made == sorted(made)
    assert len(set(made)) == len(made)


def test_ids_of_one_millisecond_differ_in_their_random_bits():
    ids = _order_ids(lambda: 1_796_000_000_000)
    made = [uuid.UUID(next(ids)).int & ((1 << 80) - 1) for _ in range(4_096)]
    assert len(set(made)) == len(made)
    # Every one of the 74 random bits (12 after the version, 62 after the variant) takes both values.
    random_mask = ((1 << 12) - 1) << 64 | ((1 << 62) - 1)
    ones = 0
    zeros = 0
    for v in made:
        ones |= v & random_mask
        zeros |= ~v & random_mask
    assert ones == random_mask and zeros == random_mask
