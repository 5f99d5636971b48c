"""Long fault scenarios (make chaos = `pytest tests/chaos` on freshly started test servers).

They are collected by plain `make test` too (testpaths = tests) but skipped there: they run only
when tests/chaos (or a file in it) is named on the command line, or EXCHANGE_CHAOS=1. They
cannot share a session with tests/e2e: both start the whole system on the test profile's
ports (the e2e `system` fixture is session scoped), so chaos is skipped when e2e tests were
collected too.

Knobs (environment): EXCHANGE_CHAOS_CYCLES (faults per repeated scenario, default 3),
EXCHANGE_CHAOS_DOWN (seconds a fault lasts, default 3), EXCHANGE_CHAOS_SECONDS (length of the
random run, default 120), EXCHANGE_CHAOS_SEED (replays a random run), EXCHANGE_CHAOS_WORKERS
(load connections, default 8).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    system,  # noqa: F401 - the same session fixture, for this folder
)

CHAOS_DIR = Path(__file__).resolve().parent


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder)
        return True
    except ValueError:
        return False


def pytest_collection_modifyitems(config, items):
    base = Path(config.invocation_params.dir)
    named = any(_inside(base / arg.split("::")[0], CHAOS_DIR) for arg in config.args)
    wanted = named or os.environ.get("EXCHANGE_CHAOS") == "1"
    e2e = CHAOS_DIR.parent / "e2e"
    with_e2e = any(_inside(Path(str(item.path)), e2e) for item in items)
    for item in items:
        if not _inside(Path(str(item.path)), CHAOS_DIR):
            continue
        if not wanted:
            item.add_marker(pytest.mark.skip(reason="long fault scenarios: make chaos (pytest tests/chaos)"))
        elif with_e2e:
            item.add_marker(pytest.mark.skip(reason="tests/chaos cannot share a session with tests/e2e "
                                                    "(both start the system on the test ports)"))
