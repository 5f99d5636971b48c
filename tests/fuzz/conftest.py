"""Fixtures of the fuzz tests: a private exchange (see private_exchange.py) and the budget.

Budget: EXCHANGE_FUZZ_EXAMPLES examples per API operation (hypothesis max_examples of the
fuzzing phase; schemathesis adds its deterministic coverage and examples phases on top),
EXCHANGE_FUZZ_STEPS stateful scenarios, EXCHANGE_FUZZ_WS_FRAMES random frames per WebSocket.
Defaults: 20 / 20 / 100 in `make test` (well under two minutes), 300 / 300 / 1500 under
`make fuzz` (tests/fuzz named on the command line); an exported value wins in both.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fuzz.private_exchange import PrivateExchange

FUZZ_DIR = Path(__file__).resolve().parent


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def _budget(default_examples: int) -> tuple[int, int, int]:
    examples = _env_int("EXCHANGE_FUZZ_EXAMPLES", default_examples)
    return (examples, _env_int("EXCHANGE_FUZZ_STEPS", max(4, examples)),
            _env_int("EXCHANGE_FUZZ_WS_FRAMES", max(40, examples * 5)))


# Reset by pytest_configure (below), before pytest imports the test modules of this folder.
FUZZ_EXAMPLES, FUZZ_STEPS, FUZZ_WS_FRAMES = _budget(20)
# A response slower than this counts as a hang (the request is abandoned and the test fails).
REQUEST_TIMEOUT = float(os.environ.get("EXCHANGE_FUZZ_REQUEST_TIMEOUT", "10"))


def _named_on_command_line(config) -> bool:
    base = Path(config.invocation_params.dir)
    for arg in config.args:
        try:
            (base / arg.split("::")[0]).resolve().relative_to(FUZZ_DIR)
            return True
        except ValueError:
            continue
    return False


def pytest_configure(config):
    """The budget: EXCHANGE_FUZZ_EXAMPLES if set; else 20 in a whole-suite run (make test) and
    300 when tests/fuzz is named on the command line (make fuzz runs `pytest tests/fuzz`)."""
    global FUZZ_EXAMPLES, FUZZ_STEPS, FUZZ_WS_FRAMES
    FUZZ_EXAMPLES, FUZZ_STEPS, FUZZ_WS_FRAMES = _budget(300 if _named_on_command_line(config) else 20)


@pytest.fixture(scope="package")
async def exchange():
    ex = PrivateExchange("fuzz", auth="enabled")
    try:
        await ex.start()
        yield ex
    finally:
        await ex.stop()
