"""Fixtures of the fuzz tests: a private exchange (see private_exchange.py), the budget, and
the checks every fuzzed response must pass.

Budget: EXCHANGE_FUZZ_EXAMPLES examples per API operation (hypothesis max_examples of the
fuzzing phase; schemathesis adds its deterministic coverage and examples phases on top) and
EXCHANGE_FUZZ_STEPS stateful scenarios; EXCHANGE_FUZZ_WS_FRAMES random frames per WebSocket.
The defaults keep `make test` well under two minutes; `make fuzz` runs the same tests, with
whatever larger budget is exported (e.g. EXCHANGE_FUZZ_EXAMPLES=500 make fuzz).
"""

from __future__ import annotations

import os

import pytest

from tests.fuzz.private_exchange import PrivateExchange


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


FUZZ_EXAMPLES = _env_int("EXCHANGE_FUZZ_EXAMPLES", 20)
FUZZ_STEPS = _env_int("EXCHANGE_FUZZ_STEPS", max(4, FUZZ_EXAMPLES))
FUZZ_WS_FRAMES = _env_int("EXCHANGE_FUZZ_WS_FRAMES", max(40, FUZZ_EXAMPLES * 5))
# A response slower than this counts as a hang (the request is abandoned and the test fails).
REQUEST_TIMEOUT = float(os.environ.get("EXCHANGE_FUZZ_REQUEST_TIMEOUT", "10"))


@pytest.fixture(scope="package")
async def exchange():
    ex = PrivateExchange("fuzz", auth="enabled")
    try:
        await ex.start()
        yield ex
    finally:
        await ex.stop()
