"""The exact-decimal JSON encodings of prices and quantities (contracts/instruments.py) are
cached per unit, bounded: a long run renders ever new cumulative book quantities, and the cache
used to keep 100,000 of them per unit and process (~18 MB each). Pure, no I/O."""

from __future__ import annotations

import random
from decimal import Decimal

from contracts import instruments as ins


def test_rendering_200k_distinct_quantities_keeps_the_cache_small_and_exact():
    spec = ins.load_instruments(None).get("BTC-USD")
    rng = random.Random(7)
    for _ in range(200_000):
        lots = rng.randrange(1, 10**12)
        raw = spec.quantity_json(lots)
        if lots % 997 == 0:  # spot-check exactness on the way
            assert Decimal(bytes(raw).decode()) == lots * spec.lot_size
        assert len(ins._RAW_CACHE[spec.lot_size]) <= ins.RAW_CACHE_MAX
    assert ins.RAW_CACHE_MAX <= 8192
    assert bytes(spec.quantity_json(150_000_000)) == b"1.5"
    assert bytes(spec.price_json(7_000_050)) == b"70000.5"
